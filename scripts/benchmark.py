"""Every performance figure of the README comes from this script. One JSON line per figure.

    python scripts/benchmark.py train --configs r18,r18_msml --batch 256 --size 224 \
        [--torch-reference PATH/torch_reference.py]     # train step, JAX beside PyTorch
    python scripts/benchmark.py end-to-end --configs r18 [--data_dir D] # fed by grain
    python scripts/benchmark.py compile --configs r18_msml,d121      # compile s, cold + warm
    python scripts/benchmark.py paper-run --config r18_msml [--scale 0.01]  # phases of a run
    python scripts/benchmark.py resume --configs r18_msml [--package-root DIR]  # after SIGTERM
    python scripts/benchmark.py export --workdir W [--images 64]  # exported vs predict --workdir
    python scripts/benchmark.py metrics [--n_boot 1000]   # test-set metrics + bootstrap CIs
    python scripts/benchmark.py backbone ...            # forward / forward+backward per arch
    python scripts/benchmark.py data-prepare ...        # builder vs a bare PIL decode loop
    python scripts/benchmark.py data-pipeline ...       # grain images/s per worker count
    python scripts/benchmark.py checkpoint --configs r18  # array checksums vs the save call

The PyTorch reference mirrors each config's model (``torch_args``: baseline or F-MSML, with
``--reduce`` for the DenseNet rows' 1x1 reduction). Every mode takes ``--set KEY=VALUE``
(repeatable) to override config fields, e.g. ``--set model.trunk_a=resnet_tiny`` for a
test-sized model. ``train`` and ``end-to-end`` leave the persistent compilation cache off (their
``warmup_s`` is a cold compile plus the warm-up steps); ``compile``, ``paper-run`` and
``resume`` use it.
Timings on a shared machine are noisy: compare figures measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_common  # noqa: E402
from bench_common import emit, load_config  # noqa: E402
from bench_compile import BACKEND_COMPILE, CompileEvents  # noqa: E402

# ------------------------------------------------------------------------------------------
# train: the jitted train step on device-resident synthetic batches (no data stack).
# ------------------------------------------------------------------------------------------


def bench_train_step(name: str, batch: int, size: int, steps: int, warmup: int,
                     dtype: str, overrides: list[str] = ()) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from cxrjax import models, train_step
    from cxrjax.evaluation import inference
    from cxrjax.runfolder import loading as runs

    config = load_config(name, overrides)
    config.model.init = "scratch"
    config.data.crop = size
    config.train.batch_size = batch
    config.dtype = dtype
    mesh = inference.create_mesh()
    model, variables = runs.init_model(config, models.compute_dtype(config.dtype))
    state, step = train_step.create_stage(config, 0, model, variables, steps_per_epoch=1000,
                                     mesh=mesh)
    rng = np.random.default_rng(0)
    data = NamedSharding(mesh, P("data"))
    host = {"image": rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8),
            "labels": (rng.random((batch, 14)) < 0.1).astype(np.uint8)}
    device_batch = {k: jax.device_put(v, data) for k, v in host.items()}
    events = CompileEvents()  # XLA compilations of the step while it is timed: 1 expected
    t0 = time.perf_counter()
    for _ in range(warmup):
        state, m = step(state, device_batch)
    jax.block_until_ready(m)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, device_batch)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    events.close()
    compiles = sum(1 for _, _, event, fun in events.spans
                   if event == BACKEND_COMPILE and fun == "jit(step)")
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"bench": "train_step", "impl": "jax", "config": name,
            "dtype": str(jnp.dtype(models.compute_dtype(config.dtype))), "batch": batch,
            "size": size,
            "img_per_s": round(batch * steps / dt, 1), "step_ms": round(1e3 * dt / steps, 2),
            "warmup_s": round(warm, 1), "loss": round(float(m["loss"]), 4),
            "params": int(n_params), "compiles": compiles}


def torch_args(name: str, overrides: list[str] = ()) -> list[str] | None:
    """The torch_reference.py arguments mirroring a config (None if it has no mirror); the
    DenseNet rows' 1x1 reduction of each stream before the bilinear product is ``--reduce``."""
    m = load_config(name, overrides).model
    if m.trunk_b is None and not m.bilinear:
        return ["--model", "baseline", "--a", m.trunk_a]
    if m.trunk_b is not None and m.bilinear and m.head_a == "ce" and m.head_b == "msml":
        return ["--model", "fmsml", "--a", m.trunk_a, "--b", m.trunk_b,
                "--proj", str(m.bilinear_dim),
                *(["--reduce", str(m.bilinear_reduce)] if m.bilinear_reduce else [])]
    return None


