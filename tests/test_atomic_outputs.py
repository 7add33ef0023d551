"""A kill -9 during the test phase leaves every output either old or new, never cut; a rerun
completes them, byte for byte as an uninterrupted run wrote them."""

import os
import random
import re
import signal
import subprocess
import sys
import time

from helpers import cli_env

from cxrjax.runfolder import lock as run_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_OUTPUTS = ("checkpoints/", "tensorboard/", "metrics.jsonl", run_lock.LOCK_FILE,
               f".{run_lock.LOCK_FILE}.")  # the lock and its heartbeat's temporary file
TEMPORARY = re.compile(r"(^|/)\.[^/]+\.[0-9a-f]{8}\.tmp$")
OLD = b"an older version of this file\n"
WRITTEN = re.compile(rb"\| written \| [^|\n]* \|")


def _start(workdir, data_root) -> subprocess.Popen:
    """``main`` on a tiny R18 config, one epoch; a finished run is tested again."""
    overrides = [
        "--config.model.trunk_a=resnet_tiny", "--config.model.init=scratch",
        "--config.data.source=nih", f"--config.data.manual_dir={data_root / 'nih'}",
        f"--config.data.data_dir={data_root / 'tfds'}", "--config.data.resolution=40",
        "--config.data.crop=32", "--config.data.workers=0", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=16", "--config.train.log_every_steps=5",
        "--config.train.lr=0.001", "--config.train.stages[0].epochs=1",
        "--config.eval.n_boot=10"]
    return subprocess.Popen(
        [sys.executable, "-m", "cxrjax.main", "--config", os.path.join(ROOT, "configs/r18.py"),
         "--workdir", str(workdir), *overrides],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=cli_env())


def _files(workdir) -> dict[str, tuple[int, int]]:
    """The run's output files (what the test phase writes, its temporaries included): path ->
    (modification time, size)."""
    out = {}
    for parent, folders, names in os.walk(workdir):
        if parent == str(workdir):  # not into what training writes (thousands of stats a poll)
            folders[:] = [f for f in folders if f"{f}/" not in NOT_OUTPUTS]
        for name in names:
            path = os.path.join(parent, name)
            rel = os.path.relpath(path, workdir).replace(os.sep, "/")
            if not rel.startswith(NOT_OUTPUTS):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                out[rel] = (st.st_mtime_ns, st.st_size)
    return out


def _test_phase_files(workdir) -> dict[str, tuple[int, int]]:
    """``_files`` less what a run writes as it starts (its config and command)."""
    return {k: v for k, v in _files(workdir).items() if k not in ("config.json", "command.json")}


def _contents(workdir) -> dict[str, bytes]:
    """The outputs' bytes; report.md's "written" time (to the minute) set aside, the one field
    that differs by design between two writes of the same run."""
    out = {}
    for rel in _files(workdir):
        with open(os.path.join(workdir, rel), "rb") as f:
            out[rel] = f.read()
        if rel == "report.md":
            out[rel] = WRITTEN.sub(b"| written | - |", out[rel])
    return out


def _writing_phase(proc: subprocess.Popen, workdir, kill_at: int | None = None) -> int:
    """Watches the test phase's outputs change (a temporary file appearing, a file replaced:
    each new state of the folder counts one) and kills ``proc`` with SIGKILL on the
    ``kill_at``-th change, or (None) lets it end. Returns the changes seen."""
    seen, last = 0, _test_phase_files(workdir)
    while proc.poll() is None:
        now = _test_phase_files(workdir)
        if now != last:
            seen, last = seen + 1, now
            if seen == kill_at:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.001)
    _, err = proc.communicate(timeout=600)
    if kill_at is None:
        assert proc.returncode == 0, err[-3000:]
    return seen


def test_kill_9_in_the_test_phase_leaves_old_or_new_files_and_a_rerun_completes_them(
        tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = _start(run, tiny_data)  # the uninterrupted run: trained, tested, reported
    changes = _writing_phase(proc, run)
    reference = _contents(run)
    assert {"eval/test_predictions.csv", "eval/test_metrics.json", "report.md",
            "config.json", "command.json"} <= set(reference)
    assert not [r for r in reference if TEMPORARY.search(r)]

    rng = random.Random(23)
    for trial in range(2):  # killed at seeded moments of the test phase's writes
        for rel in reference:
            if rel == "config.json":
                continue  # the run's record, read before anything is written
            with open(run / rel, "wb") as f:
                f.write(OLD)
        proc = _start(run, tiny_data)
        _writing_phase(proc, run, kill_at=rng.randint(1, max(1, changes * 2 // 3)))
        assert proc.returncode == -signal.SIGKILL
        now = _contents(run)
        for rel, data in now.items():
            if TEMPORARY.search(rel):
                continue  # what a kill leaves mid-write; the next writer removes it
            assert rel in reference, f"trial {trial}: {rel} is not an output of the run"
            assert data in (OLD, reference[rel]), f"trial {trial}: {rel} is cut or mixed"
        assert set(reference) <= {r for r in now if not TEMPORARY.search(r)}

    rerun = _start(run, tiny_data)  # a lock left by a killed pid is taken over
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    assert "taking over the lock of" in err
    assert _contents(run) == reference  # every file as the uninterrupted run wrote it
