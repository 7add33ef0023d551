"""The training loop: mesh, state, one jitted step, stages, checkpoint cadence, logging.

Stages (``config.train.stages``) run in order; each has its own checkpoint directory, and a
stage after the first starts from the previous stage's best checkpoint (the paper's Local and
Local-Fixed strategies). Re-running the same command resumes where the run stopped. The
evaluator (``evaluator.py``) scores the validation split every epoch and the test split at the
end, and writes the run's evaluation files; the loop itself writes only checkpoints and logs.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh

from cxrjax import models
from cxrjax.config_checks import check_config
from cxrjax.evaluation import sections
from cxrjax.evaluation.evaluator import Evaluator
from cxrjax.evaluation.inference import batch_sharded, create_mesh, replicated
from cxrjax.io import checkpoint, fileio, mirror
from cxrjax.io.metric_writers import MetricWriter, progress
from cxrjax.io.preemption import PreemptionWatcher
from cxrjax.runfolder import loading as runs
from cxrjax.runfolder import ownership as workdir_lib
from cxrjax.train_step import TrainState, create_stage, prefetch_to_mesh

log = logging.getLogger("cxrjax")

# ---------------------------------------------------------------------------------------------
# Building everything for a run.
# ---------------------------------------------------------------------------------------------


def initialise(variables: dict, config: mlc.ConfigDict, mesh: Mesh) -> dict:
    """Applies ``model.init`` to random variables: keep them, ImageNet trunks, or a run's."""
    init = config.model.init
    if init == "scratch":
        return variables
    if init == "imagenet":
        weights_dir = fileio.expand(config.model.weights_dir)
        archs = {config.model.trunk_a, config.model.trunk_b} - {None}
        paths = {a: fileio.join(weights_dir, f"{a}_imagenet.npz") for a in archs}
        # Files in a bucket are read from a local copy; a missing one stays named as given.
        weights = {a: mirror.local_file(p) if fileio.exists(p) else p for a, p in paths.items()}
        return models.load_pretrained_trunks(variables, config.model, weights)
    path = fileio.expand(init)
    if not fileio.exists(path):
        raise FileNotFoundError(f"model.init={init!r}: neither 'imagenet', 'scratch' nor an "
                                "existing cxrjax workdir or checkpoint directory")
    return runs.restore_variables(runs.final_stage_dir(path), variables, mesh=mesh)


# ---------------------------------------------------------------------------------------------
# One stage: resume or initialise, train with validation every epoch, keep checkpoints.
# ---------------------------------------------------------------------------------------------


def run_stage(config: mlc.ConfigDict, workdir: str, index: int, model: Any, ds: Any,
              mesh: Mesh, initial_variables: Callable[[], dict], writer: MetricWriter,
              evaluator: Evaluator, watcher: PreemptionWatcher | None = None) -> int:
    """Trains stage ``index`` to completion (resuming if possible); returns its best step.

    Each step is followed by the loop's periodic pieces, in this order: log (every
    ``train.log_every_steps`` and at each epoch's end), end of epoch (validate, then save) or
    the checkpoint cadence (save), and the stop check: when ``watcher`` names the step, that
    step is saved (if the cadence did not save it already), the write completes, and
    ``Preempted`` (a SIGTERM) or ``Interrupted`` (a Ctrl-C) is raised.
    """
    loop = StageLoop.open(config, workdir, index, model, ds, mesh, initial_variables, writer,
                          evaluator)
    if loop.step < loop.total_steps:
        batches = prefetch_to_mesh(loop.train_iter, batch_sharded(mesh),
                                   size=max(config.data.prefetch, 1))
        loop.start_epoch_bar()
        try:
            while loop.step < loop.total_steps:
                loop.train_step_on(*next(batches))
                if loop.step % config.train.log_every_steps == 0 or loop.at_epoch_end:
                    loop.log_training()
                if loop.at_epoch_end:
                    loop.validate_and_save()
                elif loop.step % config.train.checkpoint_every_steps == 0:
                    loop.save()
                if watcher is not None and watcher.reached(loop.step):  # every process
                    loop.stop(watcher)
        finally:  # an error's one line starts a line of its own, after the bar's
            loop.bar.close()
    checkpoint.wait(loop.manager)
    return loop.manager.best_step() or loop.manager.latest_step()


