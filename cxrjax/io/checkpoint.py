"""Orbax checkpoints of a training stage: the latest N plus the best by validation mean AUC.

Each step directory holds the train state (params, optimizer, batch statistics, step), the
data iterator's state (so a resumed run sees the same batches) and a small JSON record.

The directory may be local or ``gs://...``: orbax writes both through tensorstore. A step
becomes visible only once complete: on a local disk orbax writes a temporary folder and
renames it; in a bucket (no rename) it writes the step in place and marks it complete with a
``commit_success.txt`` last, and skips a step without one.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from cxrjax.io import checksums, fileio

VAL_METRIC = "val_mean_auc"
CHECKSUMS = "array_checksums"  # the meta record's key: each state field's checksums.py sum


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be written or read."""


def _val_metric(metrics: dict) -> float:
    """The ranking key: a NaN validation AUC (undefined on a tiny split) ranks below every
    number, and among equal keys orbax keeps the latest step."""
    value = metrics[VAL_METRIC]
    return -math.inf if value is None or math.isnan(value) else value


def open_manager(directory: str, keep: int, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    """A manager that keeps the latest ``keep`` steps and the best one by validation mean AUC."""
    directory = fileio.expand(directory)
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               best_fn=_val_metric, best_mode="max")
        return ocp.CheckpointManager(directory, options=options,
                                     item_names=("state", "data", "meta"))
    _quiet_failed_write_echoes()
    _replica_parallel_only_across_hosts()
    if not fileio.is_remote(directory):  # a bucket has no folders; main checked it is writable
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create checkpoint directory {directory}: {e}") \
                from None
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


def _replica_parallel_only_across_hosts() -> None:
    """Orbax's replica-parallel saving (its default off GPU) splits each replicated array among
    the devices holding it, which pays only when several hosts share the writes: in one process
    it slices every array with an eager program per shape and device (34 compiles and ~2 s of
    CPU at a tiny ResNet18's first save on 2 CPU devices). Off there; the format is unchanged."""
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if hasattr(handler, "_use_replica_parallel") and jax.process_count() == 1:
        handler._use_replica_parallel = False


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any,
         meta: dict, val_mean_auc: float | None = None) -> None:
    """Saves asynchronously; the write becomes visible only once complete (orbax renames).

    A full disk (or a file-size limit) met by this save or by the previous one, still in
    flight, is a CheckpointError of one line (``disk_full_message``). ``meta`` is stored with
    the state's array checksums added, which ``restore`` checks."""
    metrics = None if val_mean_auc is None else {VAL_METRIC: float(val_mean_auc)}
    meta = {**meta, CHECKSUMS: checksums.state_checksums(state)}
    previous = _in_flight.get(id(manager))
    _in_flight[id(manager)] = step
    try:
        manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_jsonable(data_state)),
            meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # noqa: BLE001 - orbax re-raises a background write's error here
        code = full_disk_errno(e)
        if code is not None:
            failed = previous if previous is not None and previous != step and \
                f"{previous}.orbax-checkpoint-tmp" in str(e) else step
            raise CheckpointError(disk_full_message(manager, failed, code)) from None
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {step} in {manager.directory}: "
                                  f"{e}") from None
        raise


def wait(manager: ocp.CheckpointManager) -> None:
    """Waits for the save in flight; a full disk (or a file-size limit) that stopped it is a
    CheckpointError of one line (``disk_full_message``), any other failure raised as it is."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax raises what its writer thread met
        code = full_disk_errno(e)
        if code is None:
            raise
        raise CheckpointError(disk_full_message(manager, _in_flight.get(id(manager)), code)) \
            from None


_in_flight: dict[int, int] = {}  # id(manager) -> the last step asked to save
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_FULL = {errno.ENOSPC: "no space left on the device (ENOSPC)",
         errno.EFBIG: "a file grew past the allowed size (EFBIG: a file-size limit, ulimit -f, "
                      "or the file system's largest file)",
         errno.EDQUOT: "the disk quota is exceeded (EDQUOT)"}
_FULL_WORDS = {"No space left on device": errno.ENOSPC, "File too large": errno.EFBIG,
               "Disk quota exceeded": errno.EDQUOT, "quota exceeded": errno.EDQUOT}


def full_disk_errno(error: BaseException) -> int | None:
    """ENOSPC, EFBIG or EDQUOT when ``error`` (an OSError, or tensorstore's message through
    orbax) is a full disk, a file-size limit or a quota; None otherwise."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno in _FULL:
            return e.errno
    text = str(error)
    match = _OS_ERROR_CODE.search(text)
    if match and int(match[1]) in _FULL:
        return int(match[1])
    return next((code for words, code in _FULL_WORDS.items() if words in text), None)


