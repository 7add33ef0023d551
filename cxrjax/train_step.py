"""The pieces a training step is made of: the state, the optimizer with its frozen-parameter
mask, the jitted step of a stage, and host batches prefetched onto the mesh as global arrays.
The loop (``train.py``) runs them."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from cxrjax import losses, models
from cxrjax.config_checks import ConfigError
from cxrjax.evaluation.inference import batch_sharded, replicated

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
    # One compiled program makes the state in new buffers (the step donates its state, and the
    # caller's variables must stay usable); eagerly, each leaf's copy and each optimizer zero
    # would compile a program of its own (37 for a tiny ResNet18, ~1 s of CPU).
    state = jax.jit(lambda v: jax.tree.map(jnp.copy, initial_state(v)), out_shardings=repl)(
        jax.device_put(variables, repl))
    return state, step


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
