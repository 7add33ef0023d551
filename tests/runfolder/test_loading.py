"""Tests of cxrjax.runfolder.loading: the workdir layout, its config, and loading a trained model
from it."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import flip_a_bit, random_variables, tiny_config, truncate_files

from cxrjax import models, train_step
from cxrjax.evaluation import inference
from cxrjax.io import checkpoint
from cxrjax.runfolder import loading as runs


def _save_variables(directory: str, step: int, variables: dict, val_auc: float | None = None):
    """A checkpoint as training writes it: the whole TrainState, data position and record."""
    manager = checkpoint.open_manager(directory, keep=10)
    state = train_step.TrainState(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             opt_state=optax.adam(1e-3).init(variables["params"]))
    checkpoint.save(manager, step, state, {}, {}, val_auc)
    manager.wait_until_finished()


def _variables(seed: int, width: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {"params": {"head": {"kernel": jnp.asarray(rng.normal(size=(width, 2)), jnp.float32)}},
            "batch_stats": {"bn": {"var": jnp.asarray(rng.random(2), jnp.float32)}}}


def test_stage_dir_names_the_stage_by_index_and_name():
    config = importlib.import_module("configs.r18_msml_local").get_config()
    assert runs.stage_dir("/w", 1, config.train.stages[1]) == "/w/checkpoints/stage1_bilinear"


def test_a_recorded_config_loads_back_equal_with_attribute_stages(tmp_path):
    config = importlib.import_module("configs.r18_msml_local_fixed").get_config()
    runs.record_config(str(tmp_path), config)

    loaded = runs.load_config(str(tmp_path))
    assert json.loads(loaded.to_json()) == json.loads(config.to_json_best_effort())
    assert loaded.train.stages[1].trainable == "^(?!trunk_).*"
    assert runs.final_stage_dir(str(tmp_path)) == str(tmp_path / "checkpoints" /
                                                      "stage1_bilinear")
    assert (tmp_path / "eval").is_dir()


def test_an_old_config_json_without_newer_fields_loads_with_the_recipes_defaults(tmp_path):
    old = json.loads(importlib.import_module("configs.r18").get_config().to_json_best_effort())
    for section, field in (("data", "synthetic_seed"), ("data", "prepare_workers"),
                           ("eval", "threshold_rule")):
        old[section].pop(field, None)
    old["train"]["stages"][0].pop("trainable")
    old["data"]["resolution"] = 64  # what the run recorded wins over the recipe
    (tmp_path / "config.json").write_text(json.dumps(old))

    loaded = runs.load_config(str(tmp_path))
    assert loaded.data.synthetic_seed == 0 and loaded.data.prepare_workers == 0
    assert loaded.eval.threshold_rule == "youden"
    assert loaded.train.stages[0].trainable == ".*" and loaded.data.resolution == 64


def test_recording_a_config_in_an_unusable_workdir_is_a_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"workdir .*a_file/run is not usable"):
        runs.record_config(str(tmp_path / "a_file" / "run"), tiny_config("r18"))


def test_load_config_of_a_directory_without_config_json_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a cxrjax workdir"):
        runs.load_config(str(tmp_path))


def test_load_config_of_a_cut_config_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {"trunk_a": "resn')
    with pytest.raises(ValueError, match=r"config.json is not a readable config"):
        runs.load_config(str(tmp_path))


def test_best_step_is_the_best_validated_step_and_else_the_latest(tmp_path):
    validated, unvalidated = str(tmp_path / "a"), str(tmp_path / "b")
    for step, auc in ((1, 0.7), (2, 0.9), (3, 0.8)):
        _save_variables(validated, step, _variables(step), auc)
    for step in (4, 8):
        _save_variables(unvalidated, step, _variables(step))
    assert runs.best_step(validated) == 2
    assert runs.best_step(unvalidated) == 8


def test_best_step_of_a_stage_without_checkpoints_says_training_has_not_finished_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished a checkpoint"):
        runs.best_step(str(tmp_path / "checkpoints" / "stage0_global"))


def test_restore_variables_reads_params_and_batch_stats_replicated_on_the_mesh(tmp_path):
    directory = str(tmp_path / "ckpt")
    _save_variables(directory, 5, _variables(1), 0.9)
    _save_variables(directory, 6, _variables(2), 0.8)
    mesh = inference.create_mesh()
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _variables(0))

    restored = runs.restore_variables(directory, template, mesh=mesh)  # default: the best
    jax.tree.map(np.testing.assert_array_equal, restored, _variables(1))
    assert all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) ==
               len(jax.devices()) for leaf in jax.tree.leaves(restored))
    jax.tree.map(np.testing.assert_array_equal,
                 runs.restore_variables(directory, template, 6, mesh=mesh), _variables(2))


def test_restore_variables_of_another_models_checkpoint_is_a_checkpoint_error(tmp_path):
    directory = str(tmp_path / "ckpt")
    _save_variables(directory, 1, _variables(0, width=3))
    other = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _variables(0, width=4))
    with pytest.raises(checkpoint.CheckpointError, match="does not match this model"):
        runs.restore_variables(directory, other, 1, mesh=inference.create_mesh())


def test_restore_variables_of_a_truncated_step_is_a_checkpoint_error(tmp_path):
    directory = str(tmp_path / "ckpt")
    _save_variables(directory, 1, _variables(0))
    truncate_files(os.path.join(directory, "1", "state"))
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _variables(0))
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint 1 in .* is unreadable"):
        runs.restore_variables(directory, template, 1, mesh=inference.create_mesh())


def test_restore_variables_of_a_step_with_a_flipped_bit_is_a_checkpoint_error(tmp_path):
    directory = str(tmp_path / "ckpt")
    _save_variables(directory, 1, _variables(0, width=4096))  # the kernel fills the array files
    flip_a_bit(os.path.join(directory, "1", "state"))
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            _variables(0, width=4096))
    with pytest.raises(checkpoint.CheckpointError,
                       match="checkpoint 1 in .* is unreadable.*ChecksumMismatch"):
        runs.restore_variables(directory, template, 1, mesh=inference.create_mesh())


def test_load_run_returns_the_best_checkpoint_of_the_last_stage(tmp_path):
    config = tiny_config("r18_msml_local")
    runs.record_config(str(tmp_path), config)
    model = models.build_model(config.model)
    stage0 = runs.stage_dir(str(tmp_path), 0, config.train.stages[0])
    last = runs.final_stage_dir(str(tmp_path))
    _save_variables(stage0, 3, random_variables(model, config.data.crop, seed=0), 0.9)
    best = random_variables(model, config.data.crop, seed=1)
    _save_variables(last, 3, best, 0.8)
    _save_variables(last, 6, random_variables(model, config.data.crop, seed=2), 0.7)

    loaded_config, loaded_model, variables, step = runs.load_run(str(tmp_path),
                                                                 inference.create_mesh())
    assert step == 3
    assert json.loads(loaded_config.to_json()) == json.loads(config.to_json_best_effort())
    assert jax.tree.structure(runs.abstract_variables(loaded_model, loaded_config)) == \
        jax.tree.structure(best)  # the run's model, the one its variables belong to
    jax.tree.map(np.testing.assert_array_equal, variables, best)


def test_load_run_of_a_missing_workdir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"workdir not found: .*nowhere"):
        runs.load_run(str(tmp_path / "nowhere"), inference.create_mesh())
