"""Where a run's files lie in its folder: every file name of a workdir, written once.

    W/config.json  command.json  run.lock  metrics.jsonl  tensorboard/  report.md
    W/training_curves.png  model_card.md  checkpoints/stage<i>_<name>/<step>/
    W/eval/test_predictions.csv  test_predictions_<head>.csv  test_metrics.json
    W/eval/thresholds.json  roc_curves.png  reliability.png  localization.{json,md,png}
    W/eval/subgroups.{json,md,png}
    W/eval/recalibration_<dataset label>.{json,md}  recalibration_<dataset label>_thresholds.json
"""

from __future__ import annotations

from cxrjax.io import fileio

CONFIG = "config.json"  # the config as run, every override included
COMMAND = "command.json"  # the config file and overrides of the latest command
LOCK = "run.lock"  # who writes in the folder now
METRICS_LOG = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
REPORT = "report.md"
TRAINING_CURVES = "training_curves.png"
MODEL_CARD = "model_card.md"
# In W/eval:
TEST_PREDICTIONS = "test_predictions.csv"  # the fused prediction; per head: head_predictions()
TEST_METRICS = "test_metrics.json"
THRESHOLDS = "thresholds.json"
ROC_CURVES = "roc_curves.png"
RELIABILITY = "reliability.png"
LOCALIZATION = "localization"  # .json, .md and .png
SUBGROUPS = "subgroups"  # .json, .md and .png
RECALIBRATION = "recalibration"  # per external set: recalibration_file(label, kind)

# What a run writes at the top of its folder (a folder holding any of them holds a run).
RUN_FILES = (CONFIG, COMMAND, CHECKPOINTS, METRICS_LOG, TENSORBOARD, EVAL, REPORT,
             TRAINING_CURVES, MODEL_CARD)


def path(workdir: str, *names: str) -> str:
    """``workdir/names...`` (local or ``gs://``)."""
    return fileio.join(workdir, *names)


def eval_path(workdir: str, name: str) -> str:
    """A file of the run's test results: ``workdir/eval/name``."""
    return fileio.join(workdir, EVAL, name)


def eval_link(name: str) -> str:
    """How report.md (at the top of the folder) links to a file in eval/."""
    return f"{EVAL}/{name}"


def head_predictions(head: str) -> str:
    """The test predictions file of one head (``test_predictions_msml.csv``)."""
    return TEST_PREDICTIONS.replace(".csv", f"_{head}.csv")


def recalibration_file(label: str, kind: str) -> str:
    """A file of the recalibration on external set ``label`` (kind ``json``, ``md`` or
    ``thresholds``): ``recalibration_<label>.json``, ``.md``, ``_thresholds.json``."""
    suffix = {"json": ".json", "md": ".md", "thresholds": "_thresholds.json"}[kind]
    return f"{RECALIBRATION}_{label}{suffix}"


def stage_dir(workdir: str, index: int, stage_name: str) -> str:
    """The checkpoints of stage ``index``: ``workdir/checkpoints/stage<index>_<name>``."""
    return fileio.join(workdir, CHECKPOINTS, f"stage{index}_{stage_name}")
