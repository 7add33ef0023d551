"""Reading the NIH download: the table against the files, every problem listed, decoding."""

import subprocess
import sys

import numpy as np
from PIL import Image

from cxrjax.data import labels, nih_layout


def test_scan_matches_the_table_with_the_files_and_lists_every_problem(tmp_path, nih_folder):
    rows = [(f"{i:08d}_000.png", "Mass|Nodule" if i == 1 else "No Finding", i)
            for i in range(1, 5)]
    rows[2] = (rows[2][0], "Flu", 3)
    files = {n: (9, "L") for n, _, _ in rows if n != rows[3][0]}
    files["00000099_000.png"] = (9, "L")
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, files)
    good, problems = nih_layout.scan(str(manual))
    assert [r.image_id for r in good] == [rows[0][0], rows[1][0]]
    mass_nodule = np.zeros(labels.NUM_CLASSES, np.uint8)
    mass_nodule[[labels.CLASSES.index("Mass"), labels.CLASSES.index("Nodule")]] = 1
    np.testing.assert_array_equal(good[0].labels, mass_nodule)
    assert good[0].path == str(manual / "images" / rows[0][0]) and good[0].patient_id == 1
    reasons = {p.image: p.reason for p in problems}
    assert set(reasons) == {rows[2][0], rows[3][0], "00000099_000.png"}
    assert "unknown label 'Flu'" in reasons[rows[2][0]]
    assert "image file not found" in reasons[rows[3][0]]
    assert "no row in the label table" in reasons["00000099_000.png"]


def test_data_entry_header_is_the_one_nih_ships(nih_sample_dir):
    header = (nih_sample_dir / nih_layout.DATA_ENTRY_NAME).read_text().splitlines()[0]
    assert tuple(header.split(",")) == nih_layout.DATA_ENTRY_HEADER


def test_rgba_image_is_converted_to_its_gray_content(nih_sample_dir):
    rgba = [p for p in sorted((nih_sample_dir / "images").iterdir())
            if Image.open(p).mode == "RGBA"]
    assert len(rgba) == 2
    got, mode = nih_layout.decode_image(str(rgba[0]), 64)
    ref = np.asarray(Image.open(rgba[0]).convert("RGB"))[..., 0]
    ref = np.asarray(Image.fromarray(ref).resize((64, 64), Image.Resampling.BILINEAR))
    assert mode == "RGBA" and np.abs(got.astype(int) - ref).max() <= 1


def test_decode_workers_import_neither_tfds_nor_jax():
    code = ("import sys, cxrjax.data.nih_layout; "
            "print(sorted(m for m in ('tensorflow_datasets', 'jax', 'grain') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_prepare_error_shows_the_first_problems_and_counts_the_rest():
    problems = [nih_layout.Problem(f"{i:08d}_000.png", "image file not found") for i in range(25)]
    error = nih_layout.PrepareError("25 problem(s) in NIH", problems)
    lines = str(error).splitlines()
    assert lines[0] == "25 problem(s) in NIH:"
    assert lines[1:21] == [f"  {p.image}: {p.reason}" for p in problems[:20]]
    assert lines[21:] == ["  ... and 5 more"]
    assert error.problems == problems
    listed = error.listed("/data/prepare_problems.tsv")
    assert str(listed).splitlines()[-1] == "every problem is listed in /data/prepare_problems.tsv"
    assert listed.problems == problems and isinstance(listed, ValueError)


def test_a_short_list_is_shown_whole_and_an_error_without_problems_is_its_summary():
    problems = [nih_layout.Problem("a.png", "duplicate row")]
    assert str(nih_layout.PrepareError("1 problem(s)", problems)) == (
        "1 problem(s):\n  a.png: duplicate row")
    assert str(nih_layout.PrepareError("no usable images in NIH")) == "no usable images in NIH"


def test_the_problem_list_is_a_tsv_of_every_image_and_reason(tmp_path):
    problems = [nih_layout.Problem(f"{i}.png", f"reason {i}") for i in range(30)]
    nih_layout.write_problems(str(tmp_path / "p.tsv"), problems)
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0] == "image\treason"
    assert lines[1:] == [f"{i}.png\treason {i}" for i in range(30)]
