"""The runs behind ``scripts/fault_campaign.py``: the tiny data set and training command, an
attempt started in its own process group (optionally under a file-size limit) and waited for,
its log, and the checkpoint-side tools (the latest step, a seeded corruption, the lock's pid,
every array of the best checkpoint). Nothing here imports JAX at module level.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTEMPT_TIMEOUT_S = 600
CORRUPTIONS = ("truncate", "flip")


def prepare_data(root: str) -> str:
    """A 160-image synthetic NIH-layout set prepared at 40 px (as the tests' ``tiny_data``)."""
    if not os.path.isdir(os.path.join(root, "tfds")):
        code = ("import sys; from cxrjax.data import builder, synthetic; "
                "synthetic.generate(sys.argv[1] + '/nih', n=160, size=48, seed=0); "
                "builder.build(sys.argv[1] + '/nih', sys.argv[1] + '/tfds', resolution=40, "
                "workers=1)")
        subprocess.run([sys.executable, "-c", code, root], cwd=ROOT, check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": ROOT,
                                                 "JAX_PLATFORMS": "cpu"})
    return root


def command(workdir: str, data: str, epochs: int, extra: Sequence[str] = ()) -> list[str]:
    """``cxrjax.main`` on a tiny R18 run (the fault tests' overrides), localization off, then
    the ``extra`` config overrides (``KEY=VALUE``)."""
    overrides = [
        "--config.model.trunk_a=resnet_tiny", "--config.model.init=scratch",
        "--config.data.source=nih", f"--config.data.manual_dir={data}/nih",
        f"--config.data.data_dir={data}/tfds", "--config.data.resolution=40",
        "--config.data.crop=32", "--config.data.workers=0", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=16", "--config.train.checkpoint_every_steps=4",
        "--config.train.log_every_steps=5", "--config.train.lr=0.001",
        f"--config.train.stages[0].epochs={epochs}", "--config.eval.n_boot=10",
        "--config.eval.localization=False", *(f"--config.{item}" for item in extra)]
    return [sys.executable, "-m", "cxrjax.main", "--config",
            os.path.join(ROOT, "configs/r18.py"), "--workdir", workdir, *overrides]


def _file_size_limit(limit: int):
    """A preexec_fn: no file may grow past ``limit`` bytes (a write past it fails with EFBIG)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


class Runner:
    """Starts the run's command in its own process group, its stderr kept in a log file."""

    def __init__(self, data: str, epochs: int, cache: str, logs: str,
                 overrides: Sequence[str] = ()):
        self.data, self.epochs, self.logs, self.count = data, epochs, logs, 0
        self.overrides = tuple(overrides)
        path = os.environ.get("PYTHONPATH")  # the caller's, after the package's root
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, path])),
                    "JAX_PLATFORMS": "cpu", "CXRJAX_COMPILE_CACHE": cache}
        self.env.pop("XLA_FLAGS", None)  # one CPU device, as the reference

    def start(self, workdir: str, limit: int | None = None) -> tuple[subprocess.Popen, str]:
        self.count += 1
        log = os.path.join(self.logs, f"attempt_{self.count:04d}.log")
        proc = subprocess.Popen(
            command(workdir, self.data, self.epochs, self.overrides), cwd=ROOT, env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_file_size_limit(limit) if limit else None)
        # Through a pipe, written here: a log file of the child's would count against its
        # file-size limit (a "full disk" attempt could not even print its error).
        proc.drain = threading.Thread(target=_copy, args=(proc.stderr, log), daemon=True)
        proc.drain.start()
        return proc, log


def _copy(stream, path: str) -> None:
    with open(path, "wb") as f:
        shutil.copyfileobj(stream, f)


def finish(proc: subprocess.Popen, timeout: float = ATTEMPT_TIMEOUT_S) -> int:
    """The attempt's exit code; a hung one is killed (its group) after ``timeout`` seconds."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = -999
    proc.drain.join()
    return rc


def read(log: str) -> str:
    with open(log, errors="replace") as f:
        return f.read()


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def latest_checkpoint(workdir: str) -> str | None:
    """The newest complete step folder of the run's checkpoints, or None."""
    found = []
    for parent, dirs, _ in os.walk(os.path.join(workdir, "checkpoints")):
        found += [(int(d), os.path.join(parent, d)) for d in dirs if d.isdigit()]
    return max(found)[1] if found else None


def corrupt(step_dir: str, rng: random.Random, ways: tuple[str, ...] = CORRUPTIONS) -> str:
    """Cuts one file of the checkpoint's state, or flips bits in it (one of ``ways``, seeded);
    says which and how."""
    files = sorted(os.path.join(p, n) for p, _, names in os.walk(os.path.join(step_dir, "state"))
                   for n in names)
    path = rng.choice(files)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if rng.choice(ways) == "truncate" or size == 0:
            f.truncate(rng.randrange(size) if size else 0)
            how = "truncated"
        else:
            for _ in range(rng.randint(1, 8)):
                f.seek(rng.randrange(size))
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
            how = "flipped"
    return f"{how} {os.path.relpath(path, step_dir)}"


def lock_pid(workdir: str) -> int | None:
    try:
        with open(os.path.join(workdir, "run.lock")) as f:
            return json.load(f).get("pid")
    except (OSError, ValueError):
        return None


def dump_arrays(workdir: str, out: str) -> None:
    """Every array of the run's best checkpoint (params, batch statistics, optimizer state, as
    orbax restores them) into an .npz at ``out``, keyed by tree path, with the best step."""
    import jax
    import numpy as np

    from cxrjax.io import checkpoint
    from cxrjax.runfolder import loading

    directory = loading.final_stage_dir(workdir)
    step = loading.best_step(directory)
    state = checkpoint.ocp.StandardCheckpointer().restore(
        os.path.join(directory, str(step), "state"))
    arrays = {jax.tree_util.keystr(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    np.savez(out, __best_step__=np.asarray(step), **arrays)
