"""grain's worker processes: how many (``data.workers``), and their shared memory released.

With workers, grain hands each batch array over in a POSIX shared-memory block that it unlinks
only when the array is garbage-collected, through a thread pool that Python stops first at
exit. A block still alive then (the last batches, those waiting in grain's buffers) was
reported as ``resource_tracker: There appear to be N leaked shared_memory objects``, and an
array still alive at interpreter teardown fails in grain's ``__del__`` (google/grain#398,
grain 0.2.x). ``Batches`` hands out a plain copy of each batch (0.15 ms for 64 x 224² uint8)
and unlinks its block at once, and can be closed; at exit (and at a Ctrl-C's, which runs no
other exit handler: ``close_open_iterators``) the iterators still open are closed and grain's
pending unlinks are run, before multiprocessing's own exit handler stops its threads.
"""

from __future__ import annotations

import atexit
import gc
import os
import weakref
from collections.abc import Iterator

import grain
import grain.multiprocessing
import numpy as np

AUTO = -1  # data.workers = AUTO: one worker per core but one, at most MAX_AUTO
MAX_AUTO = 8  # enough to feed one accelerator from raw records (scripts/bench_data.py)

_OPEN: weakref.WeakSet[Batches] = weakref.WeakSet()


def resolve_count(requested: int, cores: int | None = None) -> int:
    """The number of grain worker processes that ``data.workers = requested`` means here.

    ``AUTO`` (-1): one per core this process may use, less one left to the training loop, at
    most ``MAX_AUTO``: 1 on a 2-core machine, 0 on one core, 8 on 16. 0: none, the batches
    are made in this process. N > 0: N.
    """
    if requested == AUTO:
        if cores is None:
            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
        return max(0, min(MAX_AUTO, cores - 1))
    if requested < 0:
        raise ValueError(f"data.workers={requested} must be >= 0, or {AUTO} for one per core")
    return requested


class Batches(Iterator[dict[str, np.ndarray]]):
    """A grain iterator of batches (dicts of arrays) whose shared memory is released cleanly.

    Each array that arrives in a shared-memory block comes out as a plain copy, its block
    unlinked at once; ``close`` stops grain's workers and threads (they unlink what they hold).
    """

    def __init__(self, it: Iterator[dict[str, np.ndarray]]):
        self._it = it
        _OPEN.add(self)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: _out_of_shared_memory(v) for k, v in next(self._it).items()}

    def close(self) -> None:
        """Stops the iterator; idempotent. No batch comes after."""
        _OPEN.discard(self)
        it, self._it = self._it, iter(())  # grain's iterator goes now, not at interpreter exit
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _out_of_shared_memory(array: np.ndarray) -> np.ndarray:
    """``array``, or a plain copy of it if it lies in grain's shared memory, whose block is then
    unlinked now rather than when grain gets to deleting it."""
    if not isinstance(array, grain.multiprocessing.SharedMemoryArray):
        return array
    plain = np.array(array)
    if getattr(array, "_unlink_on_del", False) and array.shm is not None:
        array.shm.unlink()
        array._unlink_on_del = False  # grain's deletion then only unmaps it
    return plain


@atexit.register  # atexit runs the last registered first: before multiprocessing's handler
def close_open_iterators() -> None:
    """Closes the iterators still open and runs grain's unlinks of their buffered blocks now,
    not in its deletion thread pool, which multiprocessing's exit handler stops without
    running what is queued."""
    shm_array = grain.multiprocessing.SharedMemoryArray
    pool = getattr(shm_array, "_del_thread_pool", None)  # None: no worker sent a batch
    if pool is not None and hasattr(shm_array, "_disable_async_del"):
        shm_array._disable_async_del()  # from here, a dropped array unlinks its block at once
    for batches in list(_OPEN):
        batches.close()
    if pool is not None:
        gc.collect()  # grain's buffers, dropped by close, may sit in reference cycles
        pool.close()
        pool.join()  # the unlinks queued before