class _FullDiskEchoes(logging.Filter):
    """Drops the library records that repeat a checkpoint write's full-disk failure (orbax's
    writer threads and asyncio log it once per array); ``save``/``wait`` say it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        return not (("orbax-checkpoint-tmp" in text or "ocdbt" in text)
                    and full_disk_errno(RuntimeError(text)) is not None)


def _quiet_failed_write_echoes() -> None:
    """Once per process: the echoes of a failed write (``_FullDiskEchoes``) are not logged, and
    tensorstore's callbacks that reach the failed writer's closed event loop are not printed
    (``RuntimeError: Event loop is closed``, once per array still in flight). That hook is
    process-wide: any such late callback is dropped, not only a failed checkpoint's (they come
    before the failure is known, so it cannot wait for it)."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_FullDiskEchoes())
    previous = sys.unraisablehook

    def unraisable(info) -> None:
        if isinstance(info.exc_value, RuntimeError) and \
                str(info.exc_value) == "Event loop is closed":
            return
        previous(info)

    sys.unraisablehook = unraisable


_quieted = False


def disk_full_message(manager: ocp.CheckpointManager, step: int | None, code: int) -> str:
    """One line: which checkpoint failed and why, the free space there, and the last complete
    checkpoint (intact: orbax only ever renames a finished one into place)."""
    directory = os.fspath(manager.directory)
    if fileio.is_remote(directory):
        free = "free space unknown (a bucket: check its quota)"
    else:
        try:
            free = f"{_size(shutil.disk_usage(directory).free)} free there"
        except OSError:
            free = "free space unknown"
    try:
        manager.reload()
        last = manager.latest_step()
    except Exception:  # noqa: BLE001 - the listing itself failed: say nothing of it
        last = None
    kept = ("no complete checkpoint yet" if last is None else
            f"the last complete checkpoint is step {last}, intact")
    what = "a checkpoint" if step is None else f"checkpoint {step}"
    return (f"cannot write {what} in {directory}: {_FULL[code]}; {free}; {kept}; free some "
            "space and run the same command again to resume")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def restore(manager: ocp.CheckpointManager, state_template: Any, step: int | None = None,
            ) -> tuple[int, Any, Any, dict] | None:
    """Restores ``step`` (default: the newest readable one, falling back past corrupt ones).

    ``state_template`` is a dict or a dataclass (TrainState) of arrays; top-level fields the
    saved state has and the template lacks are read and dropped, so a checkpoint from before a
    field was removed (TrainState.rng) still restores.
    Returns (step, state, data_state, meta), or None when the directory holds no checkpoint.
    """
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    fields = _fields(state_template)
    for s in steps:
        error = None
        try:
            saved = _saved_state_tree(manager, s)
            other = tree_mismatch(saved, fields)
            if other is None:
                dropped = {k: _host_zeros(v) for k, v in saved.items() if k not in fields}
                out = manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore({**fields, **dropped}),
                    data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
                restored = {k: out["state"][k] for k in fields}
                # The template's fields only: a dropped field is read back in the structure of
                # its saved metadata, which need not be the one its checksum was taken over.
                verify_checksums(dict(out["meta"]), restored, f"checkpoint {s}")
                state = (dataclasses.replace(state_template, **restored)
                         if dataclasses.is_dataclass(state_template) else restored)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: say so, fall back
            if step is not None:
                raise CheckpointError(f"checkpoint {s} in {manager.directory} is unreadable: "
                                      f"{type(e).__name__}: {e}") from None
            error = f"{type(e).__name__}: {str(e)[:200]}"
        if step is None and _unreadable_anywhere(error is not None):
            aside = _set_aside(manager, s)
            logging.getLogger("cxrjax").warning(
                "checkpoint %d in %s is unreadable (%s); kept as %s, trying an older one",
                s, manager.directory, error or "on another process", aside)
            continue
        if other is not None:  # readable, but not this state: never "unreadable", never moved
            raise CheckpointError(f"checkpoint {s} in {manager.directory} is another model's or "
                                  f"optimizer's ({other}); it was left as it is: train this "
                                  "config in another workdir")
        meta = {k: v for k, v in dict(out["meta"]).items() if k != CHECKSUMS}
        return s, state, _unjsonable(out["data"]), meta
    return None


