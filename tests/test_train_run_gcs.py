"""End-to-end runs with the workdir and the data in a bucket (a real GCS API server, the
emulator): training, a SIGTERM then a kill -9 resumed to bitwise-equal parameters, evaluate and
predict on the run, and a bucket that cannot be used as one line."""

import glob
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from helpers import SECTIONS_OFF_FLAGS, cli_env, tiny_config

from cxrjax import evaluate, models, predict
from cxrjax.evaluation import inference
from cxrjax.io import fileio, mirror, preemption
from cxrjax.runfolder import loading as runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE = "checkpoints/stage0_global"  # r18_msml's one stage
PREEMPTED = re.compile(r"^preempted \(SIGTERM\): saved a checkpoint of step (\d+) in (\S+); "
                       r"run the same command again to resume$", re.M)


@pytest.fixture(scope="module")
def data_bucket(gcs_server, tiny_data):
    """The tiny set, prepared on the local disk (array_record cannot write to gs://) and copied
    up; of the NIH folder only its label table, which is all a run reads of it."""
    bucket = gcs_server.create_bucket()
    mirror.copy_tree(tiny_data / "tfds", f"{bucket}/tfds")
    (table,) = glob.glob(str(tiny_data / "nih" / "Data_Entry_2017*.csv*"))
    fileio.copy(table, f"{bucket}/nih/{os.path.basename(table)}")
    return bucket


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """This test host's CXRJAX_CACHE_DIR (local copies of the label table)."""
    return str(tmp_path_factory.mktemp("cxrjax_cache"))


