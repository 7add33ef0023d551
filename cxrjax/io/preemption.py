"""Preemption notices (SIGTERM) turned into one step at which every host saves and stops.

A spot or preemptible TPU VM, or a Slurm job, gets SIGTERM some time before it is taken away.
The loop asks ``PreemptionWatcher.reached(step)`` once per step, after the step's work is
dispatched; when it says True, every host saves a checkpoint of that step, waits for the write
to complete and raises ``Preempted``, which the entry point turns into one line and
``PREEMPTED_EXIT_CODE``. Rerunning the same command resumes from that step.

Where the notice comes from:
- Under ``jax.distributed.initialize`` (every multi-host run) JAX's coordination service agrees
  on the step. ``initialize`` installs a C++ SIGTERM handler (the "sigterm" preemption
  notifier, polled once a second); a notice on any one process reaches all of them through the
  service, each reports the step it is at, and ``multihost_utils.reached_preemption_sync_point``
  becomes True on every process at the same step: the largest reported step + 1. Every process
  must therefore ask at every step, with the same step numbers: the train step, which is also
  what orbax's CheckpointManager passes to the same function on every save. No Python handler
  is installed then: it would replace JAX's. A notice that arrives during an evaluation is
  acted on at the next train step.
- A single process without jax.distributed: ``reached_preemption_sync_point`` always says False
  (there is no coordination client), so the watcher installs a Python SIGTERM handler and says
  True at the first step it is asked about after the signal.

A second SIGTERM changes nothing (JAX's handler sets its flag again; ours counts it), so a save
in progress runs to completion. Orbax makes a step visible only once it is complete (a rename
on a local disk, a commit_success file in a bucket), so even a SIGKILL during the save leaves
the previous checkpoint as the newest readable one.

Outside a training loop (start-up, the test phase), the entry point's ``Sigterm`` answers a
SIGTERM: ``Terminated`` is raised in the main thread with one line saying what was done, and the
program ends with that line and ``PREEMPTED_EXIT_CODE`` (a rerun completes the work: the test
phase's outputs are written atomically). An open watcher replaces that handler while training;
a multi-host run's is JAX's from ``jax.distributed.initialize`` on, which only notes the notice.

Ctrl-C (SIGINT, ``CtrlC``, installed by an entry point) is a notice of this one process: in a
single-process training loop it is acted on like a SIGTERM, with ``Interrupted`` and exit code
130; elsewhere (preparing data, testing, a multi-host run) it stops the program without saving.
A second Ctrl-C stops at once. The terminal sends SIGINT to every process of the group, so the
worker processes (grain's, the data builder's) must not see it: SIGINT is blocked in every
thread and inherited by every child, and one thread of this process waits for it.
"""

from __future__ import annotations

import _thread
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing import resource_tracker
from multiprocessing import util as multiprocessing_util
from types import FrameType
from typing import Any

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Distinct from a
# crash (1), a bad flag (2) and a death by the signal itself (143 = 128 + SIGTERM).
PREEMPTED_EXIT_CODE = 75
# 128 + SIGINT: what a shell reports for a program that a Ctrl-C stopped.
INTERRUPTED_EXIT_CODE = 130
RESUME = "run the same command again to resume"

