"""The CheXpert, MIMIC-CXR-JPG and PadChest readers: label states, metadata and exclusions."""

import csv
import gzip
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the layout writers beside this file
import release_folders as rf  # noqa: E402

from cxrjax.data import chexpert_layout, label_space, mimic_layout, padchest_layout
from cxrjax.data import release_rows as rr
from cxrjax.data.nih_layout import PrepareError

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                      "chexpert", "train_sample.csv.gz")
P, N, M = label_space.POSITIVE, label_space.NEGATIVE, label_space.MISSING
# Independent of the package: CheXpert's one renamed column, and the NIH-only classes.
RENAMED = {"Pleural Effusion": "Effusion"}
NOT_IN_CHEXPERT = ("Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis",
                   "Pleural_Thickening", "Hernia")
EXPECTED = {"ignore": {"1.0": P, "0.0": N, "": N, "-1.0": M},
            "zeros": {"1.0": P, "0.0": N, "": N, "-1.0": N},
            "ones": {"1.0": P, "0.0": N, "": N, "-1.0": P}}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """The real rows as a download's train.csv.gz (bytes unchanged: CRLF line ends)."""
    root = tmp_path_factory.mktemp("chexpert")
    shutil.copy(SAMPLE, root / "train.csv.gz")
    with gzip.open(SAMPLE, "rb") as f:
        assert b"\r\n" in f.read(4096)
    return root


def _real_rows():
    with gzip.open(SAMPLE, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader)


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_real_chexpert_rows_have_the_right_state_in_every_cell(sample_dir, policy):
    real = _real_rows()
    assert len(real) == 2883
    scan = chexpert_layout.scan(str(sample_dir), views=["PA", "AP", "LATERAL"],
                                uncertain=policy, check_files=False)
    assert scan.problems == [] and scan.excluded == []
    by_id = {r.image_id: r for r in scan.rows}
    assert len(by_id) == 2883
    checked = 0
    for row in real:
        got = by_id[row["Path"].split("/", 1)[1]]
        for column in rf.CHEXPERT_HEADER[5:]:
            cls = RENAMED.get(column, column)
            assert got.states[label_space.CLASS_INDEX[cls]] == EXPECTED[policy][row[column]], (
                row["Path"], column)
            checked += 1
        for cls in NOT_IN_CHEXPERT:
            assert got.states[label_space.CLASS_INDEX[cls]] == M
    assert checked == 2883 * 14


def test_real_chexpert_metadata_and_view_exclusions(sample_dir):
    real = {r["Path"].split("/", 1)[1]: r for r in _real_rows()}
    scan = chexpert_layout.scan(str(sample_dir), check_files=False)  # default: PA and AP
    laterals = [k for k, r in real.items() if r["Frontal/Lateral"] == "Lateral"]
    assert all(real[k]["AP/PA"] == "" for k in laterals)
    assert scan.exclusion_counts() == {rr.EXCLUDED_VIEW: len(laterals)} == {"view": 587}
    assert len(scan.rows) == 2883 - 587
    for row in scan.rows:
        src = real[row.image_id]
        assert row.view == src["AP/PA"] and row.view in ("AP", "PA")
        assert row.sex == {"Male": "M", "Female": "F"}[src["Sex"]]
        assert row.age == int(src["Age"])
        patient, study = row.image_id.split("/")[1:3]
        assert (row.patient_id, row.study_id, row.split) == (patient, f"{patient}/{study}",
                                                             "train")
        assert row.path == os.path.join(str(sample_dir), row.image_id)
    assert max(r.age for r in scan.rows) == 90  # 90 stands for 90 or older, kept


