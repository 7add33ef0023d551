"""scripts/fuzz_inputs.py: a small corpus of broken real files through predict and prepare
leaves no traceback, no hang and no good file dropped; its mutations are seeded."""

import json
import os
import subprocess
import sys

import numpy as np
from helpers import cli_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import fuzz_mutants  # noqa: E402
import fuzz_runs  # noqa: E402

# Every image kind (PNG and DICOM), and the table kinds that broke prepare before.
TABLE_KINDS = "utf16,latin1,flipped,gz_truncated,quote_unclosed_big"


def test_a_small_corpus_is_named_line_by_line_with_nothing_lost(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "fuzz_inputs.py"), "--n", "1",
         "--good", "1", "--table_kinds", TABLE_KINDS, "--out", str(tmp_path), "--seed", "3",
         "--file_timeout", "60", "--run_timeout", "400"],
        capture_output=True, text=True, timeout=600, check=False,
        env=cli_env())  # the runs without torch, as where users run them
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr[-3000:]
    report = json.loads(lines[0])
    assert (report["tracebacks"], report["hangs"], report["good_dropped"]) == (0, 0, 0), report
    assert report["unnamed"] == report["exit_code_mismatches"] == report["stray_lines"] == 0
    assert proc.returncode == 0, report["findings"]
    images = sum(v for k, v in report["mutants"].items() if k.startswith("image_"))
    assert images == 2 * len(fuzz_mutants.IMAGE_KINDS)  # each kind on a PNG and on a DICOM
    assert report["mutants"]["table_chexpert_utf16"] == report["mutants"]["table_nih_latin1"] == 1
    assert report["named_errors"] >= 15 and report["used"] > 0
    assert os.path.exists(tmp_path / "run" / "config.json")  # the tiny run, kept for reuse


def test_mutations_are_seeded_and_a_range_of_lines_names_each_row_in_it():
    data = bytes(range(256)) * 40
    made = [fuzz_mutants.IMAGE_KINDS["flipped"](data, "png", np.random.default_rng(5))
            for _ in range(2)]
    assert made[0] == made[1] and made[0].data != data
    problems = [("a.png", "Data_Entry_2017_v2020.csv lines 3-5: one row over 3 lines"),
                ("b.png", "image file has no row in the label table")]
    assert [fuzz_runs.hits(problems, "x.png", n) for n in (2, 3, 5, 6)] == [0, 1, 1, 0]
    assert fuzz_runs.hits(problems, "b.png", 9) == 1


def test_a_file_that_blocks_the_decoder_is_a_hang_and_the_next_file_still_runs(tmp_path):
    fifo = tmp_path / "blocks.png"
    os.mkfifo(fifo)  # opening it for reading waits for a writer that never comes
    good = os.path.join(ROOT, "..", "shared", "data", "dicom", "siim_pneumothorax_sample.dcm")
    results = fuzz_runs.decode_each([str(fifo), good, str(tmp_path / "missing.png")], 72, 64,
                                    timeout=5, log=str(tmp_path / "decode.err"))
    assert [state for state, _ in results] == ["hang", "ok", "error"]
    assert "cannot read it" in results[2][1]
