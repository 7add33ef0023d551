"""Every performance figure of the README comes from this script. One JSON line per figure.

    python scripts/benchmark.py train --configs r18,r18_msml --batch 256 --size 224 \
        [--torch-reference PATH/torch_reference.py]     # train step, JAX beside PyTorch
    python scripts/benchmark.py end-to-end --configs r18 [--data-dir D] # fed by grain
    python scripts/benchmark.py backbone ...            # forward / forward+backward per arch
    python scripts/benchmark.py data-prepare ...        # builder vs a bare PIL decode loop
    python scripts/benchmark.py data-pipeline ...       # grain images/s per worker count

Timings on a shared machine are noisy: compare figures measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def emit(record: dict, out: str | None) -> None:
    """Prints one JSON line (and appends it to ``out``)."""
    import jax

    record = {"date": datetime.date.today().isoformat(), "device": _device_name(),
              "host": platform.node(), **record}
    if "jax_version" not in record:
        record["jax_version"] = jax.__version__
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def _device_name() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"


def load_config(name: str):
    """A config by file name under configs/ ('r18_msml') or by path."""
    module = name if not name.endswith(".py") else os.path.basename(name)[:-3]
    return importlib.import_module(f"configs.{module}").get_config()


# ------------------------------------------------------------------------------------------
# train: the jitted train step on device-resident synthetic batches (no data stack).
# ------------------------------------------------------------------------------------------


def bench_train_step(name: str, batch: int, size: int, steps: int, warmup: int,
                     dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from cxrjax import config_checks, runs, train

    config = load_config(name)
    config.model.init = "scratch"
    config.data.crop = size
    config.train.batch_size = batch
    config.dtype = dtype
    mesh = train.create_mesh()
    model, variables = runs.init_model(config, config_checks.compute_dtype(config))
    state, step = train.create_stage(config, 0, model, variables, steps_per_epoch=1000,
                                     mesh=mesh)
    rng = np.random.default_rng(0)
    data = NamedSharding(mesh, P("data"))
    host = {"image": rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8),
            "labels": (rng.random((batch, 14)) < 0.1).astype(np.uint8)}
    device_batch = {k: jax.device_put(v, data) for k, v in host.items()}
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
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"bench": "train_step", "impl": "jax", "config": name,
            "dtype": str(jnp.dtype(config_checks.compute_dtype(config))), "batch": batch,
            "size": size,
            "img_per_s": round(batch * steps / dt, 1), "step_ms": round(1e3 * dt / steps, 2),
            "warmup_s": round(warm, 1), "loss": round(float(m["loss"]), 4),
            "params": int(n_params), "compiles": step._cache_size()}


def torch_args(name: str) -> list[str] | None:
    """The torch_reference.py arguments mirroring a config (None if it has no mirror)."""
    m = load_config(name).model
    if m.trunk_b is None and not m.bilinear:
        return ["--model", "baseline", "--a", m.trunk_a]
    if m.trunk_b is not None and m.bilinear and m.head_a == "ce" and m.head_b == "msml" \
            and not m.bilinear_reduce:
        return ["--model", "fmsml", "--a", m.trunk_a, "--b", m.trunk_b,
                "--proj", str(m.bilinear_dim)]
    return None


def run_train(args) -> None:
    for name in args.configs.split(","):
        emit(bench_train_step(name, args.batch, args.size, args.steps, args.warmup, args.dtype),
             args.out)
        targs = torch_args(name) if args.torch_reference else None
        if targs is None:
            continue
        cmd = [sys.executable, args.torch_reference, *targs, "--batch", str(args.batch),
               "--size", str(args.size), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--compile", args.torch_compile]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            emit({"bench": "train_step", "impl": "torch", "config": name,
                  "error": proc.stderr.strip().splitlines()[-1:]}, args.out)
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                emit({"bench": "train_step", "config": name, **json.loads(line)}, args.out)


# ------------------------------------------------------------------------------------------
# end-to-end: the same step fed by the real grain pipeline (prepared data), beside step-only.
# ------------------------------------------------------------------------------------------


def run_end_to_end(args) -> None:
    """Images/s of the train loop's step fed by grain + prefetch, and of the step alone."""
    import jax
    import numpy as np

    from cxrjax import config_checks, runs, train
    from cxrjax.data import pipeline

    p = argparse.ArgumentParser(prog="benchmark.py end-to-end")
    p.add_argument("--data_dir", help="a prepared dataset (default: a synthetic one)")
    p.add_argument("--resolution", type=int, default=256, help="stored image size")
    p.add_argument("--synthetic_n", type=int, default=2000)
    p.add_argument("--workers", type=int, default=0, help="grain worker processes")
    opts = p.parse_args(args.extra)
    for name in args.configs.split(","):
        config = load_config(name)
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
        data_cfg = pipeline.ensure_prepared(config.data, os.path.join(ROOT, ".bench"))
        ds = pipeline.create_datasets(data_cfg, global_batch_size=args.batch,
                                      eval_batch_size=args.batch, seed=0)
        mesh = train.create_mesh()
        model, variables = runs.init_model(config, config_checks.compute_dtype(config))
        state, step = train.create_stage(config, 0, model, variables, ds.steps_per_epoch, mesh)
        batches = train.prefetch_to_mesh(ds.train_iter(), train.NamedSharding(
            mesh, train.P("data")), size=max(config.data.prefetch, 1))
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
# Modes implemented next to the code they measure.
# ------------------------------------------------------------------------------------------


def run_backbone(args) -> None:
    from bench_backbone import run_backbone as run

    for record in run(args):
        emit(record, args.out)


def run_data_prepare(args) -> None:
    from bench_data import run_data_prepare as run

    for record in run(args):
        emit(record, args.out)


def run_data_pipeline(args) -> None:
    from bench_data import run_data_pipeline as run

    for record in run(args):
        emit(record, args.out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["train", "end-to-end", "backbone", "data-prepare",
                                    "data-pipeline"])
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--configs", default="r18,r18_msml")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--torch-reference", help="path of torch_reference.py to run beside JAX")
    p.add_argument("--torch-compile", default="both", choices=["no", "yes", "both"])
    args, extra = p.parse_known_args(argv)
    args.extra = extra
    modes = {"train": run_train, "end-to-end": run_end_to_end, "backbone": run_backbone,
             "data-prepare": run_data_prepare, "data-pipeline": run_data_pipeline}
    modes[args.mode](args)


if __name__ == "__main__":
    main()
