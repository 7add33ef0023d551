"""Where training metrics go: a JSONL log, TensorBoard event files (no TensorFlow), a progress bar.

Only process 0 writes, so a multi-host run leaves one log.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import jax
from tqdm import tqdm


class MetricWriter:
    """Appends ``{"step", "stage", name: value, ...}`` lines to WORKDIR/metrics.jsonl and TB."""

    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            path = os.path.join(workdir, "metrics.jsonl")
            self._jsonl = open(path, "a")
            if self._jsonl.tell() and not _ends_with_newline(path):
                self._jsonl.write("\n")  # a line cut short by a kill stays on its own line
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, float], stage: str = "") -> None:
        if not self._active:
            return
        self._jsonl.write(json.dumps({"step": int(step), "stage": stage, **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(f"{stage}/{name}" if stage else name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def progress(**kwargs: Any) -> tqdm:
    """A per-epoch progress bar on process 0 (silent elsewhere)."""
    return tqdm(unit="step", dynamic_ncols=True, file=sys.stderr, leave=True,
                disable=jax.process_index() != 0, **kwargs)


def read_metrics(workdir: str) -> list[dict]:
    """The JSONL log as a list of dicts; a line cut short by a kill is skipped with a warning."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path} line {line_no}: not JSON (cut short?), skipped",
                              stacklevel=2)
    return records
