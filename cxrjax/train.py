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
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from cxrjax import checkpoint, fileio, losses, mirror, models, runs, sections
from cxrjax import workdir as workdir_lib
from cxrjax.config_checks import ConfigError, check_config
from cxrjax.evaluator import Evaluator
from cxrjax.inference import batch_sharded, create_mesh, replicated
from cxrjax.metric_writers import MetricWriter, progress
from cxrjax.preemption import Preempted, PreemptionWatcher

log = logging.getLogger("cxrjax")

# ---------------------------------------------------------------------------------------------
# State, optimizer and the frozen-parameter mask.
# ---------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
    """What a step changes and a checkpoint keeps. (Checkpoints from before this state lost its
    unused ``rng`` field still restore: checkpoint.restore drops fields the state lacks.)"""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def path_names(tree: Any) -> Any:
    """The same tree with each leaf replaced by its '/'-joined path ('trunk_a/conv1/kernel')."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path), tree)


def trainable_mask(tree: Any, pattern: str) -> Any:
    """Bool tree: True where the leaf's path matches ``pattern`` (re.search)."""
    regex = re.compile(pattern)
    return jax.tree.map(lambda name: bool(regex.search(name)), path_names(tree))


def learning_rate_schedule(train_cfg: Any, steps_per_epoch: int) -> optax.Schedule:
    """The paper's schedule: lr, times ``lr_decay_factor`` every ``lr_decay_epochs`` epochs."""
    return optax.exponential_decay(
        train_cfg.lr, transition_steps=train_cfg.lr_decay_epochs * steps_per_epoch,
        decay_rate=train_cfg.lr_decay_factor, staircase=True)


def make_optimizer(train_cfg: Any, schedule: optax.Schedule, mask: Any
                   ) -> optax.GradientTransformation:
    """Adam(W) on the trainable leaves; frozen leaves get no update at all."""
    if train_cfg.weight_decay:
        tx = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2,
                         weight_decay=train_cfg.weight_decay)
    else:
        tx = optax.adam(schedule, b1=train_cfg.b1, b2=train_cfg.b2)
    if all(jax.tree.leaves(mask)):
        return tx
    labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ---------------------------------------------------------------------------------------------
# The jitted steps.
# ---------------------------------------------------------------------------------------------


def make_train_step(model: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    loss_weights: Mapping[str, float], stats_mask: Any,
                    trunks_frozen: bool = False) -> Callable:
    """(state, batch) -> (state, metrics). A non-finite loss or gradient leaves state unchanged.

    Frozen trunks (``trunks_frozen``: no trunk parameter trainable) run exactly as at evaluation,
    normalising with their running BatchNorm statistics, which stay bit-identical. Any other
    frozen BatchNorm (``stats_mask`` False) normalises with batch statistics but keeps its
    running averages.
    """
    loss_of_head = models.output_heads(model)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, updates = model.apply(variables, batch["image"], train=True,
                                          train_trunks=not trunks_frozen,
                                          mutable=["batch_stats"])
            # A release with missing labels sends their mask; NIH sends none (unmasked losses).
            per_head = losses.head_losses(logits, batch["labels"], loss_of_head,
                                          batch.get("label_mask"))
            total = losses.weighted_total(per_head, loss_weights)
            return total, (per_head, updates.get("batch_stats", state.batch_stats))

        (total, (per_head, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_stats = jax.tree.map(lambda keep_new, old, new: new if keep_new else old,
                                 stats_mask, state.batch_stats, new_stats)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                                  opt_state=opt_state)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        out = {"loss": total, "grad_norm": grad_norm, "lr": schedule(state.step),
               "finite": finite, **{f"loss_{h}": v for h, v in per_head.items()}}
        return new_state, out

    return step


def create_stage(config: mlc.ConfigDict, index: int, model: Any, variables: dict,
                 steps_per_epoch: int, mesh: Mesh) -> tuple[TrainState, Callable]:
    """The replicated initial state of stage ``index`` and its jitted, donating train step.

    ``variables`` may be shapes only (``runs.abstract_variables``): the state is then too, with
    its shardings, for a checkpoint to be restored into.
    """
    stage, t = config.train.stages[index], config.train
    heads = models.output_heads(config.model)
    weights = {h: float(stage.loss_weights.get(h, 0.0)) for h in heads}
    mask = trainable_mask(variables["params"], stage.trainable)
    if not any(jax.tree.leaves(mask)):
        raise ConfigError(f"train.stages[{index}].trainable={stage.trainable!r} matches no "
                          "parameter")
    stats_mask = trainable_mask(variables["batch_stats"], stage.trainable)
    trunks_frozen = not any(jax.tree.leaves({k: v for k, v in mask.items()
                                             if k.startswith("trunk_")}))
    schedule = learning_rate_schedule(t, steps_per_epoch)
    tx = make_optimizer(t, schedule, mask)
    repl, data = replicated(mesh), batch_sharded(mesh)

    def initial_state(v: dict) -> TrainState:
        return TrainState(step=jnp.zeros((), jnp.int32), params=v["params"],
                          batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]))

    step = jax.jit(make_train_step(model, tx, schedule, weights, stats_mask, trunks_frozen),
                   in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(variables)):
        # Shapes only (a resume): the state a checkpoint is restored into; nothing is computed.
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                            jax.eval_shape(initial_state, variables)), step
    # A copy: the step donates its state, and the caller's variables must stay usable.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), initial_state(variables))
    return jax.device_put(state, repl), step


