"""End-to-end runs of train_and_evaluate on a tiny synthetic ChestX-ray14 (real builder, grain)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import SECTIONS_OFF_FLAGS, cli_env, count_compiles, run_config

from cxrjax import models, train
from cxrjax.evaluation import inference
from cxrjax.evaluation import prediction_files as predictions
from cxrjax.runfolder import loading as runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# test_train.py steps every paper config; end to end, three shapes of run are enough: the
# demo's F-MSML (Global), a two-stage Local-Fixed (stage 2 from stage 1's best, frozen trunks)
# and a one-stream, one-head row (fusion of the FCE head alone), that one without figures.
END_TO_END_CONFIGS = ["r18_msml", "r18_msml_local_fixed", "r18_bl"]
WITHOUT_FIGURES = "r18_bl"


@pytest.mark.parametrize("name", END_TO_END_CONFIGS)
def test_config_trains_an_epoch_and_leaves_its_report(name, tiny_data, tmp_path):
    config = run_config(name, tiny_data)
    config.eval.figures = name != WITHOUT_FIGURES
    with count_compiles() as compiles:
        results = train.train_and_evaluate(config, str(tmp_path))

    assert compiles["step"] == len(config.train.stages)  # one train step per stage, no recompiles
    ids, scores = predictions.load_predictions(tmp_path / "eval" / "test_predictions.csv")
    assert len(ids) == len(set(ids)) == results["fused"]["n_images"] > 0
    assert scores.shape == (len(ids), 14) and np.all((scores >= 0) & (scores <= 1))
    with open(tmp_path / "eval" / "test_metrics.json") as f:
        saved = json.load(f)
    assert {"per_class", "mean_auc", "w_auc", "d_auc", "n_auc", "mean_auc_ci95",
            "heads"} <= set(saved)
    assert set(saved["heads"]) == set(models.output_heads(config.model))
    report = (tmp_path / "report.md").read_text()
    assert report.count("|") > 50
    pictures = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    if config.eval.figures:
        assert {"eval/roc_curves.png", "training_curves.png", "eval/reliability.png",
                "eval/localization.png", "eval/subgroups.png"} <= pictures
        for png in pictures:
            assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # every number and table, no picture, and no link to one
        assert pictures == set() and "Not drawn: `eval.figures = False`." in report
        assert "primary" in saved["localization"] and "gaps" in saved["subgroups"]
        for text in (tmp_path / "eval").glob("*.md"):
            assert ".png" not in text.read_text(), text
        assert ".png" not in report
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any("val/mean_auc" in r for r in log) and any("train/loss" in r for r in log)


def _main(workdir, data_root, extra=(), quiet=False):
    c = run_config("r18_msml", data_root, epochs=2)
    overrides = [
        f"--config.model.trunk_a={c.model.trunk_a}", f"--config.model.trunk_b={c.model.trunk_b}",
        "--config.model.bilinear_dim=16", "--config.model.init=scratch",
        "--config.data.source=nih", f"--config.data.manual_dir={c.data.manual_dir}",
        f"--config.data.data_dir={c.data.data_dir}", "--config.data.resolution=40",
        "--config.data.crop=32", "--config.data.workers=0", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=16", "--config.train.checkpoint_every_steps=4",
        "--config.train.lr=0.001", "--config.train.stages[0].epochs=2", "--config.eval.n_boot=10",
        *SECTIONS_OFF_FLAGS]  # the parameters are the point here
    env = cli_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "cxrjax.main", "--config", os.path.join(ROOT, "configs",
                                                                      "r18_msml.py"),
         "--workdir", str(workdir), *overrides, *extra],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def _final_params(workdir):
    """The last step of the run and its parameters and batch statistics."""
    config = runs.load_config(str(workdir))
    directory = runs.final_stage_dir(str(workdir))
    last = max(int(d) for d in os.listdir(directory) if d.isdigit())
    template = runs.abstract_variables(models.build_model(config.model), config)
    return last, runs.restore_variables(directory, template, last, mesh=inference.create_mesh())


def _kill_when(proc, ready, timeout: float = 600) -> bool:
    """SIGKILLs ``proc`` as soon as ``ready()`` holds; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


def test_killed_run_resumes_to_the_parameters_of_an_uninterrupted_run(tiny_data, tmp_path):
    """kill -9 twice: during a checkpoint write, then right after one, mid-way through the
    second epoch (13 steps an epoch, a checkpoint every 4 steps and at each epoch's end)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ckpt = killed / "checkpoints" / "stage0_global"
    entries = lambda: os.listdir(ckpt) if ckpt.is_dir() else []  # noqa: E731
    steps = lambda: [int(d) for d in entries() if d.isdigit()]  # noqa: E731
    kill_points = [
        lambda: any("tmp" in d for d in entries()),  # a checkpoint write in flight
        lambda: len(steps()) >= 1 and max(steps()) >= 16,  # a finished one, epoch 2 mid-way
    ]
    killed_at = []
    for ready in kill_points:
        proc = _main(killed, tiny_data, quiet=True)  # nobody reads its output
        if _kill_when(proc, ready):
            killed_at.append(sorted(steps()))
    assert len(killed_at) == 2, killed_at  # both kills landed before the run ended
    assert 13 < max(killed_at[1]) < 26, killed_at  # killed mid-way through the second epoch
    proc = _main(killed, tiny_data)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "resumed at step" in out
    # The uninterrupted run, in this process, of the config the command recorded.
    train.train_and_evaluate(runs.load_config(str(killed)), str(straight))

    step_a, a = _final_params(straight)
    step_b, b = _final_params(killed)
    assert step_a == step_b
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise on CPU
