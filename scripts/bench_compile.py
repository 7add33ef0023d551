"""Compile time of each jitted function, cold (empty persistent cache) and warm (cache filled).

    python scripts/benchmark.py compile --configs r18_msml,d121 --batch 256 --size 224 \
        [--eval-batch 128] [--predict-batch 16] [--cache-dir D] [--min-compile-s S]

For each config, two fresh processes compile the same functions into the same, initially empty
cache folder (``CXRJAX_COMPILE_CACHE``): the first ("cold") fills it, the second ("warm") finds
it filled, as a rerun, an ``evaluate``, a ``predict`` or a resume after preemption would. The
functions, each lowered and compiled ahead of time (``jit(...).lower(...).compile()``):

    init              the model's init (compiled and run: the variables the step starts from)
    train_step        the loop's jitted, donating train step (train_step.create_stage)
    eval_predict      the scoring function (inference.make_predict_fn) at the eval batch
    predict_scores    the same function at predict.py's batch
    predict_gradcam   predict.py's Grad-CAM function at its batch

One JSON line per function and run: ``trace_s`` (tracing + lowering to StableHLO), ``compile_s``
(XLA compilation, or loading it from the cache), ``first_run_s`` (one call), and how many
programs the persistent cache served (``cache_hits``) and stored (``cache_writes``), counted
from jax.monitoring events. Then one ``time_to_first_step`` line per run: the seconds from the
process's start (imports included) to the end of the first train step.
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench_common import load_config  # noqa: E402

HITS = "/jax/compilation_cache/cache_hits"
WRITES = "/jax/compilation_cache/cache_misses"  # JAX records this event when it writes an entry
COMPILE_SPANS = ("/jax/core/compile/jaxpr_trace_duration",
                 "/jax/core/compile/jaxpr_to_mlir_module_duration",
                 "/jax/core/compile/backend_compile_duration")
BACKEND_COMPILE = COMPILE_SPANS[2]


class CompileEvents:
    """Listens to jax.monitoring: counts persistent-cache events and keeps the wall-clock spans
    (``time.time()``) of every tracing, lowering and XLA compilation, with its function name."""

    def __init__(self):
        import jax

        self._monitoring = jax.monitoring
        self.counts: collections.Counter = collections.Counter()
        self.spans: list[tuple[float, float, str, str]] = []  # (start, end, event, function)
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_time_span_listener(self._on_span)

    def _on_event(self, event: str, **_) -> None:
        self.counts[event] += 1

    def _on_span(self, event: str, start: float, end: float, **kwargs) -> None:
        if event in COMPILE_SPANS:
            self.spans.append((start, end, event, str(kwargs.get("fun_name", ""))))

    def close(self) -> None:
        self._monitoring.unregister_event_listener(self._on_event)
        self._monitoring.unregister_event_time_span_listener(self._on_span)

    def cache_counts(self, since: collections.Counter) -> dict:
        return {"cache_hits": self.counts[HITS] - since[HITS],
                "cache_writes": self.counts[WRITES] - since[WRITES]}

    def compile_seconds_by_function(self) -> dict[str, float]:
        """XLA compile (or cache load) seconds per jitted function name, largest first."""
        total: collections.Counter = collections.Counter()
        for start, end, event, name in self.spans:
            if event == BACKEND_COMPILE:
                total[name] += end - start
        return {name: round(s, 2) for name, s in total.most_common()}


def _ahead_of_time(name: str, fn, args: tuple, events: CompileEvents) -> tuple[object, dict]:
    """(compiled, figure): ``fn`` lowered and compiled for ``args``, then called once."""
    import jax

    before = collections.Counter(events.counts)
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    t3 = time.perf_counter()
    return out, {"function": name, "trace_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3),
                 "first_run_s": round(t3 - t2, 3), **events.cache_counts(before)}


FUNCTIONS = ("init", "train_step", "eval_predict", "predict_scores", "predict_gradcam")


def measure(config, batch: int, size: int, eval_batch: int, predict_batch: int,
            min_compile_s: float, functions: Sequence[str] = FUNCTIONS) -> list[dict]:
    """This process's figures for one config (see the module docstring); ``init`` and
    ``train_step`` always run (the others start from their variables)."""
    import numpy as np

    from cxrjax.evaluation import inference
    from cxrjax.io import compilation_cache

    cache_dir = compilation_cache.enable(compilation_cache.DEFAULT_DIR,
                                         min_compile_time_s=min_compile_s)
    events = CompileEvents()
    config.model.init = "scratch"
    config.data.crop = size
    config.train.batch_size = batch
    mesh = inference.create_mesh()
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)

    model, variables, figures = _init_and_train_step(config, mesh, images, rng, events)
    first_step_at = time.perf_counter()
    figures += _inference_figures(model, variables, tuple(config.model.fusion), mesh, images,
                                  (eval_batch, predict_batch), functions, events)
    figures.append({"function": "time_to_first_step",
                    "seconds": round(first_step_at - _PROCESS_START, 2),
                    "cache_entries": len(compilation_cache.entries(cache_dir))
                    if cache_dir else 0})
    events.close()
    return figures


def _init_and_train_step(config, mesh, images, rng, events: CompileEvents
                         ) -> tuple[Any, dict, list[dict]]:
    """(model, variables, the ``init`` and ``train_step`` figures): the variables made and
    the loop's step compiled and run once on a random batch."""
    import jax
    import numpy as np

    from cxrjax import models, train_step
    from cxrjax.evaluation import inference
    from cxrjax.runfolder import loading as runs

    figures, batch = [], config.train.batch_size
    before = collections.Counter(events.counts)
    t0 = time.perf_counter()
    model, variables = runs.init_model(config, models.compute_dtype(config.dtype))
    jax.block_until_ready(variables)
    figures.append({"function": "init", "wall_s": round(time.perf_counter() - t0, 3),
                    **events.cache_counts(before)})

    t0 = time.perf_counter()
    state, step = train_step.create_stage(config, 0, model, variables, steps_per_epoch=1000,
                                          mesh=mesh)
    setup_s = time.perf_counter() - t0
    data = inference.batch_sharded(mesh)
    device_batch = {"image": jax.device_put(images(batch), data),
                    "labels": jax.device_put((rng.random((batch, 14)) < 0.1).astype(np.uint8),
                                             data)}
    _, figure = _ahead_of_time("train_step", step, (state, device_batch), events)
    figures.append({**figure, "setup_s": round(setup_s, 3)})
    return model, variables, figures


