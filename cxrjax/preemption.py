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
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Distinct from a
# crash (1), a bad flag (2) and a death by the signal itself (143 = 128 + SIGTERM).
PREEMPTED_EXIT_CODE = 75

log = logging.getLogger("cxrjax")


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is written; its message is one line."""

    def __init__(self, step: int, checkpoint_dir: str):
        self.step, self.checkpoint_dir = int(step), str(checkpoint_dir)
        super().__init__(f"preempted (SIGTERM): saved a checkpoint of step {self.step} in "
                         f"{self.checkpoint_dir}; run the same command again to resume")


class PreemptionWatcher:
    """Says, once per step and cheaply, whether this is the step to save at and stop.

    Create it in the main thread, after ``jax.distributed.initialize`` when there is one;
    ``close()`` (or leaving a ``with`` block) puts back the SIGTERM handler it replaced.
    """

    def __init__(self) -> None:
        self.signals_received = 0
        self.step: int | None = None  # the step it said True at
        self._previous = None
        self._coordinated = jax.distributed.is_initialized() and bool(
            jax.config.jax_enable_preemption_service)
        if self._coordinated:
            return
        if jax.process_count() > 1:
            log.warning("jax_enable_preemption_service is off: a SIGTERM cannot be agreed on "
                        "across %d processes and will stop the run without a checkpoint",
                        jax.process_count())
            return
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionWatcher must be created in the main thread "
                               "(Python delivers signals only there)")
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received == 1:
            log.warning("SIGTERM: finishing the step in flight, then saving a checkpoint")
        else:
            log.warning("SIGTERM again (%d); the checkpoint in progress is being completed",
                        self.signals_received)

    def reached(self, step: int) -> bool:
        """True at the one step where every process should save and stop (call every step)."""
        if self._coordinated:
            hit = multihost_utils.reached_preemption_sync_point(int(step))
        else:
            hit = self.signals_received > 0 and self.step is None
        if hit:
            self.step = int(step)
        return hit

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> PreemptionWatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
