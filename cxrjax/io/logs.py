"""One log format for the command-line programs (main, evaluate, predict): ``HH:MM:SS LEVEL msg``.

Our messages (the ``cxrjax`` logger) at INFO, every library's at WARNING, all through one
stderr handler, whatever absl or another library installed before. Library lines that are no
news to a user are dropped (``NOISE``).
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
_HANDLER_NAME = "cxrjax-stderr"

# Substrings of library log lines that are no news: orbax on mid-epoch checkpoints (no
# validation score) and read-only restores; TFDS on every load of our resolution-named builder
# configs, which it "prepares" from local files (nothing is downloaded).
NOISE: tuple[str, ...] = (
    "did not provide metrics", "Metadata file does not exist", "read_only=True",
    "Given directory is read only", "Using custom data configuration",
    "has no dataset_info.json", "Downloading and preparing dataset",
)


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (a test's capture, or one
    a later program installed), not the one it was created with."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def setup(level: int = logging.INFO, libraries: int = logging.WARNING) -> logging.Logger:
    """Routes every log record to one stderr handler in ``FORMAT``; returns our logger.

    Replaces absl's handler (and an earlier call's); other handlers (a test's capture) stay.
    Idempotent. ``level``: our logger's; ``libraries``: every other logger's (absl's too).
    """
    from absl import logging as absl_logging

    handler = _Stderr()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_DropNoise())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, absl's, and the plain stderr handler that absl's first log
        # call installs through logging.basicConfig() outside app.run (orbax logs at import).
        basic = type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.__stderr__)
        if old.get_name() == _HANDLER_NAME or isinstance(old, absl_logging.ABSLHandler) or basic:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(libraries)
    absl_logging.set_verbosity(absl_logging.converter.standard_to_absl(libraries))
    ours = logging.getLogger("cxrjax")
    for old in list(ours.handlers):
        ours.removeHandler(old)
    ours.setLevel(level)
    ours.propagate = True
    return ours