def _inference_figures(model, variables: dict, fusion: tuple[str, ...], mesh, images,
                       batches: tuple[int, int], functions: Sequence[str],
                       events: CompileEvents) -> list[dict]:
    """The figures of the scoring and heatmap functions in ``functions``, at the eval and
    predict ``batches``."""
    import numpy as np

    from cxrjax.evaluation import heatmaps, inference

    eval_batch, predict_batch = batches
    figures = []
    if "eval_predict" in functions:
        figures.append(_ahead_of_time("eval_predict", inference.make_predict_fn(
            model, fusion, mesh), (variables, images(eval_batch)), events)[1])
    pred_images = images(predict_batch)
    tops = np.zeros(predict_batch, np.int32)
    if "predict_scores" in functions:
        out, figure = _ahead_of_time("predict_scores", inference.make_predict_fn(
            model, fusion, mesh), (variables, pred_images), events)
        figures.append(figure)
        tops = np.argmax(np.asarray(out["fused"]), axis=-1)
    if "predict_gradcam" in functions:
        gradcam = heatmaps.make_heatmap_fn(model, fusion, mesh, ("gradcam",))  # predict's
        figures.append(_ahead_of_time("predict_gradcam", gradcam,
                                      (variables, pred_images, tops), events)[1])
    return figures


def run_compile(args) -> list[dict]:
    """Cold then warm process per config, sharing one fresh cache folder; their figures."""
    p = argparse.ArgumentParser(prog="benchmark.py compile")
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--predict-batch", type=int, default=16)
    p.add_argument("--cache-dir", default=None,
                   help="where the fresh cache folders are made (default: the temp folder)")
    p.add_argument("--keep-cache", action="store_true", help="keep the cache folders")
    p.add_argument("--min-compile-s", type=float, default=None,
                   help="cache only compilations at least this long (default: the package's)")
    p.add_argument("--functions", default=",".join(FUNCTIONS),
                   help="which to compile (init and train_step always run)")
    opts = p.parse_args(args.extra)
    unknown = set(opts.functions.split(",")) - set(FUNCTIONS)
    if unknown:
        raise SystemExit(f"error: --functions: unknown {', '.join(sorted(unknown))}; "
                         f"expected some of {', '.join(FUNCTIONS)}")
    records = []
    for name in args.configs.split(","):
        folder = tempfile.mkdtemp(prefix=f"cxrjax_compile_{name}_", dir=opts.cache_dir)
        try:
            for run in ("cold", "warm"):
                cmd = [sys.executable, os.path.abspath(__file__), "--config", name,
                       "--batch", str(args.batch or 256), "--size", str(args.size or 224),
                       "--eval-batch", str(opts.eval_batch),
                       "--predict-batch", str(opts.predict_batch),
                       "--functions", opts.functions,
                       *(["--min-compile-s", str(opts.min_compile_s)]
                         if opts.min_compile_s is not None else []),
                       *(f"--set={s}" for s in args.set)]
                env = {**os.environ, "CXRJAX_COMPILE_CACHE": folder}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                common = {"bench": "compile", "config": name, "run": run,
                          "batch": args.batch or 256, "size": args.size or 224}
                if proc.returncode:
                    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    records.append({**common, "error": tail})
                    break
                records += [{**common, **json.loads(line)}
                            for line in proc.stdout.splitlines() if line.startswith("{")]
        finally:
            if not opts.keep_cache:
                shutil.rmtree(folder, ignore_errors=True)
    return records


def main(argv: list[str] | None = None) -> int:
    """One worker process: prints this process's figures for one config as JSON lines."""
    p = argparse.ArgumentParser(description="worker of benchmark.py compile")
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--predict-batch", type=int, default=16)
    p.add_argument("--min-compile-s", type=float, default=None)
    p.add_argument("--functions", default=",".join(FUNCTIONS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from cxrjax.io import compilation_cache

    min_s = compilation_cache.MIN_COMPILE_TIME_S if args.min_compile_s is None \
        else args.min_compile_s
    for figure in measure(load_config(args.config, args.set), args.batch, args.size,
                          args.eval_batch, args.predict_batch, min_s,
                          args.functions.split(",")):
        print(json.dumps(figure), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