def _main(workdir: str, bucket: str, cache: str, env: dict | None = None,
          figures: bool = False) -> subprocess.Popen:
    """``python -m cxrjax.main`` on a tiny F-MSML config, one epoch of 13 steps, data in
    ``bucket``; merged output on a pipe. ``figures``: draw the PNGs (written to the bucket)."""
    c = tiny_config("r18_msml")
    overrides = [
        f"--config.model.trunk_a={c.model.trunk_a}", f"--config.model.trunk_b={c.model.trunk_b}",
        "--config.model.bilinear_dim=16", "--config.model.init=scratch",
        "--config.data.source=nih", f"--config.data.manual_dir={bucket}/nih",
        f"--config.data.data_dir={bucket}/tfds", "--config.data.resolution=40",
        "--config.data.crop=32", "--config.data.workers=0", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=16", "--config.train.checkpoint_every_steps=4",
        "--config.train.log_every_steps=1", "--config.train.lr=0.001",
        "--config.train.stages[0].epochs=1", "--config.eval.n_boot=10",
        # the bucket's files and parameters are the point
        *(f for f in SECTIONS_OFF_FLAGS if not (figures and f.startswith("--config.eval.fig")))]
    env = cli_env(PYTHONUNBUFFERED="1", **{mirror.CACHE_ENV: cache}, **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "cxrjax.main", "--config",
         os.path.join(ROOT, "configs", "r18_msml.py"), "--workdir", workdir, *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class _Output:
    """A process's output lines, read on a thread (a full pipe would stall the process)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True).start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the reader's last lines
        return code, self.text


def _until(condition, proc: subprocess.Popen, timeout: float = 600) -> bool:
    """Polls ``condition`` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _logged_steps(workdir: str) -> list[int]:
    path = f"{workdir}/metrics.jsonl"
    if not fileio.exists(path):
        return []
    return [r["step"] for r in map(json.loads, fileio.read_text(path).splitlines())
            if "train/loss" in r]


def _steps(workdir: str) -> dict[int, bool]:
    """Checkpoint steps in the stage's folder -> complete (orbax's commit_success.txt there)."""
    folder = f"{workdir}/{STAGE}"
    if not fileio.exists(folder):
        return {}
    return {int(d): fileio.exists(f"{folder}/{d}/commit_success.txt")
            for d in fileio.listdir(folder) if d.isdigit()}


def _final_params(workdir: str):
    """The last checkpoint of the run and its parameters and batch statistics."""
    config = runs.load_config(workdir)
    directory = runs.final_stage_dir(workdir)
    last = max(s for s, done in _steps(workdir).items() if done)
    template = runs.abstract_variables(models.build_model(config.model), config)
    return last, runs.restore_variables(directory, template, last, mesh=inference.create_mesh())


@pytest.fixture(scope="module")
def straight_run(gcs_server, data_bucket, cache_dir):
    """An uninterrupted run in a bucket: gs://BUCKET/straight."""
    workdir = f"{data_bucket}/straight"
    code, out = _Output(_main(workdir, data_bucket, cache_dir, figures=True)).finish()
    assert code == 0, out[-3000:]
    return workdir


def test_a_run_in_a_bucket_leaves_its_checkpoints_logs_and_report_there(straight_run):
    files = fileio.walk_files(straight_run)
    for name in ("config.json", "metrics.jsonl", "report.md", "training_curves.png",
                 "eval/test_predictions.csv", "eval/test_metrics.json", "eval/roc_curves.png"):
        assert files.get(name, 0) > 0, (name, sorted(files))
    assert any(n.startswith("tensorboard/events.out.tfevents.") and files[n] > 0 for n in files)
    assert fileio.read_bytes(f"{straight_run}/training_curves.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert _logged_steps(straight_run) == list(range(1, 14))  # every step's line, no gap
    assert max(_steps(straight_run)) == 13 and all(_steps(straight_run).values())


@pytest.fixture
def cli_logging_restored():
    """The CLIs' ``logs.setup`` sets process-wide logger levels: put them back afterwards."""
    loggers = [logging.getLogger(name) for name in ("", "cxrjax", "absl")]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for lg, level, propagate, handlers in saved:
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers[:] = handlers


def test_evaluate_and_predict_read_a_run_in_a_bucket_and_write_there(
        straight_run, data_bucket, tiny_data, cache_dir, capsys, monkeypatch,
        cli_logging_restored):
    monkeypatch.setenv(mirror.CACHE_ENV, cache_dir)  # the run's label table is fetched there
    saved = json.loads(fileio.read_text(f"{straight_run}/eval/test_metrics.json"))
    assert evaluate.main(["--workdir", straight_run, "--n_boot", "0",
                          "--json", f"{straight_run}/eval/again.json"]) == 0
    again = json.loads(fileio.read_text(f"{straight_run}/eval/again.json"))
    assert again["n_images"] == saved["n_images"] > 0
    np.testing.assert_allclose(again["mean_auc"], saved["mean_auc"], rtol=1e-6)

    images = sorted(glob.glob(str(tiny_data / "nih" / "**" / "*.png"), recursive=True))[:2]
    out = f"{data_bucket}/predicted"
    assert predict.main(["--workdir", straight_run, "--out", out, *images]) == 0, \
        capsys.readouterr().err
    table = fileio.read_text(f"{out}/predictions.csv").splitlines()
    assert len(table) == 3 and table[0].startswith("Image Index,")
    heatmaps = fileio.listdir(f"{out}/heatmaps")
    assert len(heatmaps) == 2
    assert fileio.read_bytes(f"{out}/heatmaps/{heatmaps[0]}")[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_in_a_bucket_preempted_then_killed_resumes_to_the_same_parameters(
        straight_run, data_bucket, cache_dir):
    workdir = f"{data_bucket}/interrupted"
    # 1) SIGTERM mid-epoch, and a second one while the preemption checkpoint is being written.
    run = _Output(_main(workdir, data_bucket, cache_dir))
    assert _until(lambda: max(_logged_steps(workdir), default=0) >= 2, run.proc), run.text
    run.proc.send_signal(signal.SIGTERM)
    assert _until(lambda: "preemption notice: saving step" in run.text, run.proc), run.text
    run.proc.send_signal(signal.SIGTERM)
    code, out = run.finish()
    assert code == preemption.PREEMPTED_EXIT_CODE, out[-3000:]
    assert "SIGTERM again" in out  # the second notice arrived before the process ended
    step, where = PREEMPTED.search(out).groups()
    step = int(step)
    assert where == f"{workdir}/{STAGE}" and 2 <= step < 13
    assert _steps(workdir)[step] and max(_steps(workdir)) == step  # complete, and the newest

    # 2) kill -9 while a later checkpoint is being written (a step folder not yet committed).
    run = _Output(_main(workdir, data_bucket, cache_dir))
    in_flight = lambda: any(s > step and not done for s, done in _steps(workdir).items())  # noqa: E731
    assert _until(in_flight, run.proc), run.text[-3000:]
    run.proc.send_signal(signal.SIGKILL)
    run.finish()

    # 3) The same command once more: it resumes from the SIGTERM's step and finishes.
    code, out = _Output(_main(workdir, data_bucket, cache_dir)).finish()
    assert code == 0, out[-3000:]
    assert f"resumed at step {step} of 13" in out
    (step_a, a), (step_b, b) = _final_params(straight_run), _final_params(workdir)
    assert step_a == step_b == 13
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise on CPU


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("case", ["missing bucket", "unreachable server"])
def test_main_refuses_a_bucket_it_cannot_use_in_one_line_before_any_work(
        case, gcs_server, data_bucket, cache_dir):
    if case == "missing bucket":
        workdir, env, says = "gs://no-such-bucket/run", {}, "bucket gs://no-such-bucket does not"
    else:
        url = _closed_port_url()
        workdir, env, says = f"{data_bucket}/run", {"STORAGE_EMULATOR_HOST": url}, \
            f"cannot reach Cloud Storage at {url}"
    start = time.monotonic()
    code, out = _Output(_main(workdir, data_bucket, cache_dir, env)).finish(timeout=120)
    assert code == 2 and time.monotonic() - start < 60, out[-3000:]
    assert out.strip().startswith(f"error: cannot use {workdir}: ") and says in out
    assert len(out.strip().splitlines()) == 1, out
