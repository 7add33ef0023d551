"""cxrjax.runfolder.ownership: a run's folder is resumed by the same config only, restarted only on
request."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import cli_env, random_variables, run_config, sections_off, tiny_config

from cxrjax import models, train, train_step
from cxrjax.evaluation import inference
from cxrjax.io import checkpoint
from cxrjax.models import port
from cxrjax.runfolder import loading as runs
from cxrjax.runfolder import ownership as workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snapshot(folder) -> dict[str, tuple]:
    """Every file and folder under ``folder``: its content hash and modification time."""
    out = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, folder)] = (digest, os.stat(path).st_mtime_ns)
    return out


def _finished_run(folder, config) -> None:
    """A workdir as a finished run leaves it: config, a checkpoint, log, report."""
    workdir.claim(str(folder), config).unlock()
    model = models.build_model(config.model)
    variables = random_variables(model, config.data.crop)
    manager = checkpoint.open_manager(runs.stage_dir(str(folder), 0, config.train.stages[0]), 3)
    state = train_step.TrainState(step=jnp.asarray(18, jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             opt_state=optax.adam(1e-3).init(variables["params"]))
    checkpoint.save(manager, 18, state, {"step": 18}, {"stage": "global"}, 0.7)
    manager.wait_until_finished()
    (folder / "metrics.jsonl").write_text('{"step": 18, "stage": "global", "val/mean_auc": 0.7}\n')
    (folder / "report.md").write_text("# the R18 run's report\n")


def test_d121_over_an_r18_run_is_refused_in_one_line_and_nothing_is_touched(tmp_path):
    run = tmp_path / "r18"
    _finished_run(run, tiny_config("r18"))
    before = _snapshot(run)
    with pytest.raises(workdir.WorkdirError) as refused:
        train.train_and_evaluate(tiny_config("d121"), str(run))
    message = str(refused.value)
    assert "\n" not in message and "model.trunk_a \"resnet_tiny\" -> \"densenet_tiny\"" in message
    assert "nothing in it was changed" in message and "--restart" in message
    assert _snapshot(run) == before  # no config.json rewrite, nothing set aside, no log line


def test_a_batch_size_change_on_a_finished_run_is_refused_in_one_line(tmp_path):
    run = tmp_path / "r18"
    config = tiny_config("r18")
    _finished_run(run, config)
    before = _snapshot(run)
    config.train.batch_size = 16
    with pytest.raises(workdir.WorkdirError, match=r"^refusing to use .*train\.batch_size 8 -> 16"
                       r"[^\n]*$"):
        train.train_and_evaluate(config, str(run))
    assert _snapshot(run) == before


def test_main_refuses_another_config_with_one_line_on_stderr_and_exit_2(tmp_path):
    run = tmp_path / "r18"
    _finished_run(run, tiny_config("r18"))
    before = _snapshot(run)
    done = subprocess.run(
        [sys.executable, "-m", "cxrjax.main", "--config", os.path.join(ROOT, "configs", "d121.py"),
         "--workdir", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=cli_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: refusing to use ") and "model.trunk_a" in done.stderr
    assert _snapshot(run) == before


def test_fields_that_may_change_on_resume_and_a_stages_epochs_are_no_difference():
    recorded = tiny_config("r18_msml_local")
    config = tiny_config("r18_msml_local")
    config.train.lr = 1e-4  # lowered after a non-finite loss, as that error asks
    config.train.log_every_steps = 3
    config.train.checkpoint_every_steps = 7
    config.train.keep_checkpoints = 1
    config.eval.n_boot = 5
    config.eval.threshold_rule = "max_f1"
    config.data.workers, config.data.data_dir = 0, "/elsewhere"
    config.model.dense_scan_chunk = 8  # the same parameters, compiled another way
    config.train.stages[1].epochs = 5
    assert workdir.config_differences(recorded, config, started_stages=2) == []
    # Stage 0's epochs may change only while stage 1 has not started from it.
    config.train.stages[0].epochs = 8
    assert workdir.config_differences(recorded, config, started_stages=1) == []
    assert workdir.config_differences(recorded, config, started_stages=2) == [
        "train.stages[0].epochs 6 -> 8"]


def test_a_resume_after_a_change_of_logging_and_evaluation_fields_initialises_nothing(
        tiny_data, tmp_path, monkeypatch, caplog):
    """A resume reads neither a random init nor the pretrained weights file (a frozen-trunk
    stage's state from shapes: test_train.py)."""
    config = sections_off(run_config("r18", tiny_data))
    weights = tmp_path / "weights"
    weights.mkdir()
    classifier = models.create_classifier("resnet_tiny")
    port.save_variables(str(weights / "resnet_tiny_imagenet.npz"),
                        jax.jit(classifier.init)(jax.random.key(7, impl="rbg"),
                                                 jnp.zeros((1, 32, 32, 3))), arch="resnet_tiny")
    config.model.init, config.model.weights_dir = "imagenet", str(weights)
    run = tmp_path / "run"
    train.train_and_evaluate(config, str(run))
    (weights / "resnet_tiny_imagenet.npz").unlink()  # a resume must not need it

    def no_init(*_):
        raise AssertionError("a resumed stage initialised the model's variables")

    monkeypatch.setattr(runs, "random_variables", no_init)
    config.train.log_every_steps = 3
    config.eval.n_boot = 7
    config.train.stages[0].epochs = 2  # and train one epoch longer
    with caplog.at_level(logging.INFO, logger="cxrjax"):
        results = train.train_and_evaluate(config, str(run))
    assert "resumed at step" in caplog.text
    assert results["fused"]["n_boot"] == 7 and results["fused"]["n_images"] > 0
    assert runs.load_config(str(run)).train.log_every_steps == 3  # the record follows


def test_restart_moves_the_old_run_aside_whole_and_a_failed_new_run_leaves_no_workdir(
        tmp_path):
    run = tmp_path / "run"
    _finished_run(run, tiny_config("r18"))
    before = _snapshot(run)
    config = tiny_config("d121")
    config.data.source, config.data.data_dir = "nih", str(tmp_path / "no_data_here")
    with pytest.raises(FileNotFoundError):
        train.train_and_evaluate(config, str(run), restart=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _snapshot(aside[0]) == before  # kept whole, nothing deleted
    assert not run.exists()  # the new run failed before writing anything but its config


def test_restart_leaves_a_folder_that_holds_no_run_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert workdir.move_aside(str(tmp_path)) is None
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_with_run_files_but_no_config_json_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(workdir.WorkdirError, match="holds checkpoints but no config.json"):
        workdir.claim(str(tmp_path), tiny_config("r18"))


def test_a_failed_run_in_an_existing_empty_folder_leaves_it_empty(tmp_path):
    config = tiny_config("r18")
    config.data.source, config.data.data_dir = "nih", str(tmp_path / "no_data_here")
    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(FileNotFoundError):
        train.train_and_evaluate(config, str(folder))
    assert folder.is_dir() and os.listdir(folder) == []


def test_the_command_is_recorded_beside_the_config(tmp_path):
    command = {"config_file": "configs/r18.py", "overrides": ["--config.seed=1"]}
    workdir.claim(str(tmp_path), tiny_config("r18"), command)
    assert workdir.read_command(str(tmp_path)) == command
    assert json.loads((tmp_path / "command.json").read_text()) == command


def test_evaluating_a_run_with_another_models_config_is_refused(tmp_path):
    from cxrjax.evaluation import evaluator

    run = tmp_path / "r18"
    _finished_run(run, tiny_config("r18"))
    with pytest.raises(workdir.WorkdirError, match=r"refusing to evaluate .* with another model "
                       r"or training config \(model.trunk_a \"resnet_tiny\" -> \"densenet_tiny\""):
        evaluator.evaluate_run(str(run), config=tiny_config("d121"), write=True)
    assert not (run / "eval" / "test_metrics.json").exists()


def test_a_checkpoint_from_another_input_pipeline_stops_the_resume_in_one_line(
        tiny_data, tmp_path):
    # The same config over data of another size (a moved data_dir may hold another set): the
    # checkpoint's iterator position means nothing here.
    config = run_config("r18", tiny_data)
    workdir.claim(str(tmp_path), config)
    model = models.build_model(config.model)
    state, _ = train_step.create_stage(config, 0, model,
                                       random_variables(model, config.data.crop), 3,
                                       inference.create_mesh())
    manager = checkpoint.open_manager(runs.stage_dir(str(tmp_path), 0, config.train.stages[0]), 3)
    other = {"step": 2, "seed": config.seed, "global_batch_size": 8, "steps_per_epoch": 3}
    checkpoint.save(manager, 2, state.replace(step=jnp.asarray(2, jnp.int32)), other, {})
    manager.wait_until_finished()
    with pytest.raises(workdir.WorkdirError, match=r"^cannot resume stage global in .*: train "
                       r"iterator state .* is from a different input pipeline[^\n]*--restart"):
        train.train_and_evaluate(config, str(tmp_path))