def run_train(args) -> None:
    for name in args.configs.split(","):
        emit(bench_train_step(name, args.batch, args.size, args.steps, args.warmup, args.dtype,
                              args.set), args.out)
        targs = torch_args(name, args.set) if args.torch_reference else None
        if targs is None:
            continue
        cmd = [sys.executable, args.torch_reference, *targs, "--batch", str(args.batch),
               "--size", str(args.size), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--compile", args.torch_compile]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=args.torch_timeout)
            stdout, error = proc.stdout, proc.returncode and \
                (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        except subprocess.TimeoutExpired as e:  # keep what finished (eager before compiled)
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            error = f"timed out after {args.torch_timeout} s"
        for line in stdout.splitlines():
            if line.startswith("{"):
                emit({"bench": "train_step", "config": name, **json.loads(line)}, args.out)
        if error:
            emit({"bench": "train_step", "impl": "torch", "config": name,
                  "torch_args": targs, "error": error}, args.out)


# ------------------------------------------------------------------------------------------
# end-to-end: the same step fed by the real grain pipeline (prepared data), beside step-only.
# ------------------------------------------------------------------------------------------


def run_end_to_end(args) -> None:
    """Images/s of the train loop's step fed by grain + prefetch, and of the step alone."""
    import jax
    import numpy as np

    from cxrjax import models, train, train_step
    from cxrjax.data import pipeline
    from cxrjax.evaluation import inference
    from cxrjax.runfolder import loading as runs

    p = argparse.ArgumentParser(prog="benchmark.py end-to-end")
    p.add_argument("--data_dir", help="a prepared dataset (default: a synthetic one)")
    p.add_argument("--resolution", type=int, default=256, help="stored image size")
    p.add_argument("--synthetic_n", type=int, default=2000)
    p.add_argument("--workers", type=int, default=0, help="grain worker processes")
    p.add_argument("--data_root", default=os.path.join(ROOT, ".bench"),
                   help="where the synthetic set is made once and reused")
    opts = p.parse_args(args.extra)
    for name in args.configs.split(","):
        config = load_config(name, args.set)
        config.model.init = "scratch"
        config.train.batch_size = args.batch
        config.data.crop = args.size
        config.dtype = args.dtype
        if opts.data_dir:
            config.data.source, config.data.data_dir = "nih", opts.data_dir
            config.data.resolution = opts.resolution
        else:  # a synthetic set made (once) under .bench/
            config.data.source, config.data.synthetic_n = "synthetic", opts.synthetic_n
            config.data.synthetic_size = config.data.resolution = opts.resolution
        config.data.workers = opts.workers
        prepared = pipeline.ensure_prepared(config.data, opts.data_root)
        ds = pipeline.create_datasets(config.data, prepared, global_batch_size=args.batch,
                                      eval_batch_size=args.batch, seed=0)
        mesh = inference.create_mesh()
        model, variables = runs.init_model(config, models.compute_dtype(config.dtype))
        state, step = train_step.create_stage(config, 0, model, variables, ds.steps_per_epoch, mesh)
        batches = train.prefetch_to_mesh(ds.train_iter(), inference.batch_sharded(mesh),
                                         size=max(config.data.prefetch, 1))
        batch = None
        for _ in range(args.warmup):
            batch, _ = next(batches)
            state, m = step(state, batch)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, m = step(state, next(batches)[0])
        jax.block_until_ready(m)
        fed = args.batch * args.steps / (time.perf_counter() - t0)
        t0 = time.perf_counter()  # the same step on one device-resident batch
        for _ in range(args.steps):
            state, m = step(state, batch)
        jax.block_until_ready(m)
        alone = args.batch * args.steps / (time.perf_counter() - t0)
        emit({"bench": "end_to_end", "config": name, "batch": args.batch, "size": args.size,
              "workers": opts.workers, "img_per_s": round(fed, 1),
              "step_only_img_per_s": round(alone, 1), "ratio": round(fed / alone, 3),
              "loss": round(float(np.asarray(m["loss"])), 4)}, args.out)


# ------------------------------------------------------------------------------------------
# metrics: the test-set summary (AUC family + both bootstraps) at the CheXNet test size.
# ------------------------------------------------------------------------------------------


def run_metrics(args) -> None:
    import warnings

    import numpy as np

    from cxrjax.data import labels as labels_lib
    from cxrjax.data import splits
    from cxrjax.evaluation import metrics

    table = labels_lib.load_label_table()
    truth = table.labels[table.rows(splits.chexnet_lists()["test"])]  # real test prevalence
    rng = np.random.default_rng(0)
    scores = rng.random(truth.shape) * 0.7 + 0.3 * truth
    n_boot = int(args.n_boot)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (0, 1):  # the first call compiles the jitted bootstrap, the second reuses it
            start = time.perf_counter()
            metrics.summary(scores, truth, n_boot=n_boot, seed=seed)
            times.append(round(time.perf_counter() - start, 2))
        start = time.perf_counter()
        _sklearn_mean_auc_bootstrap(scores, truth, n_boot)
        reference_s = round(time.perf_counter() - start, 2)
    emit({"bench": "metrics_summary", "images": int(truth.shape[0]),
          "classes": int(truth.shape[1]), "n_boot": n_boot, "first_call_s": times[0],
          "second_call_s": times[1], "sklearn_mean_ci_s": reference_s}, args.out)


def _sklearn_mean_auc_bootstrap(scores, truth, n_boot: int) -> list[float]:
    """The textbook bootstrap the jitted one replaces (the figure without it): resample images,
    ``roc_auc_score`` per class, average. Only the mean's CI: less work than ``summary``."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng, n, means = np.random.default_rng(0), truth.shape[0], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        y, s = truth[idx], scores[idx]
        aucs = [roc_auc_score(y[:, c], s[:, c]) for c in range(y.shape[1])
                if 0 < y[:, c].sum() < n]
        means.append(float(np.mean(aucs)))
    return means


# ------------------------------------------------------------------------------------------
# Modes implemented next to the code they measure.
# ------------------------------------------------------------------------------------------


def _delegated(module: str, function: str):
    """A mode implemented in ``scripts/<module>.py``: its records, printed as JSON lines."""
    def run(args) -> None:
        for record in getattr(importlib.import_module(module), function)(args):
            emit(record, args.out)

    return run


MODES = {"train": run_train, "end-to-end": run_end_to_end, "metrics": run_metrics,
         "compile": _delegated("bench_compile", "run_compile"),
         "paper-run": _delegated("bench_paper_run", "run_paper_run"),
         "resume": _delegated("bench_resume", "run_resume"),
         "export": _delegated("bench_export", "run_export"),
         "backbone": _delegated("bench_backbone", "run_backbone"),
         "data-prepare": _delegated("bench_data", "run_data_prepare"),
         "data-pipeline": _delegated("bench_data", "run_data_pipeline"),
         "checkpoint": _delegated("bench_checkpoint", "run_checkpoint")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=list(MODES))
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--configs", default="r18,r18_msml")
    p.add_argument("--batch", type=int, default=None,
                   help="global batch (default 256; paper-run: the config's)")
    p.add_argument("--size", type=int, default=None, help="crop side (default 224)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--n_boot", type=int, default=1000, help="metrics: bootstrap resamples")
    p.add_argument("--torch-reference", help="path of torch_reference.py to run beside JAX")
    p.add_argument("--torch-compile", default="both", choices=["no", "yes", "both"])
    p.add_argument("--torch-timeout", type=float, default=None,
                   help="seconds before the PyTorch reference of one config is stopped")
    args, extra = p.parse_known_args(argv)
    args.extra = extra
    bench_common.OVERRIDES[:] = args.set
    if args.mode != "paper-run":
        args.batch = args.batch or 256
        args.size = args.size or 224
    MODES[args.mode](args)


if __name__ == "__main__":
    main()
