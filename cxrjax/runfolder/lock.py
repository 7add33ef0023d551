"""One writer per run folder: a lock file in the workdir naming its holder.

``W/run.lock`` holds the holder's host, pid, start time and a heartbeat. It is created only if
absent: ``O_CREAT|O_EXCL`` on a local disk, an upload with the precondition
``if_generation_match=0`` in a bucket. A second command on a live run is refused in one line
(``LockedError``) naming the holder; a lock whose holder is gone (a dead pid on this host, or
no heartbeat for ``STALE_AFTER_S`` from another host) is taken over with a warning.

The heartbeat comes from a daemon thread, not from the loop: the loop's log and checkpoint
cadence can leave minutes between calls (a compile, a long validation, the test phase), while
a thread beats at a fixed rate for as long as the process lives and stops when it dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from cxrjax.io import fileio, run_layout

log = logging.getLogger("cxrjax")

LOCK_FILE = run_layout.LOCK
HEARTBEAT_S = 30.0  # how often the holder refreshes its heartbeat
STALE_AFTER_S = 600.0  # no heartbeat for this long: the holder (on another host) is gone


class LockedError(OSError):
    """A workdir held by a live run; the message is one line naming the holder."""


def _now() -> float:
    return time.time()


def describe(info: dict, workdir: str) -> str:
    """``W is in use by pid P on HOST since T (heartbeat Ns ago)``."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("started", 0))))
    beat = max(0.0, _now() - float(info.get("heartbeat", 0)))
    return (f"{workdir} is in use by pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"since {since} (heartbeat {beat:.0f}s ago)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def holder_gone(info: dict | None, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the lock's holder is gone ("pid 12 is not running on HOST", "no heartbeat for
    700s"), or None while it may be alive. An unreadable lock counts as its heartbeat's age
    alone (taken from ``info["heartbeat"]``, the file's time when the content is unreadable)."""
    if info is None:
        return "the lock is gone"
    age = _now() - float(info.get("heartbeat", 0))
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
            and not _pid_alive(info["pid"]):
        return f"pid {info['pid']} is not running on {info['host']}"
    if age > stale_after_s:
        return f"no heartbeat for {age:.0f}s"
    return None


# ---------------------------------------------------------------------------------------------
# Storage: create if absent, read, replace or delete only what was read.
# ---------------------------------------------------------------------------------------------


class _Local:
    """A lock file on a local (or network) disk."""

    def __init__(self, path: str):
        self.path = path

    def create(self, data: bytes) -> Any:
        """Writes the lock if absent; its version (the content), or None if one exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return data

    def read(self) -> tuple[bytes, Any, float] | None:
        """(content, version, modification time), or None without a lock."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            return data, data, os.path.getmtime(self.path)
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, version: Any) -> Any:
        """Rewrites the lock (atomically) if it is still ``version``; the new version or None."""
        current = self.read()
        if current is None or current[1] != version:
            return None
        fileio.write_bytes(self.path, data)
        return data

    def delete(self, version: Any) -> bool:
        """Removes the lock if it is still ``version``: moved to a unique name first, checked,
        and put back when another holder's lock was moved in the meantime."""
        aside = f"{self.path}.{uuid.uuid4().hex[:8]}.gone"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != version:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.remove(aside)
            return False
        os.remove(aside)
        return True


class _Bucket:
    """A lock object in a bucket, changed only under generation-match preconditions."""

    def __init__(self, path: str):
        from google.cloud import storage

        self.path = path
        bucket, key = fileio.split_bucket(path)
        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None)
        self._blob = lambda: client.bucket(bucket).blob(key)  # a fresh generation each time

    def create(self, data: bytes) -> Any:
        return self.replace(data, 0)

    def read(self) -> tuple[bytes, Any, float] | None:
        from google.api_core import exceptions

        blob = self._blob()
        try:
            blob.reload()
            data = blob.download_as_bytes(if_generation_match=blob.generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return None
        return data, blob.generation, blob.updated.timestamp() if blob.updated else 0.0

    def replace(self, data: bytes, version: Any) -> Any:
        from google.api_core import exceptions

        blob = self._blob()
        try:
            blob.upload_from_string(data, content_type="application/json",
                                    if_generation_match=version)
        except exceptions.PreconditionFailed:
            return None
        return blob.generation

    def delete(self, version: Any) -> bool:
        from google.api_core import exceptions

        try:
            self._blob().delete(if_generation_match=version)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False
        return True


def _store(path: str) -> _Local | _Bucket:
    return _Bucket(path) if fileio.is_remote(path) else _Local(path)


def _parse(read: tuple[bytes, Any, float]) -> dict:
    """The lock's fields; an unreadable lock (cut while written) is dated by its file."""
    try:
        info = json.loads(read[0])
        if isinstance(info, dict) and "heartbeat" in info:
            return info
    except ValueError:
        pass
    return {"heartbeat": read[2], "started": read[2]}


# ---------------------------------------------------------------------------------------------
# The lock a run holds.
# ---------------------------------------------------------------------------------------------


class RunLock:
    """A held lock: refreshed by a daemon thread, released by ``release`` (or ``with``)."""

    def __init__(self, workdir: str, store: _Local | _Bucket, info: dict, version: Any,
                 created_folder: bool, heartbeat_s: float):
        self.workdir, self.path, self.info = workdir, store.path, info
        self._store, self._version, self._created_folder = store, version, created_folder
        self.users = 1  # acquire() calls of this process not yet released
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name="cxrjax-run-lock")
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                if not self.heartbeat():
                    log.error("%s: the run's lock was taken over by another command; this run "
                              "no longer holds %s", self.workdir, self.path)
                    return
            except Exception as e:  # noqa: BLE001 - a failed beat is retried at the next one
                log.warning("could not refresh the run's lock %s: %s", self.path, e)

    def heartbeat(self) -> bool:
        """Refreshes the heartbeat; False when the lock is no longer this run's."""
        with self._guard:
            if self._version is None:
                return False
            info = {**self.info, "heartbeat": _now()}
            version = self._store.replace(_encode(info), self._version)
            if version is None:
                self._version = None  # another command's now: never deleted by this one
                return False
            self.info, self._version = info, version
            return True

    def holds(self) -> bool:
        """Whether this process still holds the lock (not released, not taken over)."""
        return self._version is not None and not self._stop.is_set()

    def stop_heartbeat(self) -> None:
        """Stops the thread (before the workdir is removed or moved)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still this run's; a folder the
        lock itself created is removed too when nothing else is in it. Nested acquisitions in
        one process release it with the last one."""
        self.users -= 1
        if self.users > 0:
            return
        if _HELD.get(self.workdir) is self:
            del _HELD[self.workdir]
        self.stop_heartbeat()
        with self._guard:
            if self._version is None:
                return
            version, self._version = self._version, None
            with contextlib.suppress(OSError):
                self._store.delete(version)
        if self._created_folder and not fileio.is_remote(self.workdir):
            with contextlib.suppress(OSError):
                os.rmdir(self.workdir)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[str, RunLock] = {}  # workdir -> the lock this process holds there


def _encode(info: dict) -> bytes:
    return (json.dumps(info, indent=1) + "\n").encode()


def acquire(workdir: str, *, stale_after_s: float = STALE_AFTER_S,
            heartbeat_s: float = HEARTBEAT_S, purpose: str = "train") -> RunLock:
    """Takes ``workdir``'s lock (creating the folder); LockedError naming a live holder.

    A lock left by a holder that is gone is taken over with a warning. ``purpose`` is
    recorded in the lock (what the holder runs), for the refusal's line.
    """
    workdir = fileio.expand(workdir)
    held_here = _HELD.get(workdir)
    if held_here is not None and held_here.holds():  # this process already holds it
        held_here.users += 1
        return held_here
    created_folder = not fileio.isdir(workdir)
    try:
        fileio.makedirs(workdir)
    except OSError as e:  # a file in the way, no permission: one line
        raise OSError(f"workdir {workdir} is not usable: {e.strerror or e}") from None
    store = _store(fileio.join(workdir, LOCK_FILE))
    now = _now()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now,
            "heartbeat": now, "purpose": purpose, "token": uuid.uuid4().hex}
    for _ in range(5):
        version = store.create(_encode(info))
        if version is not None:
            _HELD[workdir] = RunLock(workdir, store, info, version, created_folder, heartbeat_s)
            return _HELD[workdir]
        current = store.read()
        if current is None:
            continue  # released in between: try again
        held = _parse(current)
        gone = holder_gone(held, stale_after_s)
        if gone is None:
            if created_folder:
                with contextlib.suppress(OSError):
                    os.rmdir(workdir)
            raise LockedError(
                f"{describe(held, workdir)}; wait for it to end or stop it (its lock is "
                f"{store.path}), or pick another --workdir")
        if store.delete(current[1]):
            log.warning("taking over the lock of %s from pid %s on %s: %s", workdir,
                        held.get("pid", "?"), held.get("host", "?"), gone)
    raise LockedError(f"{workdir}: could not take its lock {store.path} (other commands keep "
                      "taking it); try again")


def holder(workdir: str, stale_after_s: float = STALE_AFTER_S) -> dict | None:
    """The live holder of ``workdir``'s lock (its recorded fields), or None."""
    path = fileio.join(fileio.expand(workdir), LOCK_FILE)
    current = _store(path).read()
    if current is None:
        return None
    info = _parse(current)
    return None if holder_gone(info, stale_after_s) else info


def refuse_if_locked(workdir: str, what: str) -> None:
    """LockedError when a live run holds ``workdir``: for a reader about to write ``what``
    into the run's files (which would race the run's own writes)."""
    info = holder(workdir)
    if info is not None and not (info.get("host") == socket.gethostname()
                                 and info.get("pid") == os.getpid()):
        raise LockedError(f"{describe(info, fileio.expand(workdir))}; not writing {what} into "
                          "a running run's files: wait for it to end, or write elsewhere")
