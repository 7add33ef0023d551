"""cxrjax.io.storage_checks: a path that cannot be used is one line, before any work starts."""

import time

import pytest

from cxrjax.io import fileio, storage_checks


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    """A folder that is either on the local disk or in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_bucket") + "/root"

def test_check_writable_accepts_a_writable_folder(root):
    assert storage_checks.check_writable(root) == fileio.expand(root)


def test_check_writable_names_a_missing_bucket_in_one_line(gcs_server):
    with pytest.raises(fileio.StorageError, match="bucket gs://no-such-bucket does not exist"):
        storage_checks.check_writable("gs://no-such-bucket/run")


def test_check_writable_names_an_unreachable_server_in_one_line(gcs_server, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    start = time.monotonic()
    with pytest.raises(fileio.StorageError, match=f"cannot reach Cloud Storage at {closed}") as e:
        storage_checks.check_writable("gs://bucket/run")
    assert "\n" not in str(e.value) and time.monotonic() - start < 10


def test_check_writable_names_a_local_path_that_cannot_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(fileio.StorageError, match="cannot write to .*file/run"):
        storage_checks.check_writable(tmp_path / "file" / "run")


def test_check_readable_names_a_missing_path(root):
    fileio.makedirs(root)
    fileio.write_text(fileio.join(root, "here"), "x")
    assert storage_checks.check_readable(fileio.join(root, "here"))
    with pytest.raises(fileio.StorageError, match="no such file or folder: .*root/gone"):
        storage_checks.check_readable(fileio.join(root, "gone"))