# ---------------------------------------------------------------------------------------------
# Host batches -> global arrays, prefetched on a thread so the device never waits for the host.
# ---------------------------------------------------------------------------------------------


def prefetch_to_mesh(iterator: Iterator[dict], sharding: NamedSharding, size: int = 2,
                     ) -> Iterator[tuple[dict, Any]]:
    """Yields (global batch, iterator state after that batch), ``size`` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=max(size, 1))
    done = object()

    def producer():
        try:
            for host_batch in iterator:
                state = iterator.get_state() if hasattr(iterator, "get_state") else None
                arrays = {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
                          for k, v in host_batch.items()}
                q.put((arrays, state))
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    threading.Thread(target=producer, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


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

    ``watcher`` is asked after every step; when it names the step, that step is saved (if its
    cadence did not save it already), the write completes, and ``Preempted`` is raised.
    """
    stage, t = config.train.stages[index], config.train
    steps_per_epoch = ds.steps_per_epoch
    total_steps = stage.epochs * steps_per_epoch
    data = batch_sharded(mesh)
    manager = checkpoint.open_manager(runs.stage_dir(workdir, index, stage), t.keep_checkpoints)
    # A resume restores into the state's shapes: nothing is initialised, no weights file read.
    resuming = bool(manager.all_steps())
    state, train_step = create_stage(
        config, index, model,
        runs.abstract_variables(model, config) if resuming else initial_variables(),
        steps_per_epoch, mesh)

    train_iter = ds.train_iter()
    restored = checkpoint.restore(manager, state) if resuming else None
    if resuming and restored is None:  # every checkpoint was unreadable (and set aside)
        state, train_step = create_stage(config, index, model, initial_variables(),
                                         steps_per_epoch, mesh)
    if restored is not None:
        step, state, data_state, _ = restored
        state = jax.device_put(state, replicated(mesh))
        try:
            train_iter.set_state(data_state)
        except ValueError as e:  # another batch size or dataset than the checkpoint's
            raise workdir_lib.WorkdirError(f"cannot resume stage {stage.name} in {workdir}: {e}; "
                                           f"or {workdir_lib.WAYS_OUT}") from None
        log.info("stage %s: resumed at step %d of %d", stage.name, step, total_steps)
    step = int(state.step)
    if step >= total_steps:
        manager.wait_until_finished()
        return manager.best_step() or manager.latest_step()

    batches = prefetch_to_mesh(train_iter, data, size=max(config.data.prefetch, 1))
    pending: tuple[int, dict] | None = None  # metrics of the previous step, checked one behind
    last_log, last_log_step = time.perf_counter(), step
    bar = progress(total=steps_per_epoch, initial=step % steps_per_epoch,
                   desc=f"{stage.name} epoch {step // steps_per_epoch + 1}/{stage.epochs}")
    data_state = train_iter.get_state()
    saved = None  # the last step this process asked to checkpoint
    while step < total_steps:
        batch, next_data_state = next(batches)
        state, step_metrics = train_step(state, batch)
        if pending is not None:
            _check_finite(*pending, manager)
        pending = (step + 1, step_metrics)
        step, data_state = step + 1, next_data_state
        bar.update(1)

        if step % t.log_every_steps == 0 or step % steps_per_epoch == 0:
            _check_finite(*pending, manager)
            now = time.perf_counter()
            values = {k: float(v) for k, v in jax.device_get(step_metrics).items()
                      if k != "finite"}
            values["img_per_s"] = (step - last_log_step) * t.batch_size / (now - last_log)
            last_log, last_log_step = now, step
            writer.write(step, {f"train/{k}": v for k, v in values.items()}, stage=stage.name)
            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['img_per_s']:.0f}")

        end_of_epoch = step % steps_per_epoch == 0
        if end_of_epoch or step % t.checkpoint_every_steps == 0:
            _check_finite(*pending, manager)  # never checkpoint a step that was not applied
            val_auc = None
            meta = {"stage": stage.name, "epoch": step / steps_per_epoch}
            if end_of_epoch:
                bar.close()
                val = evaluator.validate({"params": state.params,
                                          "batch_stats": state.batch_stats})
                val_auc = val["mean_auc"]
                writer.write(step, {"val/mean_auc": val["mean_auc"], "val/w_auc": val["w_auc"]},
                             stage=stage.name)
                meta.update(val_mean_auc=val["mean_auc"], val_w_auc=val["w_auc"])
                log.info("stage %s epoch %d: val mean AUC %.4f, W-AUC %.4f", stage.name,
                         step // steps_per_epoch, val["mean_auc"], val["w_auc"])
                if step < total_steps:
                    bar = progress(total=steps_per_epoch, desc=f"{stage.name} epoch "
                                   f"{step // steps_per_epoch + 1}/{stage.epochs}")
            checkpoint.save(manager, step, state, data_state, meta, val_auc)
            saved = step
        if watcher is not None and watcher.reached(step):  # every step, on every process
            bar.close()
            log.warning("preemption notice: saving step %d of stage %s, then stopping", step,
                        stage.name)
            if saved != step:
                _check_finite(*pending, manager)
                checkpoint.save(manager, step, state, data_state,
                                {"stage": stage.name, "epoch": step / steps_per_epoch})
            manager.wait_until_finished()
            raise Preempted(step, manager.directory)
    bar.close()
    manager.wait_until_finished()
    return manager.best_step() or manager.latest_step()


def _check_finite(step: int, step_metrics: dict, manager: Any) -> None:
    if bool(step_metrics["finite"]):
        return
    values = jax.device_get(step_metrics)
    bad = [k.removeprefix("loss_") for k, v in values.items()
           if k.startswith("loss_") and not np.isfinite(v)]
    what = f"head(s) {', '.join(bad)}" if bad else "the gradient"
    manager.wait_until_finished()
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

    A workdir holding a run of another config is refused untouched (``workdir.claim``);
    ``restart`` first moves such a run aside. A run that fails before writing more than its
    config leaves no workdir behind. ``command``: the config file and overrides, for the report.
    """
    check_config(config)
    sections.check(config)
    workdir = fileio.expand(workdir)
    if restart:
        moved = workdir_lib.move_aside(workdir)
        if moved:
            log.info("moved the run in %s aside to %s; starting over", workdir, moved)
    claim = workdir_lib.claim(workdir, config, command)
    try:
        return _train_and_evaluate(config, workdir)
    except BaseException:
        claim.release()
        raise


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
    # A SIGTERM while training: save that step and stop (Preempted). One during the final test
    # is not caught: there is nothing to save then, and a rerun tests again.
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
    return evaluator.test_and_report(initial(), workdir, config).results
