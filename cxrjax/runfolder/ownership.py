"""Who may write in a workdir: a new run, or the run it holds resumed with the same config.

A workdir records its config (``config.json``). A later command with a config that differs in
anything shaping the model, the data or the stages is refused with one line naming the fields,
before anything in the workdir is touched; ``RESUMABLE_FIELDS`` may change. Starting over is
explicit: ``move_aside`` (``main --restart``) renames the old run, it never deletes. A run that
fails before writing anything but its config leaves no workdir behind (``Claim.release``).
One command writes at a time: a claim holds the workdir's lock (``cxrjax.runfolder.lock``) on
process 0 until the run ends, stops or fails; a second command is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from cxrjax.io import fileio, run_layout
from cxrjax.runfolder import loading as runs
from cxrjax.runfolder import lock as run_lock

log = logging.getLogger("cxrjax")

# What a resumed run may change (a name covers the fields under it): how often it logs and
# checkpoints, how many checkpoints it keeps, how it is fed, how its test split is evaluated
# (all of ``eval``), where its inputs are read from, how its DenseNet blocks are compiled; and
# the learning rate, which a run stopped by a non-finite loss is told to lower before it resumes.
# Everything else shapes the model, the data or the stages. A stage's epochs may change too
# (train it longer or shorter), while no later stage has started from it. Each change is logged
# when the run resumes.
RESUMABLE_FIELDS: tuple[str, ...] = (
    "train.lr", "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.eval_batch_size", "eval", "data.workers", "data.prefetch", "data.prepare_workers",
    "data.data_dir", "data.data_dirs", "data.manual_dir", "data.chestmnist_path",
    "model.weights_dir", "model.dense_scan_chunk", "compile_cache_dir",
    "row",  # the paper row a config names: a label, not the model
)


class WorkdirError(ValueError):
    """A workdir this command may not use; the message says why and what to do, in one line."""


# ---------------------------------------------------------------------------------------------
# Comparing a recorded config with a new one.
# ---------------------------------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.stages[0].epochs": 9, ...}: dicts by dotted name, lists of dicts by index (the
    list's own key holds its length), other values as they are. Not flax.traverse_util's
    ``flatten_dict``: it keeps every list whole, so the stages' fields would be one value."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        out = {prefix: len(tree)}
        for i, value in enumerate(tree):
            out.update(_flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def _plain(config: mlc.ConfigDict | dict) -> dict:
    if isinstance(config, mlc.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=lambda o: o.to_dict() if hasattr(o, "to_dict")
                                 else str(o)))


def flatten_config(config: mlc.ConfigDict | dict) -> dict[str, Any]:
    """Every field of a config (or its JSON dict) by dotted name, stages by index:
    ``{"train.stages[0].epochs": 9, "train.stages": 1, ...}``, values as JSON has them."""
    return _flatten(_plain(config))


def _stage_of(name: str) -> int | None:
    """3 for "train.stages[3].epochs"; None for a field outside the stages."""
    if not name.startswith("train.stages["):
        return None
    return int(name[len("train.stages["):].split("]")[0])


def config_differences(recorded: mlc.ConfigDict | dict, config: mlc.ConfigDict | dict,
                       started_stages: int = 0) -> list[str]:
    """The fields in which ``config`` may not differ from ``recorded`` but does, each as
    ``name old -> new`` (JSON values), in the order of ``config``.

    ``RESUMABLE_FIELDS`` may differ, and ``train.stages[i].epochs`` while fewer than ``i + 2``
    stages have started (``started_stages``: how many hold a checkpoint). A field only the
    recorded config has, outside the stages, is one this version no longer reads: ignored.
    """
    return compare_configs(recorded, config, started_stages)[0]


def compare_configs(recorded: mlc.ConfigDict | dict, config: mlc.ConfigDict | dict,
                    started_stages: int = 0) -> tuple[list[str], list[str]]:
    """(refused, allowed): the differences ``config_differences`` refuses, and those a resumed
    run may have (``RESUMABLE_FIELDS``, a stage's epochs), each ``name old -> new``."""
    old, new = flatten_config(recorded), flatten_config(config)
    refused, allowed = [], []
    for name in list(new) + [n for n in old if n not in new]:
        if old.get(name, _MISSING) == new.get(name, _MISSING):
            continue
        stage = _stage_of(name)
        if name not in new and stage is None:
            continue
        if stage is not None and old.get("train.stages") != new.get("train.stages") and \
                name != "train.stages":
            continue  # the stage count already says it
        change = f"{name} {_show(old.get(name, _MISSING))} -> {_show(new.get(name, _MISSING))}"
        if resumable(name) or (stage is not None and name.endswith("].epochs")
                               and started_stages <= stage + 1):
            allowed.append(change)
        else:
            refused.append(change)
    return refused, allowed


_MISSING = object()


def resumable(name: str) -> bool:
    """Whether the field ``name`` (``train.stages[0].epochs``) is one of RESUMABLE_FIELDS."""
    return any(name == f or name.startswith(f + ".") for f in RESUMABLE_FIELDS)


def _show(value: Any) -> str:
    text = "(none)" if value is _MISSING else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def started_stages(workdir: str, config: mlc.ConfigDict) -> int:
    """How many of ``config``'s stages hold a checkpoint in ``workdir`` (1 + the last one's
    index; 0 if none)."""
    started = 0
    for i, stage in enumerate(config.train.stages):
        try:
            if any(name.isdigit() for name in fileio.listdir(runs.stage_dir(workdir, i, stage))):
                started = i + 1
        except FileNotFoundError:
            continue
    return started


# ---------------------------------------------------------------------------------------------
# Claiming a workdir for a run, and giving it back when the run wrote nothing.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    """A workdir this run may write in, and what was in it before."""

    workdir: str
    existed: bool
    before: frozenset[str]  # names at its top before the run (the lock file aside)
    lock: run_lock.RunLock | None = None  # on process 0

    def unlock(self) -> None:
        """Gives the workdir's lock back (the run ended, stopped or failed)."""
        if self.lock is not None:
            self.lock.release()

    def release(self) -> None:
        """After a failure: removes what this run created if it wrote nothing but its
        config.json, empty files and folders (a bad data path, weights that are not there);
        keeps anything else; then gives the lock back. (TensorBoard's files count as nothing
        while metrics.jsonl, which gets every value first, is empty.)"""
        try:
            self._remove_created()
        finally:
            self.unlock()

    def _remove_created(self) -> None:
        if jax.process_index() != 0 or not fileio.isdir(self.workdir):
            return
        if self.lock is not None:
            self.lock.stop_heartbeat()  # no lock rewrite while the folder goes
        files = fileio.walk_files(self.workdir)
        created = {f: n for f, n in files.items() if f.split("/")[0] not in self.before
                   and f != run_lock.LOCK_FILE}
        kept = (run_layout.CONFIG, run_layout.COMMAND)
        if any(n and f not in kept and not f.startswith(f"{run_layout.TENSORBOARD}/")
               for f, n in created.items()):
            return  # the run wrote logs, checkpoints or data: they are worth keeping
        if not self.existed:
            fileio.rmtree(self.workdir)
            return
        for name in set(fileio.listdir(self.workdir)) - self.before - {run_lock.LOCK_FILE}:
            path = fileio.join(self.workdir, name)
            if fileio.isdir(path):
                fileio.rmtree(path)
            else:
                fileio.remove(path, missing_ok=True)


def claim(workdir: str, config: mlc.ConfigDict, command: Mapping | None = None) -> Claim:
    """Checks that ``config`` may run in ``workdir`` (new, empty, or a run of the same config)
    and records it there, with ``command`` (``{"config_file", "overrides", "argv"}``, the
    report's source line) when given. WorkdirError, with nothing touched, if not; LockedError
    (one line naming it) while another command holds the workdir. The claim holds the
    workdir's lock (on process 0) until ``unlock`` or ``release``."""
    workdir = fileio.expand(workdir)
    existed = fileio.isdir(workdir)
    lock = lock_run(workdir, "train")
    try:
        return _claim(workdir, config, command, existed, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _claim(workdir: str, config: mlc.ConfigDict, command: Mapping | None, existed: bool,
           lock: run_lock.RunLock | None) -> Claim:
    before = frozenset(fileio.listdir(workdir)) - {run_lock.LOCK_FILE} if existed \
        else frozenset()
    if jax.process_count() > 1:  # all look before process 0 writes: one decision everywhere
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("cxrjax: workdir inspected")
    if run_layout.CONFIG in before:
        try:
            recorded = runs.load_config(workdir)
        except (ValueError, OSError) as e:
            raise WorkdirError(f"refusing to use {workdir}: {e}; {WAYS_OUT}") from None
        differ, changed = compare_configs(recorded, config, started_stages(workdir, recorded))
        if changed and not differ:
            log.info("resuming %s with changed fields: %s", workdir, "; ".join(changed))
        if differ:
            shown = "; ".join(differ[:8]) + (f"; and {len(differ) - 8} more"
                                            if len(differ) > 8 else "")
            raise WorkdirError(
                f"refusing to use {workdir}: it holds a run of another config ({shown}); nothing "
                "in it was changed. To resume, run that run's config (only the learning rate and "
                "logging, checkpoint, evaluation, worker and path fields may change: "
                "cxrjax.runfolder.ownership.RESUMABLE_FIELDS), "
                f"or {WAYS_OUT}")
    elif before & set(run_layout.RUN_FILES):
        held = ", ".join(sorted(before & set(run_layout.RUN_FILES)))
        raise WorkdirError(f"refusing to use {workdir}: it holds {held} but no "
                           f"{run_layout.CONFIG}, so no run to resume; {WAYS_OUT}")
    runs.record_config(workdir, config)
    if command is not None and jax.process_index() == 0:
        fileio.write_text(run_layout.path(workdir, run_layout.COMMAND),
                          json.dumps(dict(command), indent=2))
    return Claim(workdir, existed, before, lock)


def lock_run(workdir: str, purpose: str) -> run_lock.RunLock | None:
    """Takes ``workdir``'s lock on process 0 (None elsewhere), for a command that writes a
    run's files; every process raises LockedError when process 0 was refused. Temporary
    files left by a write that a kill cut short are removed once the lock is held."""
    lock, refused = None, ""
    if jax.process_index() == 0:
        try:
            lock = run_lock.acquire(workdir, purpose=purpose)
            for folder in (workdir, run_layout.path(workdir, run_layout.EVAL)):
                fileio.remove_stale_temporaries(folder)
        except run_lock.LockedError as e:
            refused = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(0 if refused else 1))
        if not int(ok) and not refused:
            refused = f"{workdir} is in use by another command (process 0 could not lock it)"
    if refused:
        raise run_lock.LockedError(refused)
    return lock


def read_command(workdir: str) -> dict | None:
    """The command recorded by ``claim`` (None if there is none or it is unreadable)."""
    try:
        command = json.loads(fileio.read_text(fileio.join(workdir, run_layout.COMMAND)))
    except (OSError, ValueError):
        return None
    return command if isinstance(command, dict) else None


WAYS_OUT = ("pick another --workdir, or pass --restart to move the old run aside "
             "(WORKDIR.old-<time>) and start over")


def move_aside(workdir: str) -> str | None:
    """Renames a run's workdir to ``WORKDIR.old-<YYYYmmdd-HHMMSS>`` (never deletes); returns
    the new name, or None when there is no run there (a folder without config.json or a run's
    files is left alone). On process 0; the others wait for it."""
    workdir = fileio.expand(workdir)
    target = None
    lock = lock_run(workdir, "restart") if fileio.isdir(workdir) else None
    try:
        target = _move(workdir, lock)
    finally:
        if lock is not None:
            lock.release()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("cxrjax: workdir moved aside")
    return target


def _move(workdir: str, lock: run_lock.RunLock | None) -> str | None:
    """The renaming of ``move_aside`` on process 0, the lock held; the moved folder keeps no
    lock file."""
    target = None
    if jax.process_index() == 0 and fileio.isdir(workdir) and \
            set(fileio.listdir(workdir)) & set(run_layout.RUN_FILES):
        target = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while fileio.exists(target):
            n += 1
            target = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        if lock is not None:
            lock.stop_heartbeat()  # nothing rewrites the lock while the folder moves
        try:
            fileio.rename(workdir, target)
        except OSError as e:
            raise WorkdirError(f"cannot move {workdir} aside to {target}: {e}; move or remove it "
                               "yourself") from None
        fileio.remove(fileio.join(target, run_lock.LOCK_FILE), missing_ok=True)
    return target
