"""Split schemes on the real 112,120-row label table and on small tables the tests write."""

import subprocess
import sys

import numpy as np
import pytest

from cxrjax.data import labels, splits


@pytest.fixture(scope="module")
def table():
    return labels.load_label_table()


@pytest.fixture(scope="module")
def paper(table):
    return splits.split_images(None, "paper", seed=0)


def test_paper_split_has_no_patient_in_two_splits(table, paper):
    patients = {s: set(table.patient_ids[table.rows(paper[s])].tolist()) for s in paper}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_paper_split_sizes_are_within_one_percent_of_70_10_20(table, paper):
    assert sum(len(v) for v in paper.values()) == len(table)
    for split, frac in zip(splits.SPLITS, (0.7, 0.1, 0.2), strict=True):
        assert abs(len(paper[split]) / len(table) - frac) < 0.01, split
    assert len(set(paper["train"]) | set(paper["val"]) | set(paper["test"])) == len(table)


def test_paper_split_depends_on_seed(paper):
    other = splits.split_images(None, "paper", seed=1)
    assert other["test"] != paper["test"]


def test_paper_split_is_identical_in_another_process(paper):
    code = ("import hashlib, json; from cxrjax.data import splits; "
            "s = splits.split_images(None, 'paper', seed=0); "
            "print(hashlib.sha256(json.dumps(s).encode()).hexdigest())")
    env = {"PYTHONHASHSEED": "12345"}
    import os
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.strip()
    import hashlib
    import json
    assert out == hashlib.sha256(json.dumps(paper).encode()).hexdigest()


def test_chexnet_split_sizes_are_exact():
    s = splits.split_images(None, "chexnet")
    assert [len(s[k]) for k in splits.SPLITS] == [78468, 11219, 22433]


def test_chexnet_list_labels_match_the_v2020_table_on_all_but_a_few_images(table):
    # The CheXNet lists carry the 2017 labels; 36 of 22,433 test images differ from v2020.
    import gzip
    path = labels.resource_path("chexnet_split/test_list.txt.gz")
    with gzip.open(path, "rt") as f:
        rows = [line.split() for line in f if line.strip()]
    names = [r[0] for r in rows]
    got = np.array([[int(v) for v in r[1:]] for r in rows], np.uint8)
    differ = (got != table.labels[table.rows(names)]).any(axis=1)
    assert 0 < differ.sum() < 0.002 * len(names)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="unknown split scheme 'random'"):
        splits.split_images(None, "random")


def _write_csv(path, rows):
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position\n")
    path.write_text(header + "".join(f"{n},{lab},0,{p},40,M,PA\n" for n, lab, p in rows))
    return path


def test_official_split_needs_the_lists(tmp_path):
    csv = _write_csv(tmp_path / "Data_Entry_2017.csv", [("a.png", "No Finding", 1)])
    with pytest.raises(FileNotFoundError, match="train_val_list.txt, test_list.txt not found"):
        splits.split_images(csv, "official")
    with pytest.raises(FileNotFoundError, match="not shipped"):
        splits.split_images(None, "official")


def test_official_split_carves_validation_by_patient(tmp_path):
    rows = [(f"{p:08d}_{k:03d}.png", "No Finding", p) for p in range(1, 201) for k in range(3)]
    csv = _write_csv(tmp_path / "Data_Entry_2017.csv", rows)
    test_names = [r[0] for r in rows if r[2] > 150]
    (tmp_path / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (tmp_path / "train_val_list.txt").write_text(
        "\n".join(r[0] for r in rows if r[2] <= 150) + "\n")
    s = splits.split_images(csv, "official", seed=3)
    assert s["test"] == test_names
    assert len(s["train"]) + len(s["val"]) == 450
    assert abs(len(s["val"]) - 450 * 0.125) <= 3
    patient = lambda n: n.split("_")[0]  # noqa: E731
    assert not {patient(n) for n in s["train"]} & {patient(n) for n in s["val"]}


def test_official_split_rejects_image_in_no_list(tmp_path):
    csv = _write_csv(tmp_path / "Data_Entry_2017.csv",
                     [("a.png", "No Finding", 1), ("b.png", "Mass", 2)])
    (tmp_path / "test_list.txt").write_text("a.png\n")
    (tmp_path / "train_val_list.txt").write_text("\n")
    with pytest.raises(ValueError, match="1 image.*in no list, e.g. b.png"):
        splits.split_images(csv, "official")


def test_patient_split_keeps_patients_whole():
    pids = np.repeat(np.arange(50), np.arange(1, 51))
    part = splits.patient_split(pids, (0.5, 0.5), seed=0)
    for p in range(50):
        assert len(set(part[pids == p].tolist())) == 1