class ChecksumMismatch(ValueError):
    """A checkpoint's arrays differ from what was saved (a flipped bit, a rewritten file)."""


def verify_checksums(meta: Mapping, state: Any, what: str) -> None:
    """Raises ChecksumMismatch where ``state``'s fields (all or some of the saved ones) differ
    from the checksums recorded in ``meta`` at save; a checkpoint saved before checksums were
    recorded passes (said once per process)."""
    saved = meta.get(CHECKSUMS)
    if saved is None:
        global _said_unchecked
        if not _said_unchecked:
            _said_unchecked = True
            logging.getLogger("cxrjax").info(
                "%s was saved without array checksums (an older cxrjax): restored unchecked",
                what)
        return
    bad = checksums.mismatched(saved, checksums.state_checksums(state))
    if bad:
        raise ChecksumMismatch(f"its {', '.join(bad)} arrays differ from the checksum saved with "
                               "them (a changed array file: a flipped bit, a partial rewrite?)")


_said_unchecked = False


def tree_mismatch(saved: Mapping, template: Mapping) -> str | None:
    """How a saved state's array metadata differs from ``template``'s fields (paths and
    shapes; fields only the saved state has are not compared); None when they agree."""
    def shapes(tree: Mapping) -> dict[str, tuple]:
        leaves = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
        return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                         for k in path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}

    want = shapes(template)
    have = shapes({k: saved[k] for k in template if k in saved})
    missing = [p for p in want if p not in have]
    extra = [p for p in have if p not in want]
    reshaped = [p for p in want if p in have and have[p] != want[p]]
    parts = [f"{len(missing)} array(s) missing, e.g. {missing[0]}" if missing else "",
             f"{len(extra)} unexpected, e.g. {extra[0]}" if extra else "",
             f"{len(reshaped)} of another shape, e.g. {reshaped[0]} {have[reshaped[0]]} instead "
             f"of {want[reshaped[0]]}" if reshaped else ""]
    return "; ".join(p for p in parts if p) or None


def _fields(state: Any) -> dict:
    """The top-level fields of a state, as a dict."""
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dict(state)


def _saved_state_tree(manager: ocp.CheckpointManager, step: int) -> dict:
    """The saved state's tree of array metadata (shape, dtype), read without the arrays."""
    path = fileio.join(os.fspath(manager.directory), str(step), "state")
    with ocp.StandardCheckpointer() as checkpointer:
        return dict(checkpointer.metadata(path).item_metadata)


def _host_zeros(tree: Any) -> Any:
    """A restore target for leaves read only to be dropped: host arrays, whatever the sharding
    they were saved with."""
    return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), tree)


def _unreadable_anywhere(unreadable_here: bool) -> bool:
    """Whether any process found the checkpoint unreadable: every process then sets it aside
    together (one decision, or the processes would restore different steps)."""
    if jax.process_count() == 1:
        return unreadable_here
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(unreadable_here))
    return bool(np.any(flags))


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Renames an unreadable step out of the manager's sight (kept for inspection; in a bucket
    a copy and a delete): once, on process 0, while the others wait at a barrier."""
    src = fileio.join(os.fspath(manager.directory), str(step))
    dst = f"{src}.unreadable (by process 0)"
    if jax.process_index() == 0:
        dst = f"{src}.unreadable"
        n = 1
        while fileio.exists(dst):
            n += 1
            dst = f"{src}.unreadable{n}"
        fileio.rename(src, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"cxrjax: checkpoint {step} set aside")
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
