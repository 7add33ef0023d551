"""Paths that are local or in a Cloud Storage bucket (``gs://BUCKET/...``), behind one small API.

Everything above the ground floor that takes a path (workdir, data_dir, weights_dir, init,
--out) goes through here, so a workdir can live in a bucket on a spot TPU VM whose disk goes
with it. Built on the libraries' own layers: ``gcsfs`` through fsspec for files (the very
filesystem object that etils ``epath`` uses, and so TFDS and orbax's own path handling). The
start-up checks (a wrong bucket or an unreachable server as one prompt line) are in
``cxrjax.io.storage_checks``. Checkpoint arrays
(orbax, through tensorstore) and ArrayRecord shards (array_record's reader) go to gs://
without this module.

Writes are atomic: a reader sees the old content or the new, never a part. A local file is
written beside its target and renamed over it; a bucket object only appears once its upload
completes, so a remote file is written to a local temporary file and uploaded on close.
GCS has no folders and no rename: ``makedirs`` is a no-op there, ``rename`` copies then deletes.

gcsfs caches directory listings for the life of the process; another host's (or process's)
writes would stay invisible, so the cache is turned off here, before the first ``gs://`` use.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from typing import IO, Any

import fsspec
import google_crc32c

REMOTE_PREFIX = "gs://"
_CHUNK = 8 << 20

for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


class StorageError(OSError):
    """A path that cannot be used; the message is one line that names it and says why."""


# ------------------------------------------------------------------------- names ---

def is_remote(path: str | os.PathLike) -> bool:
    """True for ``gs://...``."""
    return os.fspath(path).startswith(REMOTE_PREFIX)


def expand(path: str | os.PathLike) -> str:
    """A local path made absolute (``~`` expanded); a gs:// path checked and left as it is."""
    p = os.fspath(path)
    if is_remote(p):
        if not p[len(REMOTE_PREFIX):].split("/", 1)[0]:
            raise StorageError(f"{p}: no bucket name (expected gs://BUCKET/PATH)")
        return p.rstrip("/")
    if "://" in p:
        raise StorageError(f"{p}: only local paths and gs://BUCKET/... are supported")
    if p.startswith("gs:/"):
        raise StorageError(f"{p}: a gs:// path lost a slash (os.path functions do that); "
                           f"pass it as gs://BUCKET/PATH")
    return os.path.abspath(os.path.expanduser(p))


def join(base: str | os.PathLike, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/`` for gs:// ones."""
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def _gcs() -> Any:
    """The process's gcsfs filesystem (the same instance epath uses)."""
    return fsspec.filesystem("gcs", finalize_on_close=True)


def split_bucket(path: str) -> tuple[str, str]:
    """("BUCKET", "KEY") of ``gs://BUCKET/KEY``."""
    bucket, _, key = path[len(REMOTE_PREFIX):].partition("/")
    return bucket, key


# --------------------------------------------------------------------- file tree ---

def exists(path: str | os.PathLike) -> bool:
    p = expand(path)
    return _gcs().exists(p) if is_remote(p) else os.path.exists(p)


def isdir(path: str | os.PathLike) -> bool:
    p = expand(path)
    return _gcs().isdir(p) if is_remote(p) else os.path.isdir(p)


def size(path: str | os.PathLike) -> int:
    p = expand(path)
    return int(_gcs().size(p)) if is_remote(p) else os.path.getsize(p)


def makedirs(path: str | os.PathLike) -> None:
    """Creates a local folder and its parents; nothing to do in a bucket (no folders there)."""
    p = expand(path)
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """The names in a folder, sorted; FileNotFoundError when there is none."""
    p = expand(path)
    if not is_remote(p):
        return sorted(os.listdir(p))
    names = {posixpath.basename(e.rstrip("/")) for e in _gcs().ls(p, detail=False)}
    names.discard("")
    if not names and not _gcs().isdir(p):
        raise FileNotFoundError(p)
    return sorted(names)


def glob(pattern: str | os.PathLike) -> list[str]:
    """Paths matching a glob pattern (``*``, ``?``, ``[..]``, ``**``), sorted."""
    p = os.fspath(pattern)
    if is_remote(p):
        return sorted(REMOTE_PREFIX + m for m in _gcs().glob(p))
    import glob as globlib

    return sorted(globlib.glob(os.path.expanduser(p), recursive=True))


def remove(path: str | os.PathLike, missing_ok: bool = False) -> None:
    p = expand(path)
    try:
        if is_remote(p):
            _gcs().rm_file(p)
        else:
            os.remove(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: str | os.PathLike, missing_ok: bool = True) -> None:
    """Deletes a folder and everything under it."""
    p = expand(path)
    try:
        if is_remote(p):
            _gcs().rm(p, recursive=True)
        else:
            shutil.rmtree(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves a file or folder. Atomic on a local disk; in a bucket a copy then a delete.

    (gcsfs would try GCS's ``moveTo`` first; the emulator lacks it, and on a flat bucket it
    is no more atomic than copy + delete.)
    """
    s, d = expand(src), expand(dst)
    if not is_remote(s) and not is_remote(d):
        os.replace(s, d)
        return
    if is_remote(s) and is_remote(d):
        _gcs().copy(s, d, recursive=True)
        _gcs().rm(s, recursive=True)
        return
    if isdir(s):
        if is_remote(d):
            _gcs().put(s, d, recursive=True)
        else:
            _gcs().get(s, d, recursive=True)
        rmtree(s)
    else:
        copy(s, d)
        remove(s)


# ---------------------------------------------------------------------- contents ---

def _temporary_for(target: str) -> str:
    """A new temporary file's name: beside a local target (same disk, so the final rename is
    atomic; created with the umask's permissions, unlike mkstemp's 0600), in /tmp for a
    remote one."""
    if is_remote(target):
        fd, tmp = tempfile.mkstemp(prefix="cxrjax-upload-", suffix=".tmp")
        os.close(fd)
        return tmp
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Deletes the temporary files that atomic writes left in a local ``folder`` when a kill
    cut them short (call it only as the folder's one writer); returns their names."""
    p = expand(folder)
    if is_remote(p) or not os.path.isdir(p):
        return []  # a remote write's temporary file is in the local /tmp
    stale = [name for name in os.listdir(p) if _TEMPORARY.match(name)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(p, name))
    return sorted(stale)


class _AtomicWriter:
    """A local temporary file that becomes ``target`` on close, and never if the block fails.

    ``sync_on_flush``: upload on every flush (a remote log that must survive a kill keeps
    what was flushed; such a file is then visible while incomplete).
    """

    def __init__(self, target: str, mode: str, encoding: str | None, initial: bytes = b"",
                 sync_on_flush: bool = False):
        self.name, self._target, self._sync = target, target, sync_on_flush
        self._tmp = _temporary_for(target)
        with builtins.open(self._tmp, "wb") as f:
            f.write(initial)
        self._file = builtins.open(self._tmp, mode.replace("w", "a"), encoding=encoding)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except OSError as e:
                self.discard()
                raise self._naming_target(e) from None
        else:
            self.discard()
            if isinstance(exc, OSError):
                raise self._naming_target(exc) from None

    def _naming_target(self, error: OSError) -> OSError:
        """``error`` naming the file being written (a full disk's EFBIG/ENOSPC names none)."""
        if error.filename is not None or error.errno is None:
            return error
        return type(error)(error.errno, error.strerror, self._target)

    def flush(self) -> None:
        self._file.flush()
        if self._sync:
            _gcs().put_file(self._tmp, self._target)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            if is_remote(self._target):
                _gcs().put_file(self._tmp, self._target)
            else:
                os.replace(self._tmp, self._target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)

    def discard(self) -> None:
        """Drops what was written; the target keeps its old content (or stays absent)."""
        with contextlib.suppress(OSError):  # flushing what is dropped may fail (a full disk)
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)


