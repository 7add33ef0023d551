"""Start-up checks of a path: can this run write its workdir, read its data? One line if not.

A wrong bucket name, missing credentials or an unreachable server should stop a run before
it compiles anything, with one line that says which, not after a minute of retries inside a
checkpoint write. The bucket checks use ``google-cloud-storage`` directly: its calls take a
timeout and ``retry=None``, unlike gcsfs's and tensorstore's, which retry for minutes.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from typing import Any

from cxrjax.io import fileio
from cxrjax.io.fileio import StorageError

CHECK_TIMEOUT_S = (10, 60)  # connect, read


def check_writable(path: str | os.PathLike) -> str:
    """Raises StorageError (one line) unless ``path`` can be written; returns it expanded.

    Local: writes and deletes a probe file in the folder, or, when the folder is not there
    yet, checks that its nearest existing parent is a writable folder (creating nothing, so a
    run that fails later leaves no folder behind). gs://: looks the bucket up and writes and
    deletes a probe object under the path, with a timeout and no retries.
    """
    p = fileio.expand(path)
    if not fileio.is_remote(p):
        existing = p
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        try:
            if not os.path.isdir(existing):
                raise NotADirectoryError(f"{existing} is a file, not a folder")
            if existing != p:
                if not os.access(existing, os.W_OK | os.X_OK):
                    raise PermissionError(f"{existing} is not writable")
                return p
            fd, probe = tempfile.mkstemp(dir=p, prefix=".cxrjax-write-probe-")
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise StorageError(f"cannot write to {p}: {e.strerror or e}") from None
        return p
    bucket = _bucket(p)
    key = posixpath.join(fileio.split_bucket(p)[1], f".cxrjax-write-probe-{uuid.uuid4().hex}")
    blob = bucket.blob(key)
    try:
        blob.upload_from_string(b"", timeout=CHECK_TIMEOUT_S, retry=None)
        blob.delete(timeout=CHECK_TIMEOUT_S, retry=None)
    except Exception as e:  # noqa: BLE001 - every failure becomes the one line
        raise StorageError(_gcs_reason(e, p, "cannot write to")) from None
    return p


def check_readable(path: str | os.PathLike) -> str:
    """Raises StorageError (one line) unless ``path`` exists and can be read; returns it."""
    p = fileio.expand(path)
    if not fileio.is_remote(p):
        if not os.path.exists(p):
            raise StorageError(f"no such file or folder: {p}")
        return p
    check_bucket(p)
    try:
        found = fileio.exists(p)
    except Exception as e:  # noqa: BLE001
        raise StorageError(_gcs_reason(e, p, "cannot read")) from None
    if not found:
        raise StorageError(f"no such file or folder: {p}")
    return p


def check_bucket(path: str | os.PathLike) -> None:
    """Raises StorageError (one line) unless a gs:// path's bucket exists and can be reached
    (nothing to check for a local path): before a library that retries for minutes reads it."""
    p = fileio.expand(path)
    if fileio.is_remote(p):
        _bucket(p)


def _bucket(path: str) -> Any:
    """The bucket of a gs:// path, looked up once (a wrong name or endpoint fails here)."""
    from google.cloud import storage

    try:
        bucket = storage.Client().bucket(fileio.split_bucket(path)[0])
        bucket.reload(timeout=CHECK_TIMEOUT_S, retry=None)
    except Exception as e:  # noqa: BLE001 - every failure becomes the one line
        raise StorageError(_gcs_reason(e, path, "cannot use")) from None
    return bucket


def _gcs_reason(e: Exception, path: str, doing: str) -> str:
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    bucket = f"gs://{fileio.split_bucket(path)[0]}"
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    if isinstance(e, api.NotFound):
        return f"{doing} {path}: bucket {bucket} does not exist (or these credentials cannot " \
               f"see it)"
    if isinstance(e, api.Forbidden | api.Unauthorized):
        return f"{doing} {path}: permission denied on {bucket} ({e.code})"
    if isinstance(e, auth.DefaultCredentialsError):
        return f"{doing} {path}: no Google Cloud credentials (on a VM use its service " \
               f"account; elsewhere run `gcloud auth application-default login`)"
    if _is_connection_error(e):
        return f"{doing} {path}: cannot reach Cloud Storage at {endpoint} " \
               f"({type(e).__name__})"
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{doing} {path}: {type(e).__name__}: {first_line}"


def _is_connection_error(e: Exception) -> bool:
    import requests

    return isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | ConnectionError | TimeoutError)
