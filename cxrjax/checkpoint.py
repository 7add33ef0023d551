"""Orbax checkpoints of a training stage: the latest N plus the best by validation mean AUC.

Each step directory holds the train state (params, optimizer, batch statistics, step, rng),
the data iterator's state (so a resumed run sees the same batches) and a small JSON record.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

VAL_METRIC = "val_mean_auc"


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be written or read."""


def _val_metric(metrics: dict) -> float:
    return metrics[VAL_METRIC]


def open_manager(directory: str, keep: int, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    """A manager that keeps the latest ``keep`` steps and the best one by validation mean AUC."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               best_fn=_val_metric, best_mode="max")
        return ocp.CheckpointManager(directory, options=options,
                                     item_names=("state", "data", "meta"))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {e}") from None
    if not os.access(directory, os.W_OK):
        raise CheckpointError(f"checkpoint directory {directory} is not writable")
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(keep),
        pp.BestN(get_metric_fn=_val_metric, n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes orbax record the metrics (BestN reads them) and answer best_step().
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           enable_async_checkpointing=True,
                                           best_fn=_val_metric, best_mode="max")
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any,
         meta: dict, val_mean_auc: float | None = None) -> None:
    """Saves asynchronously; the write becomes visible only once complete (orbax renames)."""
    metrics = None if val_mean_auc is None else {VAL_METRIC: float(val_mean_auc)}
    try:
        manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_jsonable(data_state)),
            meta=ocp.args.JsonSave(meta)))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {step} in {manager.directory}: {e}") \
            from None


def restore(manager: ocp.CheckpointManager, state_template: Any, step: int | None = None,
            ) -> tuple[int, Any, Any, dict] | None:
    """Restores ``step`` (default: the newest readable one, falling back past corrupt ones).

    Returns (step, state, data_state, meta), or None when the directory holds no checkpoint.
    """
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    for s in steps:
        try:
            out = manager.restore(s, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_template),
                data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: say so, fall back
            if step is not None:
                raise CheckpointError(f"checkpoint {s} in {manager.directory} is unreadable: "
                                      f"{type(e).__name__}: {e}") from None
            aside = _set_aside(manager, s)
            logging.getLogger("cxrjax").warning(
                "checkpoint %d in %s is unreadable (%s: %s); kept as %s, trying an older one",
                s, manager.directory, type(e).__name__, str(e)[:200], aside)
            continue
        return s, out["state"], _unjsonable(out["data"]), dict(out["meta"])
    return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Renames an unreadable step out of the manager's sight (kept for inspection)."""
    src = os.path.join(os.fspath(manager.directory), str(step))
    dst = f"{src}.unreadable"
    n = 1
    while os.path.exists(dst):
        n += 1
        dst = f"{src}.unreadable{n}"
    os.rename(src, dst)
    manager.reload()
    return dst


def _jsonable(data_state: Any) -> dict:
    if isinstance(data_state, bytes):
        return {"bytes": data_state.decode()}
    return {"state": data_state}


def _unjsonable(saved: Any) -> Any:
    saved = dict(saved)
    if "bytes" in saved:
        return saved["bytes"].encode()
    return json.loads(json.dumps(saved["state"]))
