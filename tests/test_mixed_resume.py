"""A run on a mix of two sources, killed -9 after its first checkpoint, resumes to bitwise the
parameters of an uninterrupted run: the mixed iterator's state is checkpointed and restored."""

import logging
import os
import subprocess
import sys

import jax
import numpy as np
from helpers import SECTIONS_OFF_FLAGS, cli_env
from test_train_run import _final_params, _kill_when

from cxrjax import train
from cxrjax.runfolder import loading as runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mixed_main(workdir, tiny_data, tiny_chexpert):
    """``python -m cxrjax.main`` of a tiny R18 on nih+chexpert (3:1), a checkpoint every 4 steps."""
    overrides = [
        "--config.model.trunk_a=resnet_tiny", "--config.model.init=scratch",
        "--config.data.source=nih+chexpert", "--config.data.source_weights=(3, 1)",
        f"--config.data.manual_dir={tiny_data / 'nih'}",
        f"--config.data.data_dir={tiny_data / 'tfds'}",
        f"--config.data.data_dirs.chexpert={tiny_chexpert / 'tfds'}",
        "--config.data.resolution=40", "--config.data.crop=32", "--config.data.workers=0",
        "--config.train.batch_size=8", "--config.train.eval_batch_size=16",
        "--config.train.checkpoint_every_steps=4", "--config.train.lr=0.001",
        "--config.train.stages[0].epochs=1", "--config.eval.n_boot=10", *SECTIONS_OFF_FLAGS]
    env = cli_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "cxrjax.main", "--config", os.path.join(ROOT, "configs", "r18.py"),
         "--workdir", str(workdir), *overrides],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def test_mixed_run_killed_after_a_checkpoint_resumes_to_bitwise_equal_parameters(
        tiny_data, tiny_chexpert, tmp_path, caplog):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    ckpt = killed / "checkpoints" / "stage0_global"
    steps = lambda: [int(d) for d in os.listdir(ckpt) if d.isdigit()] if ckpt.is_dir() else []  # noqa: E731
    assert _kill_when(_mixed_main(killed, tiny_data, tiny_chexpert), lambda: bool(steps()))
    first = min(steps())

    config = runs.load_config(str(killed))  # the killed run's own config, rerun here
    assert config.data.source == "nih+chexpert"
    with caplog.at_level(logging.INFO, logger="cxrjax"):
        train.train_and_evaluate(config, str(killed))
    assert f"resumed at step {first} of" in caplog.text
    train.train_and_evaluate(config, str(straight))

    step_a, a = _final_params(straight)
    step_b, b = _final_params(killed)
    assert step_a == step_b == 19  # one epoch of the mix: (112 NIH + 41 CheXpert) // 8
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise on CPU
