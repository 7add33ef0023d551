"""How soon a preempted run trains again: a run is stopped at its first checkpoint, as a TPU VM's
preemption notice stops it, and the same command started again is timed until it has restored
that checkpoint.

    python scripts/benchmark.py resume --configs r18_msml [--size 96] [--batch 8]
        [--images 64] [--package-root DIR] [--set KEY=VALUE ...]

Both processes run the user's command, ``python -m cxrjax.main --config configs/NAME.py
--workdir W``, on a synthetic set of ``--images`` images (made by the first process), with
``model.init="imagenet"`` from weight files in the real ported format (random values, the real
architectures' sizes, made here) and a private persistent compilation cache, which the first
process fills as a user's first run would. The first process gets SIGTERM once its first
checkpoint exists (it saves and exits, see ``cxrjax.io.preemption``). The figure is the second
process's seconds from start to its "resumed at step" log line, then it is stopped.

``--package-root DIR`` runs the cxrjax of another tree (a ``git worktree`` of an earlier commit),
so that a change's figure and the one without it come from the same call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from bench_common import ROOT, load_config

RESUMED = "resumed at step"


def _options(extra: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmark.py resume")
    p.add_argument("--images", type=int, default=64, help="synthetic images (all splits)")
    p.add_argument("--package-root", default=ROOT, help="the cxrjax tree to run")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process")
    return p.parse_args(extra)


def _weights(config, folder: str) -> None:
    """A ported-format file per trunk architecture, with random values."""
    import jax
    import jax.numpy as jnp

    from cxrjax.models import create_classifier, port

    for arch in {config.model.trunk_a, config.model.trunk_b} - {None}:
        variables = jax.jit(create_classifier(arch).init)(
            jax.random.key(0, impl="rbg"), jnp.zeros((1, 64, 64, 3)))
        port.save_variables(os.path.join(folder, f"{arch}_imagenet.npz"), variables, arch=arch)


def _command(name: str, root: str, workdir: str, fields: dict) -> list[str]:
    return [sys.executable, "-m", "cxrjax.main", "--config",
            os.path.join(root, "configs", f"{name}.py"), "--workdir", workdir,
            *[f"--config.{key}={value}" for key, value in fields.items()]]


def _run_until(command: list[str], env: dict, ready, timeout: float) -> tuple[float, str]:
    """Starts ``command``; when ``ready(log so far)`` holds, returns (seconds since start, log)
    and stops the process with SIGTERM. A process that ends or times out first is an error."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tempfile.gettempdir())
        try:
            while True:
                log.seek(0)
                text = log.read()
                if ready(text):
                    return time.perf_counter() - start, text
                if proc.poll() is not None or time.perf_counter() - start > timeout:
                    raise RuntimeError(f"{' '.join(command[:5])} ... ended (rc {proc.poll()}) "
                                       f"before it was ready; its last lines:\n{text[-2000:]}")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _checkpointed(workdir: str) -> bool:
    """Whether a stage of the run in ``workdir`` has finished writing a checkpoint."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(
        entry.isdigit() for stage in os.listdir(folder)
        for entry in os.listdir(os.path.join(folder, stage)))


def run_resume(args) -> list[dict]:
    """One figure per config (see the module docstring)."""
    opts = _options(args.extra)
    root = os.path.abspath(opts.package_root)
    records = []
    for name in args.configs.split(","):
        config = load_config(name, args.set)
        scratch = tempfile.mkdtemp(prefix="cxrjax_resume_")
        try:
            os.makedirs(os.path.join(scratch, "weights"))
            _weights(config, os.path.join(scratch, "weights"))
            fields = {"model.init": "imagenet", "model.weights_dir": f"{scratch}/weights",
                      "data.source": "synthetic", "data.synthetic_n": opts.images,
                      "data.synthetic_size": args.size + args.size // 8,
                      "data.resolution": args.size + args.size // 8, "data.crop": args.size,
                      "train.batch_size": args.batch, "train.eval_batch_size": args.batch,
                      "train.checkpoint_every_steps": 1, "data.workers": 0,
                      "compile_cache_dir": f"{scratch}/jax_cache"}
            fields.update(item.split("=", 1) for item in args.set)
            path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path, "CXRJAX_COMPILE_CACHE": ""}
            workdir = os.path.join(scratch, "run")
            command = _command(name, root, workdir, fields)
            first_s, _ = _run_until(command, env, lambda _, w=workdir: _checkpointed(w),
                                    opts.timeout)
            resume_s, _ = _run_until(command, env, lambda text: RESUMED in text, opts.timeout)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        records.append({"bench": "resume", "config": name, "package_root": root,
                        "batch": args.batch, "size": args.size, "images": opts.images,
                        "first_run_to_checkpoint_s": round(first_s, 2),
                        "resume_to_restored_s": round(resume_s, 2)})
    return records
