"""The whole paper run, timed phase by phase, on a synthetic set the size of the real one.

    python scripts/benchmark.py paper-run --config r18_msml [--scale 0.01] [--epochs N]
        [--resolution 256] [--crop 224] [--batch B] [--eval-batch B] [--n-boot 1000]
        [--workers W] [--workdir W] [--data-root D] [--set KEY=VALUE ...]

It runs the package's own entry, ``train.train_and_evaluate``: the config's stages and epochs
(the paper's 9), validation every epoch, the test split with the bootstrap CI
(``eval.n_boot``, 1,000 by default) and the report. The data is a synthetic set in the NIH
layout of ``112,120 x scale`` images at ``--resolution`` px, made and prepared through the
real builder. Weights start from scratch (same compute as ImageNet weights; nothing to
download). The persistent compilation cache is on as in ``cxrjax.main``
(``config.compile_cache_dir``; ``CXRJAX_COMPILE_CACHE`` wins): point it at an empty folder for
a cold run.

Phases are timed from outside the loop: a few package functions are wrapped with a clock for
the run (``pipeline.open_datasets``, ``Evaluator.validate``, ``Evaluator.test_and_report``,
``evaluator.write_test_outputs``), and jax.monitoring reports every tracing, lowering and XLA
compilation. Each second of the run counts once: ``compile`` wherever JAX was compiling, else
the innermost wrapped phase running, else ``train`` (the steps, their checkpoints, logging).
One JSON line: ``phases_s`` = data, compile, train, validation, test_metrics (scoring the test
split and the bootstrap), report (predictions files, metrics JSON, report.md and plots).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

PAPER_IMAGES = 112_120  # ChestX-ray14
PHASES = ("data", "compile", "train", "validation", "test_metrics", "report")


class PhaseClock:
    """Wall-clock intervals (``time.time()``, as jax.monitoring's spans) of named phases, and
    the last value each phase returned."""

    def __init__(self):
        self.intervals: list[tuple[float, float, str]] = []
        self.returned: dict[str, Any] = {}

    def timed(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def clocked(*args, **kwargs):
            start = time.time()
            try:
                self.returned[phase] = fn(*args, **kwargs)
                return self.returned[phase]
            finally:
                self.intervals.append((start, time.time(), phase))
        return clocked

    @contextlib.contextmanager
    def wrapping(self, targets: Sequence[tuple[Any, str, str]]) -> Iterator[None]:
        """Replaces each ``owner.attribute`` by its clocked self for the block, then restores."""
        saved = []
        try:
            for owner, attribute, phase in targets:
                original = getattr(owner, attribute, None)
                if original is None:
                    raise SystemExit(f"error: paper-run times {owner.__name__}.{attribute}, "
                                     "which no longer exists: update scripts/bench_paper_run.py")
                saved.append((owner, attribute, original))
                setattr(owner, attribute, self.timed(phase, original))
            yield
        finally:
            for owner, attribute, original in reversed(saved):
                setattr(owner, attribute, original)


def split_phases(start: float, end: float, phases: Sequence[tuple[float, float, str]],
                 compile_spans: Sequence[tuple[float, float]], default: str = "train"
                 ) -> dict[str, float]:
    """Seconds of [start, end] per phase, each instant counted once: ``compile`` inside any
    compile span, else the innermost (latest started) phase interval, else ``default``."""
    marks = []  # (time, order, kind, key): ends before starts at the same instant
    for i, (a, b, _) in enumerate(phases):
        marks += [(max(a, start), 1, "phase+", i), (min(b, end), 0, "phase-", i)]
    for a, b in compile_spans:
        marks += [(max(a, start), 1, "compile+", None), (min(b, end), 0, "compile-", None)]
    marks.sort(key=lambda m: (m[0], m[1]))
    totals = dict.fromkeys(PHASES, 0.0) | {default: 0.0}
    active: list[int] = []
    compiling, now = 0, start
    for t, _, kind, key in marks:
        t = min(max(t, start), end)
        label = "compile" if compiling else (phases[active[-1]][2] if active else default)
        totals[label] = totals.get(label, 0.0) + max(t - now, 0.0)
        now = max(now, t)
        if kind == "phase+":
            active.append(key)
        elif kind == "phase-":
            active.remove(key)
        elif kind == "compile+":
            compiling += 1
        else:
            compiling -= 1
    totals[default] += max(end - now, 0.0)
    return {k: round(v, 2) for k, v in totals.items()}


def _steps_trained(records: Sequence[dict]) -> int:
    """Train steps of every stage, from the metrics log (each stage counts from 0)."""
    last: dict[str, int] = {}
    for r in records:
        last[r.get("stage", "")] = max(last.get(r.get("stage", ""), 0), int(r["step"]))
    return sum(last.values())


def _options(extra: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmark.py paper-run")
    p.add_argument("--config", default="r18_msml")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the 112,120 images")
    p.add_argument("--epochs", type=int, default=None, help="every stage's (default: config's)")
    p.add_argument("--resolution", type=int, default=256, help="stored image side")
    p.add_argument("--crop", type=int, default=None, help="default: the config's (224)")
    p.add_argument("--eval-batch", type=int, default=None, help="default: the config's")
    p.add_argument("--n-boot", type=int, default=None, help="default: the config's (1000)")
    p.add_argument("--workers", type=int, default=None, help="grain workers (default: config)")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed")
    p.add_argument("--data-root", default=None,
                   help="where the synthetic set is made; reused when complete "
                        "(default: inside the workdir, so made afresh)")
    return p.parse_args(extra)


def _paper_config(opts: argparse.Namespace, args) -> tuple[Any, int]:
    """The run's config and its number of images: ``opts.config`` on a synthetic set of the
    paper's size times ``opts.scale``, with the bench's overrides."""
    from bench_common import load_config

    config = load_config(opts.config, args.set)
    n = max(int(round(PAPER_IMAGES * opts.scale)), 1)
    with config.unlocked():
        config.model.init = "scratch"
        config.data.source = "synthetic"
        config.data.synthetic_n = n
        config.data.synthetic_size = config.data.resolution = opts.resolution
        if opts.crop:
            config.data.crop = opts.crop
        if args.batch:
            config.train.batch_size = args.batch
        if opts.eval_batch:
            config.train.eval_batch_size = opts.eval_batch
        if opts.n_boot is not None:
            config.eval.n_boot = opts.n_boot
        if opts.workers is not None:
            config.data.workers = opts.workers
        if opts.epochs:
            for stage in config.train.stages:
                stage.epochs = opts.epochs
    return config, n


def run_paper_run(args) -> list[dict]:
    """One paper run (see the module docstring); returns its figure."""
    import jax
    from bench_compile import CompileEvents

    from cxrjax import train
    from cxrjax.data import pipeline
    from cxrjax.evaluation import evaluator
    from cxrjax.io import compilation_cache, metric_writers

    opts = _options(args.extra)
    config, n = _paper_config(opts, args)
    cache = compilation_cache.enable(config.get("compile_cache_dir",
                                                compilation_cache.DEFAULT_DIR))
    workdir = opts.workdir or tempfile.mkdtemp(prefix="cxrjax_paper_run_")
    data_root = opts.data_root or workdir
    clock, events = PhaseClock(), CompileEvents()
    targets = [(pipeline, "open_datasets", "data"),
               (evaluator.Evaluator, "validate", "validation"),
               (evaluator.Evaluator, "test_and_report", "test_metrics"),
               (evaluator, "write_test_outputs", "report")]
    start = time.time()
    try:
        data_start = time.time()
        reused = os.path.isdir(os.path.join(data_root, "synthetic"))
        prepared = pipeline.ensure_prepared(config.data, data_root)
        clock.intervals.append((data_start, time.time(), "data"))
        with config.unlocked():  # the loop reads the set just made, as a prepared NIH set
            config.data.source = "nih"
            config.data.data_dir, config.data.manual_dir = prepared.data_dir, prepared.manual_dir
        with clock.wrapping(targets):
            results = train.train_and_evaluate(config, workdir)
        end = time.time()
        steps = _steps_trained(metric_writers.read_metrics(workdir))
    finally:
        events.close()
        if not opts.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    phases = split_phases(start, end, clock.intervals, [(a, b) for a, b, *_ in events.spans])
    ds = clock.returned["data"]
    epochs = sum(int(s.epochs) for s in config.train.stages)
    fused = results["fused"]
    return [{
        "bench": "paper_run", "config": opts.config, "scale": opts.scale, "images": n,
        "resolution": opts.resolution, "crop": int(config.data.crop),
        "batch": int(config.train.batch_size), "epochs": epochs, "steps": int(steps),
        "n_boot": int(config.eval.n_boot), "workers": int(config.data.workers),
        "data_reused": reused, "devices": jax.device_count(),
        "phases_s": phases, "total_s": round(end - start, 2),
        "train_img_per_s": round(steps * config.train.batch_size / max(phases["train"], 1e-9), 1),
        "val_img_per_s": round(epochs * ds.num_examples("val")
                               / max(phases["validation"], 1e-9), 1),
        "test_images": ds.num_examples("test"),
        "compile_by_function": dict(list(events.compile_seconds_by_function().items())[:6]),
        "compile_cache": bool(cache), **events.cache_counts(collections.Counter()),
        "test_mean_auc": _finite(fused["mean_auc"]),
        "test_mean_auc_ci95": [_finite(x) for x in fused.get("mean_auc_ci95", [])],
    }]


def _finite(x: float) -> float | None:
    """Rounded, or None for NaN (no CI without bootstrap): the line stays strict JSON."""
    return round(float(x), 4) if math.isfinite(float(x)) else None