def test_chexpert_unknown_sex_and_age_zero_are_missing_and_bad_cells_are_problems(tmp_path):
    rows = [(1, 1, "view1_frontal", "Unknown", 0, "Frontal", "PA", {"Edema": "1.0"}),
            (2, 1, "view1_frontal", "Female", 90, "Frontal", "AP", {"Edema": "maybe"}),
            (3, 1, "view1_frontal", "Male", 40, "Frontal", "", {}),
            (4, 1, "view2_lateral", "Male", 40, "Lateral", "", {})]
    root = rf.chexpert_folder(tmp_path, rows, images=False)
    scan = chexpert_layout.scan(str(root), check_files=False)
    (row,) = scan.rows
    assert (row.sex, row.age, row.view) == ("", -1, "PA")
    assert [p.image for p in scan.problems] == [
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg"]
    assert "Edema: cell 'maybe'" in scan.problems[0].reason
    assert [e.reason for e in scan.excluded] == ["no view given",
                                                 "view 'LATERAL' not selected"]


def test_chexpert_missing_images_are_problems(tmp_path):
    rows = [(1, 1, "view1_frontal", "Male", 50, "Frontal", "PA", {})] * 1 + [
        (2, 1, "view1_frontal", "Male", 50, "Frontal", "AP", {})]
    root = rf.chexpert_folder(tmp_path, rows)
    os.remove(root / "train/patient00002/study1/view1_frontal.jpg")
    scan = chexpert_layout.scan(str(root))
    assert len(scan.rows) == 1 and "image file not found" in scan.problems[0].reason
    with pytest.raises(PrepareError, match=r"1 problem\(s\)"):
        rr.fail_on_problems(scan, str(root), skip_bad=False)


def _mimic(tmp_path):
    images = [("d1", "10000032", "50414267", "PA", "21800506"),
              ("d2", "10000032", "50414267", "LATERAL", "21800506"),
              ("d3", "10000032", "53189527", "AP", "21800626"),
              ("d4", "11000011", "56699142", "AP", "21230101"),  # its study has no labels
              ("d5", "11000011", "57000000", "", "21230101")]
    labels = {"50414267": ("10000032", {"Pleural Effusion": "1.0", "Edema": "-1.0"}),
              "53189527": ("10000032", {"No Finding": "1.0"}),
              "57000000": ("11000011", {})}
    negbio = {**labels, "50414267": ("10000032", {"Pleural Effusion": "0.0"})}
    return rf.mimic_folder(tmp_path, images, labels, negbio=negbio,
                           splits={"d1": "train", "d2": "train", "d3": "test", "d4": "validate",
                                   "d5": "train"},
                           patients={"10000032": ("F", 52, 2180)})


def test_mimic_labels_join_images_through_the_metadata(tmp_path):
    root = _mimic(tmp_path)
    scan = mimic_layout.scan(str(root), uncertain="ignore")
    assert [r.image_id for r in scan.rows] == ["d1", "d3"] and scan.problems == []
    d1, d3 = scan.rows
    at = label_space.CLASS_INDEX
    assert d1.states[at["Effusion"]] == P and d1.states[at["Edema"]] == M
    assert d1.states[at["Mass"]] == M and d3.states[at["No Finding"]] == P
    assert d1.path == str(root / "files/p10/p10000032/s50414267/d1.jpg")
    assert (d1.patient_id, d1.study_id, d1.split, d3.split) == ("10000032", "50414267",
                                                                "train", "test")
    assert (d1.sex, d1.age) == ("F", 52) and (d3.sex, d3.age) == ("F", 52)
    assert scan.exclusion_counts() == {"missing label": 1, "view": 2}
    negbio = mimic_layout.scan(str(root), labeler="negbio")
    assert negbio.rows[0].states[at["Effusion"]] == N
    lateral = mimic_layout.scan(str(root), views=["LATERAL"])
    assert [r.image_id for r in lateral.rows] == ["d2"]
    with pytest.raises(ValueError, match="unknown MIMIC labeler 'chexbert'"):
        mimic_layout.scan(str(root), labeler="chexbert")


def _padchest_rows():
    return [("a.png", "0", "20150312", "p1", "1950", "M", "PA", "['pleural effusion', 'normal']"),
            ("b.png", "0", "20150312", "p1", "1950", "M", "L", "['normal']"),
            ("c.png", "1", "20160101", "p2", "", "F", "AP", "[' cardiomegaly', 'kyphosis']"),
            ("d.png", "1", "20160101", "p3", "1980.0", "O", "AP_horizontal", "['normal']"),
            ("e.png", "2", "20160101", "p4", "1980", "F", "PA", ""),
            ("f.png", "2", "20160101", "p5", "1980", "F", "PA", "['nodule'")]


def test_padchest_lists_ages_projections_and_exclusions(tmp_path):
    root = rf.padchest_folder(tmp_path, _padchest_rows())
    scan = padchest_layout.scan(str(root))
    assert [r.image_id for r in scan.rows] == ["a.png", "c.png"]
    a, c = scan.rows
    at = label_space.CLASS_INDEX
    assert a.states[at["Effusion"]] == P and a.states[at["No Finding"]] == N
    assert c.states[at["Cardiomegaly"]] == P and c.states[at["Lung Opacity"]] == M
    assert (a.age, a.sex, a.view, a.patient_id) == (65, "M", "PA", "p1")
    assert (c.age, c.sex) == (-1, "F")  # no birth year
    assert a.path == str(root / "0" / "a.png")
    assert scan.unmapped_terms == {"kyphosis": 1}
    assert scan.exclusion_counts() == {"missing label": 1, "view": 2}
    assert [p.image for p in scan.problems] == ["f.png"]
    assert "not a Python-style list" in scan.problems[0].reason
    every = padchest_layout.scan(str(root), views=["PA", "AP", "AP_horizontal", "LATERAL"])
    d = {r.image_id: r for r in every.rows}["d.png"]
    assert (d.age, d.sex, d.view) == (36, "", "AP_horizontal")
    np.testing.assert_array_equal(d.states == P, np.arange(len(d.states)) == at["No Finding"])


def test_mimic_duplicate_image_and_image_without_split_are_problems(tmp_path):
    images = [("d1", "10000032", "50414267", "PA", "21800506"),
              ("d1", "10000032", "50414267", "PA", "21800506"),
              ("d2", "10000032", "50414267", "AP", "21800506")]
    labels = {"50414267": ("10000032", {"Edema": "1.0"})}
    root = rf.mimic_folder(tmp_path, images, labels, splits={"d1": "train"})
    scan = mimic_layout.scan(str(root))
    assert [r.image_id for r in scan.rows] == ["d1"]
    assert [(p.image, p.reason.split(": ")[1]) for p in scan.problems] == [
        ("d1", "duplicate of line 2"), ("d2", "not in the split table")]


def test_padchest_png_claiming_a_huge_size_is_a_decode_problem_not_a_crash(tmp_path):
    import struct
    import zlib

    path = tmp_path / "huge.png"
    rf.write_png16(path, 1000)
    data = path.read_bytes()
    body = b"IHDR" + struct.pack(">II", 900_000, 900_000) + data[24:29]
    path.write_bytes(data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:])
    i, image, note = padchest_layout.decode_task((7, str(path), 16))
    assert (i, image) == (7, None) and "DecompressionBombError" in note and str(path) in note


