"""A SIGTERM to ``python -m cxrjax.main`` outside training (start-up, the test phase): one line
saying what was done, the preemption exit code 75, and the same command then completes the run.
(A SIGTERM during training is tests/test_train_run_gcs.py's and tests/test_multihost.py's.)
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

from helpers import SECTIONS_OFF_FLAGS, cli_env

from cxrjax.io import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = cli_env(PYTHONUNBUFFERED="1")  # the session's cache


def _command(workdir) -> list[str]:
    """A tiny run on a synthetic set that the run draws and prepares itself (its start-up)."""
    return [sys.executable, "-m", "cxrjax.main", "--config",
            os.path.join(ROOT, "configs", "r18.py"), "--workdir", str(workdir),
            "--config.model.trunk_a=resnet_tiny", "--config.model.init=scratch",
            "--config.data.source=synthetic", "--config.data.synthetic_n=160",
            "--config.data.synthetic_size=48", "--config.data.prepare_workers=1",
            "--config.data.resolution=40", "--config.data.crop=32", "--config.data.workers=0",
            "--config.train.batch_size=8", "--config.train.eval_batch_size=16",
            "--config.train.stages[0].epochs=1", "--config.eval.n_boot=10", *SECTIONS_OFF_FLAGS]


def _run_until(workdir, marker: str | None, timeout: float = 600) -> tuple[int, list[str]]:
    """Runs the command; SIGTERM to it as soon as ``marker`` is on its stderr (None: never).
    Returns (exit code, stderr's lines with progress bars' redraws split off)."""
    proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while marker is not None and proc.poll() is None and marker not in "".join(err):
        assert time.monotonic() < deadline, "".join(err)[-3000:]
        time.sleep(0.05)
    if marker is not None:
        assert proc.poll() is None, "".join(err)[-3000:]  # still running at the marker
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=timeout)
    reader.join(timeout=30)
    return code, [line for line in re.split(r"[\r\n]", "".join(err)) if line.strip()]


def _stopped_in_one_line(code: int, lines: list[str], line: str) -> None:
    text = "\n".join(lines)
    assert code == preemption.PREEMPTED_EXIT_CODE, text[-3000:]
    assert "Traceback" not in text and "leaked" not in text, text[-3000:]
    assert sum(ln.startswith("preempted") for ln in lines) == 1, text[-3000:]
    assert lines[-1] == line, text[-3000:]


def test_sigterm_in_start_up_and_in_the_test_phase_is_one_line_exit_75_and_a_rerun_completes(
        tmp_path):
    workdir = tmp_path / "run"
    code, lines = _run_until(workdir, "drawing a synthetic chest X-ray set")
    _stopped_in_one_line(code, lines, "preempted (SIGTERM) before training started: no step was "
                         "in flight, nothing to save; run the same command again to resume")
    assert not (workdir / "run.lock").exists()  # the lock given back: the rerun is not refused

    code, lines = _run_until(workdir, "training complete: testing step 13 of stage global")
    _stopped_in_one_line(code, lines, "preempted (SIGTERM) in the test phase: training is "
                         "complete and saved, the test files already written are whole; run "
                         "the same command again to complete the test and the report")
    assert not (workdir / "report.md").exists()

    code, lines = _run_until(workdir, None)
    assert code == 0, "\n".join(lines)[-3000:]
    assert "resumed at step 13 of 13" in "\n".join(lines)
    for name in ("report.md", "eval/test_predictions.csv", "eval/test_metrics.json"):
        assert (workdir / name).is_file(), name


_SIGTERM_IN_AN_IMPORT = """
import importlib.abc, sys
from absl import app
from cxrjax import main
from cxrjax.io import preemption

class SigtermHere(importlib.abc.MetaPathFinder):  # as the handler raises it, mid-import
    def find_spec(self, name, path, target=None):
        if name == "cxrjax.config_checks":
            raise preemption.Terminated("preempted (SIGTERM) before training started: no step "
                                        "was in flight, nothing to save")
        return None

sys.meta_path.insert(0, SigtermHere())
sys.argv = ["cxrjax.main", "--workdir", sys.argv[1]]
app.run(main.main, flags_parser=main._parse_flags)
"""


def test_a_sigterm_while_the_flags_module_is_imported_is_one_line_exit_75(tmp_path):
    done = subprocess.run([sys.executable, "-c", _SIGTERM_IN_AN_IMPORT, str(tmp_path / "run")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == preemption.PREEMPTED_EXIT_CODE, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "preempted (SIGTERM) before training started: no step was in flight, nothing to save"]
