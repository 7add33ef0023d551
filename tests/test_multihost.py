"""Two processes x 1 CPU device (gloo) train and evaluate exactly like 1 process x 2 devices.

The single-process run trains here, in the test's process (2 CPU devices, tests/conftest.py);
each two-process run goes on from a copy of its first epoch, so one run also shows a
single-process checkpoint resumed by two processes.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import cli_env, xla_flags
from multihost_worker import worker_config

from cxrjax import models, train
from cxrjax.evaluation import inference
from cxrjax.io import preemption
from cxrjax.runfolder import loading as runs

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(data_root, workdir, epochs: int) -> list[subprocess.Popen]:
    """Two worker processes of one run, one CPU device each."""
    # torch absent, as where users run (tests/without_torch): tensorboardX then does not load it
    env = cli_env(PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(devices=1))
    port = _free_port()
    return [subprocess.Popen([sys.executable, WORKER, str(data_root), str(workdir), str(epochs),
                              str(i), "2", str(port)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _launch(data_root, workdir, epochs: int) -> dict:
    procs = _start(data_root, workdir, epochs)
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    with open(os.path.join(workdir, "worker_result.json")) as f:
        return json.load(f)


def _train_here(data_root, workdir, epochs: int) -> dict:
    """The same run in this process, on its 2 devices; the worker's result fields."""
    results = train.train_and_evaluate(worker_config(data_root, epochs), str(workdir))
    return {"devices": jax.device_count(), "processes": jax.process_count(),
            "n_images": results["fused"]["n_images"], "mean_auc": results["fused"]["mean_auc"]}


def _losses(workdir) -> dict[int, float]:
    """{step: train loss} of a run's log; a step logged twice fails."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert len(steps) == len(set(steps)), f"steps logged more than once in {workdir}: {steps}"
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _complete_steps(log) -> list[int]:
    """The steps with a train loss in a log being written (its whole lines only)."""
    lines = [x for x in log.read_text().splitlines(keepends=True) if x.endswith("\n")]
    return [r["step"] for r in map(json.loads, lines) if "train/loss" in r]


def _saved_steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints" / "stage0_global")
                  if d.isdigit())


def _final_params(workdir):
    """(step, variables) of the run's latest checkpoint, restored in this process."""
    config = runs.load_config(str(workdir))
    model = models.build_model(config.model, dtype=models.compute_dtype(config.dtype))
    step = _saved_steps(workdir)[-1]
    return step, runs.restore_variables(runs.final_stage_dir(str(workdir)),
                                        runs.abstract_variables(model, config), step,
                                        mesh=inference.create_mesh())


@pytest.fixture(scope="module")
def single_and_pair(tiny_data, tmp_path_factory):
    """Epoch 1 here, kept as ``epoch1``; epoch 2 here (``single``) and by a pair from a copy of
    epoch 1 (``pair``). Returns (root, single's result, pair's result, steps per epoch)."""
    root = tmp_path_factory.mktemp("multihost")
    _train_here(tiny_data, root / "single", 1)
    shutil.copytree(root / "single", root / "epoch1")
    shutil.copytree(root / "single", root / "pair")
    single = _train_here(tiny_data, root / "single", 2)
    pair = _launch(tiny_data, root / "pair", 2)
    return root, single, pair, max(_losses(root / "epoch1"))


def test_two_processes_train_like_one_process_with_the_same_devices(single_and_pair):
    root, single, pair, epoch = single_and_pair
    assert (single["devices"], single["processes"]) == (2, 1)
    assert (pair["devices"], pair["processes"]) == (2, 2)
    a = {k: v for k, v in _losses(root / "single").items() if k > epoch}  # epoch 2
    b = {k: v for k, v in _losses(root / "pair").items() if k > epoch}
    assert a.keys() == b.keys() and len(a) > 5
    # The same parameters and batches on both, so the first steps agree to 1e-6. A sum over two
    # devices has two terms, which no reduction order changes: measured, the losses and the
    # parameters agreed bitwise. With more devices gloo's other order grows through Adam to ~5e-5
    # by step 12 (4 devices, 2 x 2); the tolerances are that float tolerance.
    np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)],
                               rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose([b[k] for k in sorted(b)[:5]], [a[k] for k in sorted(a)[:5]],
                               rtol=1e-5, atol=1e-6)
    (step_a, va), (step_b, vb) = _final_params(root / "single"), _final_params(root / "pair")
    assert step_a == step_b == 2 * epoch
    # Float tolerance: where gloo sums the gradients in another order than one process does,
    # Adam's normalised steps carry that ~1e-7 difference into the parameters for an epoch
    # (where a gradient is near zero, up to about half of one lr-sized step: 5e-4 measured
    # with 4 devices).
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-3), va, vb)


def test_evaluation_across_processes_scores_every_test_image_once(single_and_pair):
    _, single, pair, _ = single_and_pair
    assert pair["n_images"] == single["n_images"] > 0
    # The test phase scores the best checkpoint, whose parameters agree to float tolerance
    # (above): on 40 test images one swapped rank moves a class's AUC by ~1e-3.
    np.testing.assert_allclose(pair["mean_auc"], single["mean_auc"], atol=5e-3)


def test_checkpoints_move_between_one_process_and_two(single_and_pair):
    root, _, _, epoch = single_and_pair
    # A checkpoint the pair wrote (its last, epoch 2's) restores in this single process.
    step, variables = _final_params(root / "pair")
    assert step == 2 * epoch and jax.tree.leaves(variables)
    # The single-process run's epoch 1 resumed by the pair: it went on from that last step (no
    # restart), so steps 1..2S are logged once each, the first S as the single run logged them.
    losses = _losses(root / "pair")
    assert sorted(losses) == list(range(1, 2 * epoch + 1))
    assert {k: v for k, v in losses.items() if k <= epoch} == _losses(root / "epoch1")


def test_sigterm_to_one_process_saves_one_step_on_both_and_the_pair_resumes_exactly(
        single_and_pair, tiny_data):
    root, _, _, epoch = single_and_pair
    workdir = root / "pair_preempted"
    shutil.copytree(root / "epoch1", workdir)
    before = _saved_steps(workdir)
    procs = _start(tiny_data, workdir, 2)
    log, deadline = workdir / "metrics.jsonl", time.monotonic() + 600
    while max(_complete_steps(log)) <= epoch:  # until a step of epoch 2 is done
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[0][-3000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    # To process 1, not the coordinator: the notice must travel through JAX's coordination
    # service, which agrees on one step for both.
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    line = re.compile(r"^preempted \(SIGTERM\): saved a checkpoint of step (\d+) in ", re.M)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == preemption.PREEMPTED_EXIT_CODE and line.search(out), out[-3000:]
    steps = {int(line.search(out).group(1)) for out in outs}
    assert len(steps) == 1
    step = steps.pop()
    assert epoch < step < 2 * epoch
    assert _saved_steps(workdir) == sorted([*before, step])  # that step saved, no other

    _launch(tiny_data, workdir, 2)  # the same command again
    assert _losses(workdir) == _losses(root / "pair")  # every step once, the same losses
    (step_a, a), (step_b, b) = _final_params(root / "pair"), _final_params(workdir)
    assert step_a == step_b
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise, as if never stopped