def test_chexpert_table_saved_with_a_bom_keeps_every_row(tmp_path):
    rows = [(1, 1, "view1_frontal", "Male", 50, "Frontal", "PA", {}),
            (2, 1, "view1_frontal", "Female", 60, "Frontal", "AP", {})]
    root = rf.chexpert_folder(tmp_path, rows, images=False)
    table = root / "train.csv"
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    scan = chexpert_layout.scan(str(root), check_files=False)
    assert len(scan.rows) == 2 and not scan.problems


def test_chexpert_row_with_an_unclosed_quote_names_the_lines_it_swallows(tmp_path):
    rows = [(i, 1, "view1_frontal", "Male", 50, "Frontal", "PA", {}) for i in range(1, 5)]
    root = rf.chexpert_folder(tmp_path, rows, images=False)
    table = root / "train.csv"
    lines = table.read_bytes().split(b"\r\n")
    lines[2] = lines[2].replace(b",Male,", b',"Male,')
    table.write_bytes(b"\r\n".join(lines))
    scan = chexpert_layout.scan(str(root), check_files=False)
    assert [r.patient_id for r in scan.rows] == ["patient00001"]
    (problem,) = scan.problems
    assert "train.csv lines 3-5: one row over 3 lines (an unclosed quote?)" in problem.reason


def test_chexpert_table_whose_every_row_is_bad_names_each_row(tmp_path):
    rows = [(1, 1, "view1_frontal", "Male", "old", "Frontal", "PA", {}),
            (2, 1, "view1_frontal", "Female", 60, "Frontal", "AP", {"Edema": "2.0"})]
    root = rf.chexpert_folder(tmp_path, rows, images=False)
    found = chexpert_layout.scan(str(root), check_files=False)
    with pytest.raises(PrepareError, match="no usable images") as e:
        rr.fail_on_problems(found, str(root), skip_bad=True)
    assert [p.reason.split(":")[0] for p in e.value.problems] == ["train.csv line 2",
                                                                   "train.csv line 3"]
    assert "train.csv line 3: Edema: cell '2.0'" in str(e.value)


def test_a_short_row_is_a_padchest_problem_and_a_mimic_error(tmp_path):
    root = rf.padchest_folder(tmp_path / "padchest", _padchest_rows()[:1])
    table = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    with open(table, "a") as f:
        f.write("g.png,3\r\n")
    scan = padchest_layout.scan(str(root))
    assert [r.image_id for r in scan.rows] == ["a.png"]
    assert [(p.image, p.reason) for p in scan.problems] == [
        ("g.png", f"{table.name} line 3: too few fields (2)")]
    mimic = _mimic(tmp_path / "mimic")
    with gzip.open(mimic / "mimic-cxr-2.0.0-metadata.csv.gz", "at") as f:
        f.write("d9,1\n")
    with pytest.raises(PrepareError, match=r"metadata\.csv\.gz line 7: too few fields \(2\)$"):
        mimic_layout.scan(str(mimic))