class StageLoop:
    """One stage's training as named pieces: what ``run_stage`` does after each step."""

    def __init__(self, config: mlc.ConfigDict, index: int, manager: Any, state: TrainState,
                 train_step: Callable, train_iter: Any, steps_per_epoch: int,
                 writer: MetricWriter, evaluator: Evaluator):
        self.config, self.index, self.stage = config, index, config.train.stages[index]
        self.manager, self.state, self.train_step = manager, state, train_step
        self.train_iter, self.writer, self.evaluator = train_iter, writer, evaluator
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = self.stage.epochs * steps_per_epoch
        self.step = int(state.step)
        self.data_state = train_iter.get_state()
        self.pending: tuple[int, dict] | None = None  # the last step's metrics, checked behind
        self.saved: int | None = None  # the last step this process asked to checkpoint
        self.last_log, self.last_log_step = time.perf_counter(), self.step
        self.bar = None

    @classmethod
    def open(cls, config: mlc.ConfigDict, workdir: str, index: int, model: Any, ds: Any,
             mesh: Mesh, initial_variables: Callable[[], dict], writer: MetricWriter,
             evaluator: Evaluator) -> StageLoop:
        """The stage resumed from its newest readable checkpoint, else started afresh. A resume
        restores into the state's shapes: nothing is initialised, no weights file read."""
        stage, spe = config.train.stages[index], ds.steps_per_epoch
        manager = checkpoint.open_manager(runs.stage_dir(workdir, index, stage),
                                          config.train.keep_checkpoints)
        resuming = bool(manager.all_steps())
        state, train_step = create_stage(
            config, index, model,
            runs.abstract_variables(model, config) if resuming else initial_variables(),
            spe, mesh)
        train_iter = ds.train_iter()
        restored = checkpoint.restore(manager, state) if resuming else None
        if resuming and restored is None:  # every checkpoint was unreadable (and set aside)
            state, train_step = create_stage(config, index, model, initial_variables(), spe,
                                             mesh)
        if restored is not None:
            step, state, data_state, _ = restored
            state = jax.device_put(state, replicated(mesh))
            try:
                train_iter.set_state(data_state)
            except ValueError as e:  # another batch size or dataset than the checkpoint's
                raise workdir_lib.WorkdirError(
                    f"cannot resume stage {stage.name} in {workdir}: {e}; "
                    f"or {workdir_lib.WAYS_OUT}") from None
            log.info("%sresumed at step %d of %d", _stage_prefix(config, index), step,
                     stage.epochs * spe)
        return cls(config, index, manager, state, train_step, train_iter, spe, writer, evaluator)

    @property
    def at_epoch_end(self) -> bool:
        return self.step % self.steps_per_epoch == 0

    def start_epoch_bar(self) -> None:
        self.bar = progress(total=self.steps_per_epoch,
                            initial=self.step % self.steps_per_epoch,
                            desc=epoch_label(self.config, self.index,
                                             self.step // self.steps_per_epoch + 1))

    def train_step_on(self, batch: dict, next_data_state: Any) -> None:
        """One jitted step; the previous step's metrics are checked while this one runs."""
        self.state, step_metrics = self.train_step(self.state, batch)
        if self.pending is not None:
            _check_finite(*self.pending, self.manager)
        self.pending = (self.step + 1, step_metrics)
        self.step, self.data_state = self.step + 1, next_data_state
        self.bar.update(1)

    def log_training(self) -> None:
        """The step's losses, learning rate and throughput to the log files and the bar."""
        _check_finite(*self.pending, self.manager)
        now, step_metrics = time.perf_counter(), self.pending[1]
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items() if k != "finite"}
        values["img_per_s"] = ((self.step - self.last_log_step) * self.config.train.batch_size
                               / (now - self.last_log))
        self.last_log, self.last_log_step = now, self.step
        self.writer.write(self.step, {f"train/{k}": v for k, v in values.items()},
                          stage=self.stage.name)
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['img_per_s']:.0f}")

    def validate_and_save(self) -> None:
        """End of an epoch: the validation score, logged, then the checkpoint that carries it."""
        _check_finite(*self.pending, self.manager)
        self.bar.close()
        val = self.evaluator.validate({"params": self.state.params,
                                       "batch_stats": self.state.batch_stats})
        self.writer.write(self.step, {"val/mean_auc": val["mean_auc"], "val/w_auc": val["w_auc"]},
                          stage=self.stage.name)
        epoch = self.step // self.steps_per_epoch
        log.info("%s: val mean AUC %.4f, W-AUC %.4f", epoch_label(self.config, self.index, epoch),
                 val["mean_auc"], val["w_auc"])
        if self.step < self.total_steps:
            self.start_epoch_bar()
        self.save({"val_mean_auc": val["mean_auc"], "val_w_auc": val["w_auc"]}, val["mean_auc"])

    def save(self, extra: Mapping | None = None, val_auc: float | None = None) -> None:
        """Checkpoints this step (asynchronously); never a step whose update was not applied."""
        _check_finite(*self.pending, self.manager)
        meta = {"stage": self.stage.name, "epoch": self.step / self.steps_per_epoch,
                **(extra or {})}
        checkpoint.save(self.manager, self.step, self.state, self.data_state, meta, val_auc)
        self.saved = self.step

    def stop(self, watcher: PreemptionWatcher) -> None:
        """A preemption notice or Ctrl-C named this step: save it, finish writing, stop."""
        self.bar.close()
        if not watcher.interrupted:  # a Ctrl-C ends in one line: Interrupted's
            log.warning("preemption notice: saving step %d of stage %s, then stopping",
                        self.step, self.stage.name)
        if self.saved != self.step:
            self.save()
        checkpoint.wait(self.manager)
        raise watcher.stopped(self.step, self.manager.directory)


