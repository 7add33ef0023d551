"""scripts/fault_campaign.py: a few seeded faults of every kind on a tiny run, each handled (a
kill resumed, a preemption saved, a corrupt checkpoint set aside, a full disk in one line, a
second command refused in one line), and the outputs byte-equal to an uninterrupted run's."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import cli_env

from cxrjax.io import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "fault_campaign.py")
KINDS = {"kill9", "sigterm", "corrupt_checkpoint", "full_disk", "second_command"}


def test_a_small_campaign_handles_every_fault_and_ends_byte_equal(tmp_path, tiny_data):
    # Seed 14 deals kill9, sigterm, full_disk, corrupt_checkpoint, second_command: all five
    # land in one round (one comparison) when each signal comes within 10 s of its attempt's
    # start (not up to the cold reference run's length). The session's prepared set (the
    # campaign's own), 6 steps of 16 images (checkpoints at steps 4 and 6), and the test-phase
    # sections that are not compared (subgroups, the metadata baseline) off: a shorter run.
    shorter = ["--latest-moment-s", "10", "--data-root", str(tiny_data)] + [
        x for item in ("train.batch_size=16", "eval.subgroups=False",
                       "eval.metadata_baseline=False") for x in ("--run-set", item)]
    done = subprocess.run(  # corruption by the default ways: a file cut, or bits flipped
        [sys.executable, SCRIPT, "--faults", "5", "--seed", "14", "--workdir-root",
         str(tmp_path), *shorter],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=cli_env())  # the runs without torch, as where users run them
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["faults_injected"] == 5
    assert summary["faults_by_kind"] == dict.fromkeys(sorted(KINDS), 1)  # a shuffled deck
    assert summary["mismatches"] == 0 and summary["unexpected"] == []
    assert summary["refusals"] == 1
    assert summary["resumes"] >= 1
    assert summary["bytes_compared"] > 10_000  # the predictions and every array, each round
    with open(tmp_path / "reference" / "config.json") as f:  # --run-set reached the runs
        saved = json.load(f)
    assert saved["train"]["batch_size"] == 16 and saved["eval"]["subgroups"] is False


def test_a_flipped_bit_in_a_checkpoints_array_file_is_not_restored_silently(tmp_path):
    directory = str(tmp_path / "ckpt")
    manager = checkpoint.open_manager(directory, keep=3)
    state = {"w": np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)}
    checkpoint.save(manager, 1, state, {}, {})
    checkpoint.save(manager, 2, state, {}, {})
    checkpoint.wait(manager)
    files = [os.path.join(p, n) for p, _, names in os.walk(os.path.join(directory, "2"))
             for n in names]
    largest = max(files, key=os.path.getsize)
    data = bytearray(open(largest, "rb").read())
    data[len(data) // 2] ^= 4
    with open(largest, "wb") as f:
        f.write(data)
    manager = checkpoint.open_manager(directory, keep=3)
    step, restored, _, _ = checkpoint.restore(manager, {"w": np.zeros((64, 256), np.float32)})
    # Either step 2 is set aside (step 1 restored) or its values are the saved ones.
    assert np.asarray(restored["w"]).tobytes() == state["w"].tobytes()


def test_a_run_override_without_a_value_is_refused_in_one_line(capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import fault_campaign

    with pytest.raises(SystemExit) as stop:
        fault_campaign.main(["--run-set", "train.batch_size"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "--run-set 'train.batch_size': expected KEY=VALUE")
