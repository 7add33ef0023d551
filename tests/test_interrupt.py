"""Ctrl-C on ``python -m cxrjax.main``: one line, exit code 130, the step saved, nothing leaked.

Each run is started in a session of its own and signalled as a terminal does: SIGINT to every
process of its group (the grain and data-builder workers too).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

from helpers import cli_env, run_config

from cxrjax.io import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = cli_env(PYTHONUNBUFFERED="1")  # the session's compilation cache, torch absent
SAVED = re.compile(r"interrupted: saved step (\d+) in (\S+); run the same command again to "
                   r"resume")


# Ctrl-C as a terminal leaves it: a shell without job control (a script's `pytest ... &`) starts
# its background commands with SIGINT ignored, which the run keeps (as a shell's background job
# should); the command is exec'd with SIGINT at its default, whoever started the tests.
_AS_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


class _Run:
    """``python -m cxrjax.main ARGS`` in its own process group, its stderr collected."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AS_A_TERMINAL, sys.executable, "-m", "cxrjax.main", *args],
            cwd=ROOT, env=ENV,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.err: list[str] = []
        self._reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    @property
    def text(self) -> str:
        return "".join(self.err)

    def wait_for(self, condition, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, self.text[-3000:]
            assert time.monotonic() < deadline, self.text[-3000:]
            time.sleep(0.1)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout: float = 180) -> tuple[int, list[str]]:
        """(exit code, stderr's lines, progress bars' redraws split off); no process of the
        group may outlive it (a worker, grain's or multiprocessing's resource tracker)."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        deadline = time.monotonic() + 30
        while _group_alive(self.proc.pid):
            assert time.monotonic() < deadline, "a process of the run outlived it"
            time.sleep(0.1)
        return code, [line for line in re.split(r"[\r\n]", self.text) if line.strip()]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _clean(code: int, lines: list[str]) -> None:
    text = "\n".join(lines)
    assert code == preemption.INTERRUPTED_EXIT_CODE, text[-3000:]
    assert "Traceback" not in text and "leaked" not in text, text[-5000:]
    assert sum(line.startswith("interrupted") for line in lines) == 1, text[-3000:]
    assert lines[-1].startswith("interrupted"), text[-3000:]


def _train_args(data, workdir) -> list[str]:
    c = run_config("r18", data)
    return ["--config", os.path.join(ROOT, "configs", "r18.py"), "--workdir", str(workdir),
            f"--config.model.trunk_a={c.model.trunk_a}", "--config.model.init=scratch",
            f"--config.data.manual_dir={c.data.manual_dir}",
            f"--config.data.data_dir={c.data.data_dir}", "--config.data.resolution=40",
            "--config.data.crop=32", "--config.data.workers=2", "--config.train.batch_size=8",
            "--config.train.eval_batch_size=16", "--config.train.stages[0].epochs=50",
            "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=1000",
            "--config.eval.n_boot=10"]


def _logged_steps(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    return open(path).read().count("\n") if os.path.exists(path) else 0


def test_ctrl_c_saves_the_step_in_one_line_and_a_second_one_stops_at_once(tiny_data, tmp_path):
    workdir = tmp_path / "run"
    args = _train_args(tiny_data, workdir)
    run = _Run(*args)
    run.wait_for(lambda: _logged_steps(workdir) >= 2)  # training, grain's workers running
    run.ctrl_c()
    code, lines = run.finish()
    _clean(code, lines)
    match = SAVED.fullmatch(lines[-1])
    assert match, lines[-1]
    step, directory = int(match[1]), match[2]
    assert step >= 2 and os.path.isdir(os.path.join(directory, str(step)))
    assert "preemption notice" not in "\n".join(lines)

    # The same command resumes there; two Ctrl-C while it compiles its step stop it at once.
    run = _Run(*args)
    run.wait_for(lambda: f"resumed at step {step} of " in run.text)
    run.ctrl_c()
    time.sleep(1)  # two presses: two signals (SIGINTs sent together may arrive as one)
    run.ctrl_c()
    signalled = time.monotonic()
    code, lines = run.finish()
    assert time.monotonic() - signalled < 20, f"not at once: {lines[-3:]}"
    _clean(code, lines)
    assert re.fullmatch(r"interrupted again: stopped at once(, step \d+ not saved)?; run the "
                        r"same command again to resume from the newest checkpoint", lines[-1])
    assert max(int(d) for d in os.listdir(directory) if d.isdigit()) == step


def test_ctrl_c_while_the_data_is_prepared_is_one_line(tiny_data, tmp_path):
    args = _train_args(tiny_data, tmp_path / "run") + [
        "--config.data.source=synthetic", "--config.data.synthetic_n=600",
        "--config.data.synthetic_size=48", "--config.data.prepare_workers=2"]
    run = _Run(*args)
    run.wait_for(lambda: "drawing a synthetic chest X-ray set" in run.text)
    time.sleep(1)  # the builder's worker processes starting
    run.ctrl_c()
    code, lines = run.finish()
    _clean(code, lines)
    assert lines[-1] == ("interrupted: no training step was in flight, nothing to save; run "
                         "the same command again to resume")