def epoch_label(config: mlc.ConfigDict, index: int, epoch: int) -> str:
    """``epoch 2/5`` in a one-stage run; ``stage local epoch 2/3`` where there are several."""
    return f"{_stage_prefix(config, index)}epoch {epoch}/{config.train.stages[index].epochs}"


def _stage_prefix(config: mlc.ConfigDict, index: int) -> str:
    stages = config.train.stages
    return "" if len(stages) == 1 else f"stage {stages[index].name} "


def _check_finite(step: int, step_metrics: dict, manager: Any) -> None:
    if bool(step_metrics["finite"]):
        return
    values = jax.device_get(step_metrics)
    bad = [k.removeprefix("loss_") for k, v in values.items()
           if k.startswith("loss_") and not np.isfinite(v)]
    what = f"head(s) {', '.join(bad)}" if bad else "the gradient"
    checkpoint.wait(manager)
    last = manager.latest_step()
    kept = "no checkpoint was written yet" if last is None else \
        f"the last good checkpoint (step {last}) is intact"
    raise FloatingPointError(
        f"non-finite loss at step {step} in {what} (loss={float(values['loss'])}, grad norm="
        f"{float(values['grad_norm'])}); the state was not updated and {kept}: lower train.lr "
        "or check the data")


# ---------------------------------------------------------------------------------------------
# The whole run: every stage, then the evaluator on the test split.
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(config: mlc.ConfigDict, workdir: str, *, restart: bool = False,
                       command: Mapping | None = None) -> dict:
    """Trains every stage (resuming where a run stopped), then the evaluator tests the best
    checkpoint and writes the report; returns the test ``metrics.summary`` per head.

    A workdir holding a run of another config, or held by another command (its lock), is
    refused untouched (``workdir.claim``); ``restart`` first moves such a run aside. A run
    that fails before writing more than its config leaves no workdir behind. ``command``: the
    config file and overrides, for the report.
    """
    check_config(config)
    sections.check(config)
    workdir = fileio.expand(workdir)
    if restart:
        moved = workdir_lib.move_aside(workdir)
        if moved:
            log.info("moved the run in %s aside to %s; starting over", workdir, moved)
    claim = workdir_lib.claim(workdir, config, command)  # and its lock, until the end
    try:
        return _train_and_evaluate(config, workdir)
    except BaseException:
        claim.release()
        raise
    finally:
        claim.unlock()


def _train_and_evaluate(config: mlc.ConfigDict, workdir: str) -> dict:
    from cxrjax.data import pipeline  # here: the train step (and its benchmark) needs no data

    ds = pipeline.open_datasets(config, workdir)
    mesh = create_mesh()
    model = models.build_model(config.model, dtype=models.compute_dtype(config.dtype))
    shapes = functools.cache(lambda: runs.abstract_variables(model, config))
    evaluator = Evaluator(model, config.model.fusion, ds, mesh)
    writer = MetricWriter(workdir)

    # Called only by a stage that starts afresh: a resumed or finished stage initialises nothing.
    initial = lambda: initialise(runs.random_variables(model, config), config,  # noqa: E731
                                 mesh)
    # A SIGTERM or Ctrl-C while training: save that step and stop (Preempted, Interrupted). One
    # during the final test is the entry point's: nothing to save then, and a rerun tests again.
    with PreemptionWatcher() as watcher:
        try:
            for index, stage in enumerate(config.train.stages):
                best = run_stage(config, workdir, index, model, ds, mesh, initial, writer,
                                 evaluator, watcher)
                directory = runs.stage_dir(workdir, index, stage)
                initial = lambda d=directory, b=best: runs.restore_variables(  # noqa: E731
                    d, shapes(), b, mesh=mesh)
        finally:
            writer.close()  # a preempted run's log and TensorBoard files reach a bucket too
    log.info("training complete: testing step %d of stage %s on the test split", best,
             config.train.stages[-1].name)
    return evaluator.test_and_report(initial(), workdir, config).results
