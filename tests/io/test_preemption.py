"""cxrjax.io.preemption: a SIGTERM becomes one agreed step, a complete checkpoint and exit code
75."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from cxrjax.io import preemption

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "preemption_worker.py")
LINE = re.compile(r"^preempted \(SIGTERM\): saved a checkpoint of step (\d+) in (.+); "
                  r"run the same command again to resume$", re.M)


def test_the_watcher_says_false_until_a_sigterm_then_true_once():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatcher() as watcher:
        assert not watcher.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.reached(2) and watcher.step == 2
        os.kill(os.getpid(), signal.SIGTERM)  # a second notice changes nothing
        assert not watcher.reached(3) and watcher.signals_received == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_ctrl_c_handed_to_the_watcher_stops_the_next_step_as_interrupted():
    with preemption.PreemptionWatcher() as watcher:
        assert not watcher.reached(4)
        assert watcher.take_interrupt()  # what CtrlC does with a first Ctrl-C
        assert watcher.reached(5) and not watcher.reached(6)
        stopped = watcher.stopped(5, "/w/checkpoints/stage0_global")
        assert isinstance(stopped, preemption.Interrupted)
        assert str(stopped) == ("interrupted: saved step 5 in /w/checkpoints/stage0_global; run "
                                "the same command again to resume")
    with preemption.PreemptionWatcher() as watcher:  # a SIGTERM first: a preemption
        os.kill(os.getpid(), signal.SIGTERM)
        watcher.take_interrupt()
        assert watcher.reached(1)
        assert isinstance(watcher.stopped(1, "d"), preemption.Preempted)
    assert not preemption._ACTIVE  # closed watchers take no Ctrl-C


def test_the_preempted_message_is_one_line_naming_the_step():
    message = str(preemption.Preempted(12, "gs://bucket/run/checkpoints"))
    assert LINE.fullmatch(message).groups() == ("12", "gs://bucket/run/checkpoints")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_and_signal(tmp_path, processes: int, signalled: int = 0):
    """Starts the workers, sends SIGTERM to one once all are looping; returns their outputs."""
    ready = str(tmp_path / "ready")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    extra = [] if processes == 1 else [str(processes), str(_free_port())]
    procs = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / "ckpt"), ready,
                               *([str(i), *extra] if extra else [])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(processes)]
    deadline = time.monotonic() + 120
    while not all(os.path.exists(f"{ready}.{i}") for i in range(processes)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[0][-3000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    procs[signalled].send_signal(signal.SIGTERM)
    return [(p.wait(timeout=120), p.communicate()[0]) for p in procs]


def _saved_step(checkpoint_dir):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(checkpoint_dir) as manager:
        step = manager.latest_step()
        state = manager.restore(step, args=ocp.args.StandardRestore(
            {"x": np.zeros(4, np.float32)}))
    return step, state["x"]


def test_sigterm_to_a_single_process_saves_the_next_step_and_exits_75(tmp_path):
    ((code, out),) = _run_and_signal(tmp_path, processes=1)
    assert code == preemption.PREEMPTED_EXIT_CODE, out[-3000:]
    step = int(LINE.search(out).group(1))
    # The save that a second SIGTERM interrupted is complete and holds that step's state.
    saved, x = _saved_step(tmp_path / "ckpt")
    assert saved == step and np.all(x == step)


def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path):
    # Process 1, not the coordinator: the notice must travel through the coordination service.
    results = _run_and_signal(tmp_path, processes=2, signalled=1)
    for code, out in results:
        assert code == preemption.PREEMPTED_EXIT_CODE, out[-3000:]
    steps = {int(LINE.search(out).group(1)) for _, out in results}
    assert len(steps) == 1
    saved, x = _saved_step(tmp_path / "ckpt")
    assert saved == steps.pop() and np.all(x == saved)


_SIGTERM_PROGRAM = """
import signal, sys, time
from cxrjax.io import preemption
ending = preemption.CtrlC()
sigterm = preemption.Sigterm(lambda trained: f"preempted (SIGTERM), trained={trained}",
                             ending).install()


class Callback:  # as a garbage collector's callback: Python prints what it raises, goes on
    def __del__(self):
        signal.raise_signal(signal.SIGTERM)


try:
    with preemption.PreemptionWatcher():  # a loop that completes: the program has trained
        pass
    if sys.argv[1] == "finished":
        sigterm.finished()
        signal.raise_signal(signal.SIGTERM)
    else:
        Callback()
    time.sleep(1)  # a retried notice interrupts it
    print("went on", flush=True)
except preemption.Terminated as e:
    ending.exit(str(e), preemption.PREEMPTED_EXIT_CODE)
"""


def _sigterm_program(case: str) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(WORKER))
    return subprocess.run([sys.executable, "-c", _SIGTERM_PROGRAM, case], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})


def test_a_sigterm_outside_training_met_in_a_callback_still_ends_in_its_one_line_and_75():
    done = _sigterm_program("in a callback")
    assert done.returncode == preemption.PREEMPTED_EXIT_CODE, done.stderr
    assert done.stderr == "preempted (SIGTERM), trained=True\n" and done.stdout == ""


def test_a_sigterm_once_the_work_is_finished_changes_nothing():
    done = _sigterm_program("finished")
    assert (done.returncode, done.stdout, done.stderr) == (0, "went on\n", "")
