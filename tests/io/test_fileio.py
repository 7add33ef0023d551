"""cxrjax.io.fileio on a local disk and on a real GCS API server (gcp-storage-emulator)."""

import os
import subprocess
import sys
import time

import pytest

from cxrjax.io import fileio


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    """A folder that is either on the local disk or in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_bucket") + "/root"


# ----------------------------------------------------------------------- names ---

def test_expand_makes_local_paths_absolute_and_leaves_gs_paths_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fileio.expand("~/run") == str(tmp_path / "run")
    assert fileio.expand("gs://bucket/run/") == "gs://bucket/run"
    assert fileio.is_remote("gs://bucket/x") and not fileio.is_remote("/gs/x")
    assert fileio.join("gs://bucket/run", "eval", "a.csv") == "gs://bucket/run/eval/a.csv"


@pytest.mark.parametrize("bad, says", [("gs:/bucket/run", "lost a slash"),
                                       ("s3://bucket/run", "only local paths and gs://"),
                                       ("gs:///run", "no bucket name")])
def test_expand_rejects_a_malformed_or_foreign_url_in_one_line(bad, says):
    with pytest.raises(fileio.StorageError, match=says) as e:
        fileio.expand(bad)
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------- contents ---

def test_written_text_and_bytes_read_back(root):
    fileio.makedirs(fileio.join(root, "sub"))
    fileio.write_text(fileio.join(root, "sub", "a.txt"), "héllo\n")
    fileio.write_bytes(fileio.join(root, "b.bin"), b"\x00\x01")
    assert fileio.read_text(fileio.join(root, "sub", "a.txt")) == "héllo\n"
    assert fileio.read_bytes(fileio.join(root, "b.bin")) == b"\x00\x01"
    assert fileio.size(fileio.join(root, "b.bin")) == 2
    assert fileio.exists(fileio.join(root, "sub")) and fileio.isdir(fileio.join(root, "sub"))
    assert not fileio.exists(fileio.join(root, "nothing.txt"))


def test_a_write_that_fails_midway_leaves_the_old_content(root):
    path = fileio.join(root, "report.md")
    fileio.makedirs(root)
    fileio.write_text(path, "old")
    with pytest.raises(RuntimeError), fileio.open(path, "w") as f:
        f.write("new, half")
        raise RuntimeError("killed while writing")
    assert fileio.read_text(path) == "old"
    assert fileio.listdir(root) == ["report.md"]  # no temporary file left behind


_FULL_DISK_WRITE = """
import resource, signal, sys
from cxrjax.io import fileio
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    with fileio.open(sys.argv[1], "wb") as f:  # buffered: the failing flush comes at close
        f.write(b"x" * (1 << 18))
except OSError as e:
    print(e)
"""


def test_a_write_past_a_full_disk_names_the_file_and_leaves_the_old_content(tmp_path):
    path = tmp_path / "reliability.png"
    path.write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", _FULL_DISK_WRITE, str(path)], text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.stdout.strip() == f"[Errno 27] File too large: '{path}'", done.stderr[-2000:]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["reliability.png"]  # no temporary file left behind


def test_a_local_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    fileio.write_text(tmp_path / "report.md", "x")
    assert os.stat(tmp_path / "report.md").st_mode & 0o777 == 0o666 & ~umask


def test_a_new_file_appears_only_once_it_is_closed(root):
    path = fileio.join(root, "x.json")
    fileio.makedirs(root)
    f = fileio.open(path, "w")
    f.write("{}")
    f.flush()
    assert not fileio.exists(path)
    f.close()
    assert fileio.read_text(path) == "{}"


def test_append_keeps_earlier_lines_and_flushed_lines_are_visible(root):
    path = fileio.join(root, "metrics.jsonl")
    fileio.makedirs(root)
    fileio.write_text(path, "1\n")
    f = fileio.open(path, "a")
    f.write("2\n")
    f.flush()
    assert fileio.read_text(path) == "1\n2\n"  # what a kill -9 now would leave
    f.write("3\n")
    f.close()
    assert fileio.read_text(path) == "1\n2\n3\n"


# ------------------------------------------------------------------- file tree ---

def test_listdir_and_glob_are_sorted_and_a_missing_folder_raises(root):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        fileio.makedirs(os.path.dirname(fileio.join(root, name)))
        fileio.write_text(fileio.join(root, name), name)
    assert fileio.listdir(root) == ["a.txt", "b.txt", "sub"]
    assert fileio.glob(fileio.join(root, "*.txt")) == [fileio.join(root, "a.txt"),
                                                      fileio.join(root, "b.txt")]
    with pytest.raises(FileNotFoundError):
        fileio.listdir(fileio.join(root, "missing"))


def test_rename_moves_a_file_and_a_folder(root):
    fileio.makedirs(fileio.join(root, "dir"))
    fileio.write_text(fileio.join(root, "f.txt"), "f")
    fileio.write_text(fileio.join(root, "dir", "g.txt"), "g")
    start = time.monotonic()
    fileio.rename(fileio.join(root, "f.txt"), fileio.join(root, "f2.txt"))
    fileio.rename(fileio.join(root, "dir"), fileio.join(root, "dir.unreadable"))
    assert time.monotonic() - start < 10  # no minute of retries on GCS's moveTo
    assert fileio.listdir(root) == ["dir.unreadable", "f2.txt"]
    assert fileio.read_text(fileio.join(root, "dir.unreadable", "g.txt")) == "g"


def test_rmtree_removes_everything_and_tolerates_a_missing_folder(root):
    fileio.makedirs(fileio.join(root, "ckpt", "1"))
    fileio.write_text(fileio.join(root, "ckpt", "1", "state"), "s")
    fileio.rmtree(fileio.join(root, "ckpt"))
    assert not fileio.exists(fileio.join(root, "ckpt"))
    fileio.rmtree(fileio.join(root, "ckpt"))
    with pytest.raises(FileNotFoundError):
        fileio.rmtree(fileio.join(root, "ckpt"), missing_ok=False)


def test_a_listing_shows_files_another_process_wrote_since(gcs_bucket):
    fileio.write_text(f"{gcs_bucket}/run/a", "a")
    assert fileio.listdir(f"{gcs_bucket}/run") == ["a"]
    subprocess.run([sys.executable, "-c", "from cxrjax.io import fileio; "
                    f"fileio.write_text('{gcs_bucket}/run/b', 'b')"], check=True)
    assert fileio.listdir(f"{gcs_bucket}/run") == ["a", "b"]
