"""Verified, resumable copies of a folder tree between a bucket and a local disk.

Three uses: uploading a dataset prepared on a local disk to a bucket (array_record can read
shards from ``gs://`` but cannot write them there); where reading shards over the network is
too slow, giving each host a local copy of them (``local_cache``) before the pipeline opens
them; and local copies of single remote files that a library reads only from a local disk
(ported weights, a label table: ``local_file``, ``local_files``) under ``cache_root()``.

Every file is verified by size and CRC32C, the checksum GCS keeps for every object. A local
destination records each verified file in ``MANIFEST_NAME`` (relative path -> size, crc32c),
so a rerun skips those without reading them again; a copy cut short by a kill is not in it and
is redone, and so is a file whose source changed (its checksum no longer matches).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from cxrjax.io import fileio

MANIFEST_NAME = ".cxrjax-copy.json"
CACHE_ENV = "CXRJAX_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/cxrjax"


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Copies every file under ``src`` to ``dst`` that is not there already; returns how many.

    Either side may be local or ``gs://``. Raises fileio.StorageError when ``src`` holds no
    file, or when a copy does not match its source (the bad copy is removed first).
    """
    s, d = fileio.expand(src), fileio.expand(dst)
    files = {rel: n for rel, n in fileio.walk_files(s).items() if rel != MANIFEST_NAME}
    if not files:
        raise fileio.StorageError(f"nothing to copy: no files under {s}")
    manifest_path = None if fileio.is_remote(d) else os.path.join(d, MANIFEST_NAME)
    manifest = _read_manifest(manifest_path)
    copied = 0
    for rel, n in sorted(files.items()):
        source, target = fileio.join(s, *rel.split("/")), fileio.join(d, *rel.split("/"))
        expected = {"size": n, "crc32c": fileio.checksum(source)}
        if _already_copied(target, expected, manifest.get(rel)):
            continue
        fileio.copy(source, target)
        got = {"size": fileio.size(target), "crc32c": fileio.checksum(target)}
        if got != expected:
            fileio.remove(target, missing_ok=True)
            raise fileio.StorageError(
                f"the copy of {source} at {target} does not match it (size {got['size']} vs "
                f"{n}, crc32c {got['crc32c']} vs {expected['crc32c']}); removed, run again")
        copied += 1
        if manifest_path:
            manifest[rel] = got
            fileio.write_text(manifest_path, json.dumps(manifest, sort_keys=True))
    return copied


def local_cache(remote_dir: str | os.PathLike, local_dir: str | os.PathLike) -> str:
    """A verified local copy of a bucket folder (e.g. a prepared dataset); returns its path.

    Copies what is missing or changed and returns ``local_dir`` (absolute). A local
    ``remote_dir`` needs no cache: it is returned as it is and nothing is copied.
    """
    src = fileio.expand(remote_dir)
    if not fileio.is_remote(src):
        return src
    dst = fileio.expand(local_dir)
    if fileio.is_remote(dst):
        raise fileio.StorageError(f"local_cache: the cache folder must be local, not {dst}")
    copy_tree(src, dst)
    return dst


def cache_root() -> str:
    """This host's folder for local copies and locally made data: ``$CXRJAX_CACHE_DIR``, else
    ``~/.cache/cxrjax``."""
    return fileio.expand(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def cache_path(remote: str | os.PathLike) -> str:
    """Where ``local_file`` keeps its copy of ``gs://BUCKET/KEY``: cache_root()/gs/BUCKET/KEY."""
    bucket, key = fileio.split_bucket(fileio.expand(remote))
    return os.path.join(cache_root(), "gs", bucket, *key.split("/"))


def local_file(path: str | os.PathLike) -> str:
    """A verified local copy of a remote file (fetched again only when the source changed);
    a local path is returned as it is. A missing remote file is a FileNotFoundError."""
    src = fileio.expand(path)
    if not fileio.is_remote(src):
        return src
    dst = cache_path(src)
    expected = {"size": fileio.size(src), "crc32c": fileio.checksum(src)}
    if os.path.isfile(dst) and {"size": os.path.getsize(dst),
                                "crc32c": fileio.checksum(dst)} == expected:
        return dst
    fileio.copy(src, dst)
    got = {"size": os.path.getsize(dst), "crc32c": fileio.checksum(dst)}
    if got != expected:
        fileio.remove(dst, missing_ok=True)
        raise fileio.StorageError(f"the copy of {src} at {dst} does not match it; removed, "
                                  f"run again")
    return dst


def local_files(remote_dir: str | os.PathLike, patterns: tuple[str, ...]) -> str:
    """Local copies of the files directly in a folder that match any of ``patterns`` (globs);
    returns the local folder that holds them (the folder itself when it is local)."""
    src = fileio.expand(remote_dir)
    if not fileio.is_remote(src):
        return src
    for pattern in patterns:
        for match in fileio.glob(fileio.join(src, pattern)):
            local_file(match)
    dst = cache_path(src)
    os.makedirs(dst, exist_ok=True)
    return dst


@contextlib.contextmanager
def host_lock(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on the local file ``PATH.lock`` while the block runs, so that
    processes of one host that make the same local data (a cache, a synthetic set) take turns."""
    lock = f"{fileio.expand(path)}.lock"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_manifest(path: str | None) -> dict:
    if path is None or not os.path.exists(path):
        return {}
    try:
        return json.loads(fileio.read_text(path))
    except (OSError, ValueError):
        return {}  # unreadable: everything is verified again


def _already_copied(target: str, expected: dict, recorded: dict | None) -> bool:
    """A local target: recorded as verified with these values and still of that size.
    A remote target: present with this size and checksum (one metadata read)."""
    if fileio.is_remote(target):
        try:
            return {"size": fileio.size(target), "crc32c": fileio.checksum(target)} == expected
        except FileNotFoundError:
            return False
    return (recorded == expected and os.path.isfile(target)
            and os.path.getsize(target) == expected["size"])
