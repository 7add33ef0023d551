"""One writer per run folder: a second command on a live run is refused in one line, a lock
whose holder is gone is taken over, on a local disk and in a bucket (the emulator)."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import cli_env, tiny_config

from cxrjax.evaluation import evaluator
from cxrjax.io import fileio
from cxrjax.runfolder import lock as run_lock
from cxrjax.runfolder import ownership as workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IN_USE = re.compile(r"^(\S+) is in use by pid (\d+) on (\S+) since \d{4}-\d\d-\d\d "
                    r"\d\d:\d\d:\d\d UTC \(heartbeat (\d+)s ago\); ")


@pytest.fixture
def live_pid():
    """A live process on this host that is not the test's own."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: str, **fields) -> None:
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now - 60,
            "heartbeat": now, "token": "someone-else", **fields}
    fileio.makedirs(folder)
    fileio.write_text(fileio.join(folder, run_lock.LOCK_FILE), json.dumps(info))


def _read_lock(folder: str) -> dict:
    return json.loads(fileio.read_text(fileio.join(folder, run_lock.LOCK_FILE)))


# ---------------------------------------------------------------------------- local disk ---


def test_the_lock_names_its_holder_beats_and_goes_with_its_folder(tmp_path):
    folder = str(tmp_path / "run")
    lock = run_lock.acquire(folder, heartbeat_s=0.05)
    info = _read_lock(folder)
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert info["started"] <= info["heartbeat"] <= time.time()
    time.sleep(0.5)
    assert _read_lock(folder)["heartbeat"] > info["heartbeat"]  # the thread refreshed it
    assert run_lock.acquire(folder) is lock  # this process already holds it
    lock.release()
    assert os.path.exists(os.path.join(folder, run_lock.LOCK_FILE))  # one acquire left
    lock.release()
    assert not os.path.exists(folder)  # the lock made the folder; nothing else came into it
    assert not [n for n in os.listdir(tmp_path)]  # no temporary files left by the beats


def test_a_live_holder_is_refused_in_one_line_and_its_lock_is_left(tmp_path, live_pid):
    folder = str(tmp_path)
    _write_lock(folder, pid=live_pid)
    with pytest.raises(run_lock.LockedError) as caught:
        run_lock.acquire(folder)
    message = str(caught.value)
    match = IN_USE.match(message)
    assert match and match[1] == folder and int(match[2]) == live_pid, message
    assert match[3] == socket.gethostname() and "\n" not in message
    assert _read_lock(folder)["pid"] == live_pid


@pytest.mark.parametrize("fields,reason", [
    ({"pid": None}, r"pid \d+ is not running on "),  # filled with a dead pid below
    ({"host": "another-host", "heartbeat": time.time() - 3600}, r"no heartbeat for \d+s"),
])
def test_a_lock_whose_holder_is_gone_is_taken_over_with_a_warning(tmp_path, caplog, fields,
                                                                  reason):
    if fields.get("pid", 0) is None:
        fields = {"pid": _dead_pid()}
    _write_lock(str(tmp_path), **fields)
    with caplog.at_level(logging.WARNING, logger="cxrjax"):
        lock = run_lock.acquire(str(tmp_path))
    assert re.search(rf"taking over the lock of {re.escape(str(tmp_path))} from pid \d+ on "
                     rf"\S+: {reason}", caplog.text), caplog.text
    assert _read_lock(str(tmp_path))["token"] == lock.info["token"]
    lock.release()
    assert not os.path.exists(tmp_path / run_lock.LOCK_FILE)


def test_another_host_with_a_recent_heartbeat_is_live(tmp_path):
    _write_lock(str(tmp_path), host="another-host", pid=1, heartbeat=time.time() - 30)
    with pytest.raises(run_lock.LockedError, match=r"in use by pid 1 on another-host since .* "
                                                   r"\(heartbeat 30s ago\)"):
        run_lock.acquire(str(tmp_path))


