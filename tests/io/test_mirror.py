"""cxrjax.io.mirror: verified, resumable folder copies between a bucket and a local disk."""

import os

import pytest

from cxrjax.io import fileio, mirror


def _tree(folder, files):
    for name, data in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def test_local_cache_copies_a_bucket_folder_once_verified(gcs_bucket, tmp_path):
    _tree(tmp_path / "prepared", {"shard-0": b"a" * 1000, "info/meta.json": b"{}"})
    assert mirror.copy_tree(tmp_path / "prepared", f"{gcs_bucket}/data") == 2
    assert mirror.copy_tree(tmp_path / "prepared", f"{gcs_bucket}/data") == 0  # unchanged

    cache = mirror.local_cache(f"{gcs_bucket}/data", tmp_path / "cache")
    assert cache == str(tmp_path / "cache")
    with open(tmp_path / "cache" / "shard-0", "rb") as f:
        assert f.read() == b"a" * 1000
    assert mirror.copy_tree(f"{gcs_bucket}/data", cache) == 0  # a rerun reads nothing again


def test_local_cache_redoes_a_copy_cut_short_and_a_changed_source(gcs_bucket, tmp_path):
    _tree(tmp_path / "prepared", {"shard-0": b"a" * 1000, "shard-1": b"b" * 10})
    mirror.copy_tree(tmp_path / "prepared", f"{gcs_bucket}/data")
    cache = mirror.local_cache(f"{gcs_bucket}/data", tmp_path / "cache")
    with open(os.path.join(cache, "shard-0"), "r+b") as f:
        f.truncate(10)  # a copy cut short by a kill
    fileio.write_bytes(f"{gcs_bucket}/data/shard-1", b"c" * 10)  # the source changed
    assert mirror.copy_tree(f"{gcs_bucket}/data", cache) == 2
    assert fileio.read_bytes(os.path.join(cache, "shard-0")) == b"a" * 1000
    assert fileio.read_bytes(os.path.join(cache, "shard-1")) == b"c" * 10


def test_local_cache_of_a_local_folder_is_that_folder(tmp_path):
    assert mirror.local_cache(tmp_path, tmp_path / "cache") == str(tmp_path)
    assert not os.path.exists(tmp_path / "cache")


def test_copy_tree_refuses_an_empty_source_in_one_line(gcs_bucket, tmp_path):
    with pytest.raises(fileio.StorageError, match="nothing to copy: no files under"):
        mirror.copy_tree(f"{gcs_bucket}/nothing", tmp_path / "cache")


def test_local_file_fetches_a_bucket_file_once_and_again_when_it_changes(
        gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "cache"))
    fileio.write_bytes(f"{gcs_bucket}/weights/r18.npz", b"v1")
    local = mirror.local_file(f"{gcs_bucket}/weights/r18.npz")
    assert local == str(tmp_path / "cache" / "gs" / gcs_bucket[5:] / "weights" / "r18.npz")
    assert fileio.read_bytes(local) == b"v1"
    mtime = os.path.getmtime(local)
    assert mirror.local_file(f"{gcs_bucket}/weights/r18.npz") == local  # kept, not fetched
    assert os.path.getmtime(local) == mtime
    fileio.write_bytes(f"{gcs_bucket}/weights/r18.npz", b"v2")
    assert fileio.read_bytes(mirror.local_file(f"{gcs_bucket}/weights/r18.npz")) == b"v2"
    assert mirror.local_file(tmp_path / "here.npz") == str(tmp_path / "here.npz")
    with pytest.raises(FileNotFoundError):
        mirror.local_file(f"{gcs_bucket}/weights/missing.npz")


def test_local_files_copies_only_the_matching_files_of_a_folder(gcs_bucket, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv(mirror.CACHE_ENV, str(tmp_path / "cache"))
    for name in ("Data_Entry_2017_v2020.csv", "test_list.txt", "images/a.png"):
        fileio.write_bytes(f"{gcs_bucket}/nih/{name}", b"x")
    local = mirror.local_files(f"{gcs_bucket}/nih", ("Data_Entry_2017*.csv*", "*_list.txt*"))
    assert sorted(os.listdir(local)) == ["Data_Entry_2017_v2020.csv", "test_list.txt"]


def test_host_lock_makes_processes_take_turns(tmp_path):
    import subprocess
    import sys

    code = ("import sys, time; from cxrjax.io import mirror\n"
            "with mirror.host_lock(sys.argv[1]):\n"
            "    open(sys.argv[2], 'a').write('in '); time.sleep(0.5)\n"
            "    open(sys.argv[2], 'a').write('out ')\n")
    args = [sys.executable, "-c", code, str(tmp_path / "data"), str(tmp_path / "log")]
    procs = [subprocess.Popen(args) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert (tmp_path / "log").read_text() == "in out in out "
