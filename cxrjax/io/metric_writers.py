"""Where training metrics go: a JSONL log, TensorBoard event files (no TensorFlow), a progress bar.

Only process 0 writes, so a multi-host run leaves one log.

In a gs:// workdir, metrics.jsonl is uploaded whole on every write (a bucket object cannot
grow; the log is a few hundred KB at most), so a kill loses no line. TensorBoard's event files
are written to a local temporary folder and uploaded at most every ``TB_UPLOAD_EVERY_S`` and on
close: tensorboardX's own gs:// writer re-uploads on every flush and, with the server gone,
can hang the interpreter's exit.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from typing import Any

import jax
from tqdm import tqdm

from cxrjax.io import fileio, run_layout

TB_UPLOAD_EVERY_S = 30.0


class MetricWriter:
    """Appends ``{"step", "stage", name: value, ...}`` lines to WORKDIR/metrics.jsonl and TB."""

    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            path = run_layout.path(workdir, run_layout.METRICS_LOG)
            self._jsonl = fileio.open(path, "a")
            if self._jsonl.tell() and not _ends_with_newline(path):
                self._jsonl.write("\n")  # a line cut short by a kill stays on its own line
            from tensorboardX import SummaryWriter
            tb_dir = run_layout.path(workdir, run_layout.TENSORBOARD)
            # A bucket's event files: written here, uploaded by _upload_tensorboard.
            self._tb_remote = tb_dir if fileio.is_remote(tb_dir) else None
            self._tb_local = (tempfile.mkdtemp(prefix="cxrjax-tensorboard-")
                              if self._tb_remote else tb_dir)
            self._tb_uploaded = time.monotonic()
            # A unique name: two writers in one second would otherwise upload the same object.
            self._tb = SummaryWriter(self._tb_local, filename_suffix=(
                f".{uuid.uuid4().hex[:8]}" if self._tb_remote else ""))

    def write(self, step: int, values: dict[str, float], stage: str = "") -> None:
        if not self._active:
            return
        self._jsonl.write(json.dumps({"step": int(step), "stage": stage, **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(f"{stage}/{name}" if stage else name, value, int(step))
        self._tb.flush()
        if self._tb_remote and time.monotonic() - self._tb_uploaded > TB_UPLOAD_EVERY_S:
            self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        for name in os.listdir(self._tb_local):
            fileio.copy(os.path.join(self._tb_local, name), fileio.join(self._tb_remote, name))
        self._tb_uploaded = time.monotonic()

    def close(self) -> None:
        if self._active and not self._jsonl.closed:
            self._jsonl.close()
            self._tb.close()
            if self._tb_remote:
                self._upload_tensorboard()
                shutil.rmtree(self._tb_local, ignore_errors=True)


def _ends_with_newline(path: str) -> bool:
    with fileio.open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def progress(**kwargs: Any) -> tqdm:
    """A per-epoch progress bar on process 0 (silent elsewhere)."""
    return tqdm(unit="step", dynamic_ncols=True, file=sys.stderr, leave=True,
                disable=jax.process_index() != 0, **kwargs)


def read_metrics(workdir: str) -> list[dict]:
    """The JSONL log as a list of dicts; a line cut short by a kill is skipped with a warning."""
    path = run_layout.path(workdir, run_layout.METRICS_LOG)
    if not fileio.exists(path):
        return []
    records = []
    with fileio.open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path} line {line_no}: not JSON (cut short?), skipped",
                              stacklevel=2)
    return records
