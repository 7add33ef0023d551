"""Tests of the training step and stages (no data pipeline: batches made here).

Compiling the steps is nearly all of this module's time: each model is initialised once, each
stage's jitted step is compiled once and served to every test that steps it (XLA's costly
optimisation passes are off for the whole suite: tests/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PAPER_CONFIGS, count_compiles, tiny_config

from cxrjax import models, train, train_step
from cxrjax.config_checks import ConfigError
from cxrjax.evaluation import inference
from cxrjax.runfolder import loading as runs


def fixed_batch(batch: int = 8, crop: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    labels = (rng.random((batch, 14)) < 0.3).astype(np.uint8)
    labels[0] = 0
    return {"image": rng.integers(0, 256, (batch, crop, crop, 1), dtype=np.uint8),
            "labels": labels}


def snapshot(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


# Steps per epoch of the stages built here: tiny_data's at batch 8 (tests/conftest.py), so a
# tiny row's step is the very program its end-to-end runs compile, served by the session's
# compilation cache to whichever needs it second.
STEPS_PER_EPOCH = 13

_MODELS: dict = {}  # a model config (JSON) -> (model, initial variables)


def initialised(name: str) -> tuple:
    """The tiny config of ``name``, its model and its initial variables: once per distinct model
    (the three R18 + R18-F-MSML strategies share one), never donated (create_stage copies)."""
    config = tiny_config(name)
    key = (config.model.to_json(), config.seed, config.data.crop)
    if key not in _MODELS:
        _MODELS[key] = runs.init_model(config, jnp.float32)
    return (config, *_MODELS[key])


_STEPS: dict = {}  # (config name, stage index) -> the jitted step first built for it


def stage(name: str, index: int) -> tuple:
    """A fresh initial state of stage ``index`` of ``name`` and that stage's step, compiled by
    whichever test stepped it first (the state is new each call: the step donates it)."""
    config, model, variables = initialised(name)
    state, step = train_step.create_stage(config, index, model, variables, STEPS_PER_EPOCH,
                                          inference.create_mesh())
    return state, _STEPS.setdefault((name, index), step)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_paper_config_learns_a_fixed_batch(name):
    """Repeated steps on one batch lower the loss of every stage (a learning check)."""
    config, model, variables = initialised(name)
    for index in range(len(config.train.stages)):
        # A step of its own: the count below sees its one compilation (a persistent-cache load
        # where another config compiled the same program).
        state, step = train_step.create_stage(config, index, model, variables, STEPS_PER_EPOCH,
                                              inference.create_mesh())
        _STEPS.setdefault((name, index), step)
        batch = fixed_batch()
        first = None
        with count_compiles() as compiles:
            for _ in range(6):
                state, metrics = step(state, batch)
                first = float(metrics["loss"]) if first is None else first
        assert float(metrics["loss"]) < first, (name, index)
        assert bool(metrics["finite"])
        assert compiles["step"] == 1  # compiled once, never again


def test_a_stage_built_from_shapes_is_the_concrete_states_tree_to_restore_into():
    """What a resume restores into: stage two of Local-Fixed (frozen trunks, so a masked
    optimizer state) from shapes alone has the tree, shapes, dtypes and shardings of the real
    state, and nothing is computed."""
    config = tiny_config("r18_msml_local_fixed")
    concrete, _ = stage("r18_msml_local_fixed", 1)
    model = models.build_model(config.model)
    shapes, _ = train_step.create_stage(config, 1, model, runs.abstract_variables(model, config),
                                        STEPS_PER_EPOCH, inference.create_mesh())
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    for s, c in zip(jax.tree.leaves(shapes), jax.tree.leaves(concrete), strict=True):
        assert isinstance(s, jax.ShapeDtypeStruct)
        assert (s.shape, s.dtype, s.sharding) == (c.shape, c.dtype, c.sharding)


def test_a_stage_state_is_one_compiled_program_and_a_step_leaves_the_variables_usable():
    """The initial state is made by one program, not an eager op per leaf (37 compiles for a
    tiny ResNet18), in buffers of its own: the step donates it, the variables stay readable."""
    config, model, variables = initialised("r18")
    with count_compiles() as compiles:
        state, step = train_step.create_stage(config, 0, model, variables, STEPS_PER_EPOCH,
                                              inference.create_mesh())
    assert sum(compiles.values()) == 1, compiles
    before = snapshot(variables)
    _STEPS.setdefault(("r18", 0), step)(state, fixed_batch())
    jax.tree.map(np.testing.assert_array_equal, before, snapshot(variables))


def test_local_fixed_stage_two_keeps_trunks_and_their_batch_stats_bit_identical():
    state, step = stage("r18_msml_local_fixed", 1)
    before = snapshot(state)
    for seed in range(3):
        state, _ = step(state, fixed_batch(seed=seed))
    after = snapshot(state)
    for tree in ("params", "batch_stats"):
        for trunk in ("trunk_a", "trunk_b"):
            jax.tree.map(np.testing.assert_array_equal, getattr(before, tree)[trunk],
                         getattr(after, tree)[trunk])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.params["head_fce"],
                           after.params["head_fce"])
    assert all(jax.tree.leaves(changed))


def test_global_stage_updates_trunk_batch_stats():
    state, step = stage("r18_msml", 0)
    before = snapshot(state.batch_stats)
    state, _ = step(state, fixed_batch())
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, snapshot(
        state.batch_stats))
    assert all(jax.tree.leaves(changed))


def test_non_finite_batch_leaves_state_unchanged_and_names_step_and_head():
    state, step = stage("r18_msml", 0)
    state, _ = step(state, fixed_batch())
    before = snapshot(state)
    bad = fixed_batch()
    bad["labels"] = bad["labels"].astype(np.float32)
    bad["labels"][1, 2] = np.nan  # reaches the CE heads (MSML reads labels as booleans)
    state, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, before, snapshot(state))

    class Manager:
        def wait_until_finished(self):
            pass

        def latest_step(self):
            return 7

    with pytest.raises(FloatingPointError, match=r"step 2 in head\(s\) ce, fce .*step 7"):
        train._check_finite(2, metrics, Manager())


def test_a_stage_pattern_that_matches_no_parameter_is_refused():
    config, model, variables = initialised("r18_msml_local_fixed")
    config.train.stages[1].trainable = "^nothing_matches$"
    with pytest.raises(ConfigError, match=r"stages\[1\].trainable='\^nothing_matches\$'"):
        train_step.create_stage(config, 1, model, variables, 10, inference.create_mesh())