log = logging.getLogger("cxrjax")


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is written; its message is one line."""

    def __init__(self, step: int, checkpoint_dir: str):
        self.step, self.checkpoint_dir = int(step), str(checkpoint_dir)
        super().__init__(f"preempted (SIGTERM): saved a checkpoint of step {self.step} in "
                         f"{self.checkpoint_dir}; run the same command again to resume")


class Terminated(BaseException):
    """A SIGTERM outside a training loop (``Sigterm``), raised in the main thread wherever it
    is; a BaseException so that no ``except Exception`` takes it for an error. Its message is
    the one line to show."""


class Interrupted(Exception):
    """A Ctrl-C stopped the run; its message is the one line to show."""

    @classmethod
    def saved(cls, step: int, checkpoint_dir: str) -> Interrupted:
        return cls(f"interrupted: saved step {int(step)} in {checkpoint_dir}; {RESUME}")


_ACTIVE: list[PreemptionWatcher] = []  # the watchers open now (a training loop's)


class PreemptionWatcher:
    """Says, once per step and cheaply, whether this is the step to save at and stop.

    Create it in the main thread, after ``jax.distributed.initialize`` when there is one;
    ``close()`` (or leaving a ``with`` block) puts back the SIGTERM handler it replaced.
    """

    def __init__(self) -> None:
        import jax  # here, not at the top: CtrlC is installed before anything imports numpy

        self.signals_received = 0
        self.interrupted = False  # a Ctrl-C (CtrlC) asked to stop at the next step
        self.step: int | None = None  # the step it said True at
        self.last_step: int | None = None  # the last step it was asked about
        self._previous = None
        self._coordinated = jax.distributed.is_initialized() and bool(
            jax.config.jax_enable_preemption_service)
        single = not self._coordinated and jax.process_count() == 1
        if single and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionWatcher must be created in the main thread "
                               "(Python delivers signals only there)")
        _ACTIVE.append(self)
        if self._coordinated:
            return
        if not single:
            log.warning("jax_enable_preemption_service is off: a SIGTERM cannot be agreed on "
                        "across %d processes and will stop the run without a checkpoint",
                        jax.process_count())
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received == 1:
            log.warning("SIGTERM: finishing the step in flight, then saving a checkpoint")
        else:
            log.warning("SIGTERM again (%d); the checkpoint in progress is being completed",
                        self.signals_received)

    def take_interrupt(self) -> bool:
        """Asks to stop at the next step, as for a SIGTERM; False where that cannot be agreed
        on (several processes): the caller then stops the program without saving."""
        import jax

        if self._coordinated or jax.process_count() > 1:
            return False
        self.interrupted = True
        return True

    def reached(self, step: int) -> bool:
        """True at the one step where every process should save and stop (call every step)."""
        self.last_step = int(step)
        if self._coordinated:
            from jax.experimental import multihost_utils

            hit = multihost_utils.reached_preemption_sync_point(int(step))
        else:
            hit = (self.signals_received > 0 or self.interrupted) and self.step is None
        if hit:
            self.step = int(step)
        return hit

    def stopped(self, step: int, checkpoint_dir: str) -> Exception:
        """What the loop raises once ``step`` is saved: ``Interrupted`` for a Ctrl-C that came
        before any SIGTERM, else ``Preempted``."""
        if self.interrupted and not self.signals_received:
            return Interrupted.saved(step, checkpoint_dir)
        return Preempted(step, checkpoint_dir)

    def close(self) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> PreemptionWatcher:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if _SIGTERM:  # the loop ended: trained (no exception), else the program is stopping
            _SIGTERM[-1].training_ended(completed=exc_type is None)


_SIGTERM: list[Sigterm] = []  # the program's handler outside training, once installed


class Sigterm:
    """SIGTERM for a whole program outside a training loop: ``Terminated`` with the line that
    ``describe(trained)`` gives (``trained``: a training loop completed in this process), raised
    in the main thread; the entry point ends with it and ``PREEMPTED_EXIT_CODE``.

    Install it in the main thread, first of all (before then the signal kills the process).
    While a ``PreemptionWatcher`` is open its handler replaces this one; once a loop has stopped
    on an exception (Preempted, an error) the program is ending, and a SIGTERM is only noted;
    after ``finished()`` it is ignored. A handler runs wherever the main thread is, a garbage
    collector's callback too, where Python would print the exception and go on: there it is
    raised again at the next chance (``_retry_swallowed``).
    """

    def __init__(self, describe: Callable[[bool], str], ending: CtrlC):
        self.describe, self.ending = describe, ending
        self.trained = self.stopping = self.swallowed = False
        self.line: str | None = None  # the first notice's line, once it came

    def install(self) -> Sigterm:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Sigterm must be installed in the main thread")
        if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
            return self  # started with SIGTERM ignored (nohup-like): it stays so
        signal.signal(signal.SIGTERM, self._on_sigterm)
        _SIGTERM.append(self)
        if not _SIGTERM[:-1]:
            previous = sys.unraisablehook
            sys.unraisablehook = lambda info: _retry_swallowed(info, previous)
        return self

    def training_ended(self, completed: bool) -> None:
        self.trained = self.trained or completed
        self.stopping = self.stopping or not completed

    def finished(self) -> None:
        """The program's work is done: a SIGTERM from now on changes nothing (ignored, also
        while the interpreter shuts down, where Python would restore the default, fatal one)."""
        if self in _SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.line is None:
            if self.stopping or self.ending.is_ending():
                return  # already ending: its own line is on the way
            self.line = self.describe(self.trained)
            # Should the main thread not reach its end in time (a cleanup that hangs): here.
            self.ending.message, self.ending.exit_code = self.line, PREEMPTED_EXIT_CODE
            timer = threading.Timer(self.ending.grace_s, self.ending.force_exit)
            timer.daemon = True
            timer.start()
        elif not self.swallowed:
            return  # a second notice: the first one's line is on its way
        self.swallowed = False
        raise Terminated(self.line)


def _retry_swallowed(info: Any, previous: Callable[[Any], None]) -> None:
    """``sys.unraisablehook``: a ``Terminated`` that Python could not raise (the handler ran in
    a callback) is not printed but signalled again, to be raised where the main thread is next."""
    if isinstance(info.exc_value, Terminated) and _SIGTERM:
        _SIGTERM[-1].swallowed = True
        # A moment later, from another thread: the handler then runs where the main thread is
        # by then (out of this hook and, most likely, of the callback; else it comes back here).
        retry = threading.Timer(0.05, signal.pthread_kill,
                                args=(threading.main_thread().ident, signal.SIGTERM))
        retry.daemon = True
        retry.start()
        return
    previous(info)


class CtrlC:
    """Ctrl-C for a whole program: one line and ``INTERRUPTED_EXIT_CODE``, never a traceback.

    ``exit_code`` is ``INTERRUPTED_EXIT_CODE`` unless a SIGTERM (``Sigterm``) set it.
    ``install()`` (in the main thread, before any worker process or thread starts) blocks
    SIGINT in this thread, so in every thread and child process started later, and listens
    for it on a thread of its own. The first Ctrl-C goes to the open ``PreemptionWatcher``
    (the loop saves the step in flight and raises ``Interrupted``); without one, and at the
    second, it raises KeyboardInterrupt in the main thread, whose handler calls ``exit``; if
    the main thread has not begun to exit ``grace_s`` later (it is inside a compilation, or
    waiting for a pool of workers to finish), this thread ends the process. Either way the
    end is ``before_line`` (to end a progress bar's line), the line, ``cleanup`` (it must
    release what the worker processes hold) for at most ``cleanup_s``, the remaining worker
    processes stopped, exit.
    """

    def __init__(self, before_line: Callable[[], None] = lambda: None,
                 cleanup: Sequence[Callable[[], None]] = (), grace_s: float = 2.0,
                 cleanup_s: float = 10.0):
        self.before_line, self.cleanup = before_line, tuple(cleanup)
        self.grace_s, self.cleanup_s = grace_s, cleanup_s
        self.count = 0
        self.exit_code = INTERRUPTED_EXIT_CODE
        self.message = f"interrupted: no training step was in flight, nothing to save; {RESUME}"
        self._exiting = threading.Lock()  # taken by whoever prints the last line

    def install(self) -> CtrlC:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("CtrlC must be installed in the main thread")
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return self  # started with Ctrl-C ignored (a shell's background job): it stays so
        # Started now: starting it later unblocks SIGINT in the thread that starts it.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        threading.Thread(target=self._listen, name="cxrjax-ctrl-c", daemon=True).start()
        return self

    def _listen(self) -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            self.count += 1
            watcher = _ACTIVE[-1] if _ACTIVE else None
            if self.count == 1:
                if watcher is not None and watcher.take_interrupt():
                    continue  # the loop finishes the step, saves it and raises Interrupted
                if watcher is not None:
                    self.message = f"interrupted: the step in flight was not saved; {RESUME}"
            else:
                step = None if watcher is None else watcher.last_step
                self.message = ("interrupted again: stopped at once"
                                + (f", step {step} not saved" if step is not None else "")
                                + f"; {RESUME} from the newest checkpoint")
            if not self._exiting.locked():
                _thread.interrupt_main()
                timer = threading.Timer(self.grace_s, self.force_exit)
                timer.daemon = True  # never what keeps the process alive
                timer.start()

    def exit(self, message: str | None = None, exit_code: int | None = None) -> None:
        """Ends the process: ``message`` (default: ``self.message``), then as ``force_exit``,
        with ``exit_code`` (default: ``self.exit_code``)."""
        if not self._exiting.acquire(blocking=False):
            threading.Event().wait()  # another thread is ending the process
        if exit_code is not None:
            self.exit_code = exit_code
        self._end(message or self.message)

    def is_ending(self) -> bool:
        """Whether a thread is ending the process (its last line printed or on the way)."""
        return self._exiting.locked()

    def force_exit(self) -> None:
        """The process's end, from any thread, unless another is ending it already."""
        if self._exiting.acquire(blocking=False):
            self._end(self.message)

    def _end(self, line: str) -> None:
        """``before_line``, the line, ``cleanup``, the worker processes stopped, exit with
        ``exit_code`` (130 for a Ctrl-C).

        No other exit handler runs (they could wait minutes for grain's workers): what a run
        keeps is written before it raises Interrupted.
        """
        _run_all((self.before_line, lambda: print(line, file=sys.stderr, flush=True)))
        # A worker still starting (importing, say) only stops when it gets to its loop: give the
        # cleanup some time, then stop the rest (one that slow has most likely sent nothing).
        cleanup = threading.Thread(target=_run_all, args=(self.cleanup,), daemon=True)
        cleanup.start()
        cleanup.join(self.cleanup_s)
        for child in multiprocessing.active_children():
            child.terminate()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # What multiprocessing does at exit: its semaphores and grain's buffers released (else
        # the resource tracker reports them leaked). Its output after the line is dropped: a
        # grain finalizer can race with a grain thread still waiting for a batch and print a
        # traceback of that race. (The resource tracker writes to its own stderr.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        _run_all((multiprocessing_util._exit_function,))
        os._exit(self.exit_code)


def _run_all(fns: Sequence[Callable[[], None]]) -> None:
    """Calls each of ``fns``; one that fails does not stop the others (the process is ending)."""
    for fn in fns:
        try:
            fn()
        except Exception:  # noqa: BLE001, S110 - stopping anyway: the rest must still run
            pass