def open(path: str | os.PathLike, mode: str = "r", encoding: str | None = None) -> IO:
    """A file object, text or binary, for reading ("r", "rb"), writing ("w", "wb"), appending.

    "w"/"wb" are atomic (see the module's docstring): used in a ``with`` block whose body
    raises, the target is left as it was. Local "a" appends in place (a log cut by a kill keeps
    its lines); remote "a" rewrites the object on every flush() and on close(), since a bucket
    object cannot grow: fine for a log of a few MB, not for bulk data.
    """
    p = expand(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    kind = mode.replace("b", "").replace("t", "")
    if kind == "r":
        if is_remote(p):
            return _gcs().open(p, mode, encoding=encoding)
        return builtins.open(p, mode, encoding=encoding)
    if kind == "w":
        return _AtomicWriter(p, mode, encoding)
    if kind == "a":
        if not is_remote(p):
            return builtins.open(p, mode, encoding=encoding)
        initial = _gcs().cat_file(p) if _gcs().exists(p) else b""
        return _AtomicWriter(p, mode, encoding, initial=initial, sync_on_flush=True)
    raise ValueError(f"fileio.open: unsupported mode {mode!r} (use r, w or a, with b or t)")


def read_text(path: str | os.PathLike) -> str:
    with open(path, "r") as f:
        return f.read()


def read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_text(path: str | os.PathLike, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# ------------------------------------------------------------------------- copies ---

def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies one file, local or remote either side; the destination appears complete or not."""
    s, d = expand(src), expand(dst)
    if is_remote(s) and is_remote(d):
        _gcs().copy(s, d)
    elif is_remote(s):
        makedirs(os.path.dirname(d))
        tmp = _temporary_for(d)
        try:
            _gcs().get_file(s, tmp)
            os.replace(tmp, d)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    elif is_remote(d):
        _gcs().put_file(s, d)
    else:
        makedirs(os.path.dirname(d))
        with builtins.open(s, "rb") as fin, open(d, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)


def checksum(path: str | os.PathLike) -> str:
    """CRC32C of a file, base64, as GCS keeps it for every object (read, not computed, there)."""
    p = expand(path)
    if is_remote(p):
        return _gcs().info(p)["crc32c"]
    crc = google_crc32c.Checksum()
    with builtins.open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc.update(chunk)
    return base64.b64encode(crc.digest()).decode()


def walk_files(root: str | os.PathLike) -> dict[str, int]:
    """Every file under ``root``: its path relative to root (``/``-separated) -> its size."""
    r = expand(root)
    if is_remote(r):
        prefix = r[len(REMOTE_PREFIX):] + "/"
        return {name[len(prefix):]: int(info["size"])
                for name, info in _gcs().find(r, detail=True).items()
                if info.get("type") == "file" and name.startswith(prefix)}
    out = {}
    for folder, _, names in os.walk(r):
        for name in names:
            full = os.path.join(folder, name)
            out[os.path.relpath(full, r).replace(os.sep, "/")] = os.path.getsize(full)
    return out
