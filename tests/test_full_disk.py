"""A full disk during a checkpoint write: one line (what failed, the free space, the last
complete checkpoint), the earlier checkpoints intact, and a rerun with space resumes. The disk
is made "full" with RLIMIT_FSIZE in a subprocess (writes past the limit fail with EFBIG)."""

import hashlib
import os
import re
import resource
import signal
import subprocess
import sys

import numpy as np
from helpers import SECTIONS_OFF_FLAGS, cli_env

from cxrjax.io import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = re.compile(r"^error: cannot write checkpoint (\d+) in (\S+): a file grew past the allowed "
                  r"size \(EFBIG[^)]*\); [\d.]+ [KMGT]?B free there; the last complete "
                  r"checkpoint is step (\d+), intact; free some space and run the same command "
                  r"again to resume$")


def _file_size_limit(limit: int):
    """A preexec_fn: files may not grow past ``limit`` bytes; SIGXFSZ ignored, so a write past
    it fails with EFBIG instead of killing the process."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return apply


def _digests(folder) -> dict[str, str]:
    out = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


_SAVE = """
import sys
import numpy as np
from cxrjax.io import checkpoint
manager = checkpoint.open_manager(sys.argv[1], keep=3)
state = {"w": np.random.default_rng(0).normal(size=(300, 1000)).astype(np.float32)}
try:
    checkpoint.save(manager, int(sys.argv[2]), state, {}, {})
    checkpoint.wait(manager)
except checkpoint.CheckpointError as e:
    print(f"error: {e}")
    sys.exit(2)
"""


def _save(directory: str, step: int, limit: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SAVE, directory, str(step)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(limit) if limit else None,
                          env=cli_env())


def test_a_checkpoint_past_a_file_size_limit_is_one_line_and_the_previous_one_stays(tmp_path):
    directory = str(tmp_path / "ckpt")
    assert _save(directory, 10).returncode == 0
    before = _digests(os.path.join(directory, "10"))
    failed = _save(directory, 20, limit=200_000)  # 1.2 MB of random floats: past the limit
    assert failed.returncode == 2, failed.stderr[-3000:]
    match = FULL.match(failed.stdout.strip())
    assert match, failed.stdout
    assert (match[1], match[2], match[3]) == ("20", directory, "10")
    assert _digests(os.path.join(directory, "10")) == before
    assert _save(directory, 20).returncode == 0  # with space: the same step, written whole
    manager = checkpoint.open_manager(directory, keep=3, read_only=True)
    assert manager.all_steps() == [10, 20]
    state = {"w": np.zeros((300, 1000), np.float32)}
    assert checkpoint.restore(manager, state)[0] == 20


def test_full_disk_errno_reads_oserrors_and_tensorstore_messages():
    import errno

    assert checkpoint.full_disk_errno(OSError(errno.ENOSPC, "No space left on device")) == \
        errno.ENOSPC
    assert checkpoint.full_disk_errno(ValueError(
        "OUT_OF_RANGE: Failed to write 909328 bytes to file 7: File too large "
        "[os_error_code='27']")) == errno.EFBIG
    assert checkpoint.full_disk_errno(ValueError("NOT_FOUND: no such key")) is None


def _main(workdir, data_root, epochs: int, limit: int | None = None
          ) -> subprocess.CompletedProcess:
    overrides = [
        "--config.model.trunk_a=resnet_tiny", "--config.model.init=scratch",
        "--config.data.source=nih", f"--config.data.manual_dir={data_root / 'nih'}",
        f"--config.data.data_dir={data_root / 'tfds'}", "--config.data.resolution=40",
        "--config.data.crop=32", "--config.data.workers=0", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=16", "--config.train.checkpoint_every_steps=4",
        "--config.train.log_every_steps=5", "--config.train.lr=0.001",
        f"--config.train.stages[0].epochs={epochs}", "--config.eval.n_boot=10",
        *SECTIONS_OFF_FLAGS]
    return subprocess.run(
        [sys.executable, "-m", "cxrjax.main", "--config", os.path.join(ROOT, "configs/r18.py"),
         "--workdir", str(workdir), *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        preexec_fn=_file_size_limit(limit) if limit else None,
        # under the size limit, no compilation-cache writes (they too would meet it)
        env=cli_env(**({"CXRJAX_COMPILE_CACHE": "off"} if limit else {})))


def test_a_run_that_fills_the_disk_stops_in_one_line_and_resumes_with_space(tiny_data,
                                                                            tmp_path):
    run = tmp_path / "run"
    first = _main(run, tiny_data, epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    stage = run / "checkpoints" / "stage0_global"
    steps = sorted(int(n) for n in os.listdir(stage) if n.isdigit())
    before = {k: v for k, v in _digests(stage).items() if k.split("/")[0].isdigit()}

    # 24 KiB: below the _sharding and _METADATA files every state checkpoint writes (34 and
    # 53 KiB here), so the first save of the second run fails whatever the array files' split.
    full = _main(run, tiny_data, epochs=2, limit=24 << 10)
    assert full.returncode == 2, full.stderr[-3000:]
    lines = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and FULL.match(lines[0]), full.stderr[-3000:]
    # Nothing else of the failure: no writer thread's traceback, no asyncio or orbax echo.
    assert "Traceback" not in full.stderr and " ERROR " not in full.stderr, full.stderr[-3000:]
    failed, last = int(FULL.match(lines[0])[1]), int(FULL.match(lines[0])[3])
    assert last == steps[-1] and failed > last
    assert {k: v for k, v in _digests(stage).items() if k.split("/")[0].isdigit()} == before

    resumed = _main(run, tiny_data, epochs=2)  # space again: the same command resumes
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {last} of" in resumed.stderr
    assert failed in [int(n) for n in os.listdir(stage) if n.isdigit()] or \
        max(int(n) for n in os.listdir(stage) if n.isdigit()) > failed