def test_a_taken_over_holder_stops_beating_and_never_deletes_the_new_lock(tmp_path, caplog):
    lock = run_lock.acquire(str(tmp_path), heartbeat_s=0.05)
    _write_lock(str(tmp_path), host="another-host", token="the-new-holder")
    with caplog.at_level(logging.ERROR, logger="cxrjax"):
        time.sleep(0.5)
    assert "lock was taken over by another command" in caplog.text
    lock.release()
    assert _read_lock(str(tmp_path))["token"] == "the-new-holder"


def test_main_refuses_a_second_command_in_one_line_exit_2_untouched(tmp_path, live_pid):
    folder = tmp_path / "run"
    _write_lock(str(folder), pid=live_pid)
    proc = subprocess.run(
        [sys.executable, "-m", "cxrjax.main", "--config", os.path.join(ROOT, "configs/demo.py"),
         "--workdir", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=cli_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and IN_USE.match(lines[0].removeprefix("error: ")), proc.stderr
    assert f"pid {live_pid} on {socket.gethostname()}" in lines[0]
    assert sorted(os.listdir(folder)) == [run_lock.LOCK_FILE]  # nothing written


def test_a_claim_and_an_evaluation_that_writes_are_refused_on_a_locked_run(tmp_path, live_pid):
    config = tiny_config("r18")
    workdir.claim(str(tmp_path), config).unlock()
    before = sorted(os.listdir(tmp_path))
    _write_lock(str(tmp_path), pid=live_pid)
    with pytest.raises(run_lock.LockedError, match=rf"pid {live_pid}"):
        workdir.claim(str(tmp_path), config)
    with pytest.raises(run_lock.LockedError, match=rf"pid {live_pid}"):
        evaluator.evaluate_run(str(tmp_path), config=config, write=True)
    with pytest.raises(run_lock.LockedError, match=rf"pid {live_pid}"):
        workdir.move_aside(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(before + [run_lock.LOCK_FILE])


def test_a_claim_removes_the_temporaries_a_killed_write_left(tmp_path):
    workdir.claim(str(tmp_path), tiny_config("r18")).unlock()
    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval" / ".test_metrics.json.0123abcd.tmp").write_text("{\"cut")
    (tmp_path / "eval" / "test_metrics.json").write_text("{}")
    claim = workdir.claim(str(tmp_path), tiny_config("r18"))
    claim.unlock()
    assert os.listdir(tmp_path / "eval") == ["test_metrics.json"]


# -------------------------------------------------------------------------------- bucket ---


def test_in_a_bucket_a_live_lock_is_refused_a_stale_one_taken_over(gcs_bucket, caplog):
    folder = f"{gcs_bucket}/run"
    lock = run_lock.acquire(folder)
    assert _read_lock(folder)["pid"] == os.getpid()
    # Another host's command, its lock object created only if absent: refused.
    child = subprocess.run(
        [sys.executable, "-c", "import sys, socket; socket.gethostname = lambda: 'other'; "
         "from cxrjax.runfolder import lock as run_lock\ntry: run_lock.acquire(sys.argv[1])\n"
         "except run_lock.LockedError as e: print(e); sys.exit(2)", folder],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert child.returncode == 2, child.stderr[-2000:]
    match = IN_USE.match(child.stdout)
    assert match and match[1] == folder and int(match[2]) == os.getpid(), child.stdout
    lock.release()
    assert not fileio.exists(fileio.join(folder, run_lock.LOCK_FILE))

    _write_lock(folder, host="another-host", pid=1, heartbeat=time.time() - 3600)
    with caplog.at_level(logging.WARNING, logger="cxrjax"):
        lock = run_lock.acquire(folder)
    assert "from pid 1 on another-host: no heartbeat for" in caplog.text
    assert _read_lock(folder)["token"] == lock.info["token"]
    assert lock.heartbeat()
    lock.release()
    assert not fileio.exists(fileio.join(folder, run_lock.LOCK_FILE))


def test_in_a_bucket_a_taken_over_lock_is_never_rewritten_nor_deleted(gcs_bucket):
    folder = f"{gcs_bucket}/run"
    lock = run_lock.acquire(folder, heartbeat_s=3600)
    _write_lock(folder, host="another-host", token="the-new-holder")  # a new generation
    assert not lock.heartbeat()
    lock.release()
    assert _read_lock(folder)["token"] == "the-new-holder"


def test_localize_never_writes_into_a_live_runs_folder(tmp_path, live_pid, capsys):
    from cxrjax import localize

    _write_lock(str(tmp_path), pid=live_pid)
    assert localize.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert IN_USE.match(err.removeprefix("error: ")) and "not writing localization files" in err
    assert os.listdir(tmp_path) == [run_lock.LOCK_FILE]


# ------------------------------------------------------------------ --restart in a bucket ---


_MOVE_ASIDE = """
import sys
from cxrjax.runfolder import ownership as workdir
print(workdir.move_aside(sys.argv[1]), flush=True)
"""


def _bucket_run(folder: str, files: int) -> dict[str, str]:
    """A run's folder in a bucket (its config recorded, ``files`` checkpoint-like files);
    returns every file's checksum by its path under the folder."""
    workdir.claim(folder, tiny_config("r18")).unlock()
    for i in range(files):
        fileio.write_text(f"{folder}/checkpoints/stage0_global/12/part{i:03d}", f"part {i}\n")
    return {rel: fileio.checksum(f"{folder}/{rel}") for rel in fileio.walk_files(folder)}


def _move_begun(bucket: str) -> bool:
    """Whether a file has reached a run.old-* folder (a bucket lists a folder only once it
    holds one): one listing, so the poll does not starve the emulator serving the move."""
    return any(name.startswith("run.old-") for name in fileio.listdir(bucket))


def _moved(bucket: str) -> dict[str, set[str]]:
    """Every checksum found under the bucket's run.old-* folders, by file path."""
    out: dict[str, set[str]] = {}
    for name in fileio.listdir(bucket):
        if name.startswith("run.old-"):
            for rel in fileio.walk_files(f"{bucket}/{name}"):
                out.setdefault(rel, set()).add(fileio.checksum(f"{bucket}/{name}/{rel}"))
    return out


def test_restart_in_a_bucket_moves_the_run_aside_whole_even_after_a_kill_in_the_move(
        gcs_bucket, caplog):
    folder = f"{gcs_bucket}/run"
    original = _bucket_run(folder, files=30)  # enough to kill in the move; each adds emulator calls
    child = subprocess.Popen([sys.executable, "-c", _MOVE_ASIDE, folder],
                             env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not _move_begun(gcs_bucket) and time.monotonic() < deadline:
        assert child.poll() is None, child.stdout.read()[-3000:]
        time.sleep(0.01)
    child.kill()
    child.communicate(timeout=60)
    left = {rel: fileio.checksum(f"{folder}/{rel}") for rel in fileio.walk_files(folder)}
    moved = _moved(gcs_bucket)
    assert moved and any(rel in left for rel in original), "the kill did not land in the move"
    for rel, crc in original.items():  # nothing lost: each file still there, or moved whole
        assert left.get(rel) == crc or crc in moved.get(rel, set()), rel

    with caplog.at_level(logging.WARNING, logger="cxrjax"):
        target = workdir.move_aside(folder)  # the same --restart again
    assert target and target.startswith(f"{folder}.old-")
    assert fileio.walk_files(folder) == {}  # the workdir is free for the new run
    moved = _moved(gcs_bucket)
    assert all(crc in moved.get(rel, set()) for rel, crc in original.items())
    assert run_lock.LOCK_FILE not in fileio.walk_files(target)
    if run_lock.LOCK_FILE in left:  # the killed command's lock: taken over, not in the way
        assert "taking over the lock of" in caplog.text
