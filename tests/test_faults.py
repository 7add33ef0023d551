"""Faults survived with nothing lost: corrupt checkpoints, NaN batches, unusable directories."""

import logging
import os
import shutil

import numpy as np
import pytest
from helpers import run_config, sections_off, truncate_files

from cxrjax import train
from cxrjax.io import checkpoint
from cxrjax.runfolder import loading as runs


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_resumes(
        tiny_data, tmp_path, caplog):
    config = sections_off(run_config("r18", tiny_data))
    config.train.checkpoint_every_steps = 4
    train.train_and_evaluate(config, str(tmp_path))
    stage_dir = runs.stage_dir(str(tmp_path), 0, config.train.stages[0])
    steps = sorted(int(d) for d in os.listdir(stage_dir) if d.isdigit())
    truncate_files(os.path.join(stage_dir, str(steps[-1]), "state"))

    config.train.stages[0].epochs = 2  # the same command, asked to go on
    with caplog.at_level(logging.INFO):
        train.train_and_evaluate(config, str(tmp_path))
    assert f"checkpoint {steps[-1]} in {stage_dir} is unreadable" in caplog.text
    assert "resumed at step" in caplog.text and f"step {steps[-2]} of" in caplog.text


def test_nan_batch_stops_with_the_step_and_a_fixed_rerun_resumes(tiny_data, tmp_path,
                                                                 monkeypatch):
    config = sections_off(run_config("r18_msml", tiny_data))
    config.train.checkpoint_every_steps = 3
    prefetch = train.prefetch_to_mesh

    def poisoned(iterator, sharding, size=2):
        for k, (batch, state) in enumerate(prefetch(iterator, sharding, size), start=1):
            if k == 5:
                labels = np.asarray(batch["labels"]).astype(np.float32)
                labels[0, 0] = np.nan
                batch = {**batch, "labels": labels}
            yield batch, state

    monkeypatch.setattr(train, "prefetch_to_mesh", poisoned)
    with pytest.raises(FloatingPointError,
                       match=r"non-finite loss at step 5 in head\(s\) ce, fce .*checkpoint "
                             r"\(step 3\) is intact"):
        train.train_and_evaluate(config, str(tmp_path))
    stage_dir = runs.stage_dir(str(tmp_path), 0, config.train.stages[0])
    assert max(int(d) for d in os.listdir(stage_dir) if d.isdigit()) == 3

    monkeypatch.setattr(train, "prefetch_to_mesh", prefetch)  # the fix: clean data, lower lr
    config.train.lr = 1e-4
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["fused"]["mean_auc"])


def test_unusable_workdir_is_one_clear_error(tiny_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=r"workdir .*a_file/run is not usable"):
        train.train_and_evaluate(run_config("r18", tiny_data), str(blocker / "run"))


def test_vanished_data_directory_is_one_clear_error(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "tfds", data)
    config = run_config("r18", tiny_data)
    config.data.data_dir = str(data)
    shutil.rmtree(data)
    with pytest.raises(FileNotFoundError, match=r"no complete chest_xray14 dataset"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # a failed run leaves no empty workdir behind


def test_checkpoint_restore_without_any_checkpoint_is_none(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=2)
    assert checkpoint.restore(manager, {"x": np.zeros(2)}) is None


def test_another_models_checkpoint_is_an_error_and_is_never_set_aside_as_unreadable(tmp_path):
    directory = str(tmp_path / "ckpt")
    manager = checkpoint.open_manager(directory, keep=2)
    saved = {"params": {"head": {"kernel": np.ones((3, 2), np.float32)}}}
    checkpoint.save(manager, 18, saved, {}, {})
    manager.wait_until_finished()
    other = {"params": {"head": {"kernel": np.zeros((4, 2), np.float32)},
                        "stem": {"kernel": np.zeros((2,), np.float32)}}}
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"checkpoint 18 in .* is another model's or optimizer's "
                             r"\(1 array\(s\) missing, e.g. params/stem/kernel; 1 of another "
                             r"shape, e.g. "
                             r"params/head/kernel \(3, 2\) instead of \(4, 2\)\); it was left"):
        checkpoint.restore(manager, other)
    assert sorted(os.listdir(directory)) == ["18"]  # not renamed 18.unreadable
    step, state, _, _ = checkpoint.restore(manager, saved)  # and still the run's own
    assert step == 18 and state["params"]["head"]["kernel"].shape == (3, 2)
