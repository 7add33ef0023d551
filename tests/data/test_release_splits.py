"""Splits of the prepared releases: the release's own where it has one, else seeded by patient."""

import numpy as np
import pytest

from cxrjax.data import release_builder, release_splits, synthetic


def _patients(n_patients, per, prefix="p"):
    return [f"{prefix}{p}" for p in range(n_patients) for _ in range(per)]


def test_padchest_split_is_patient_disjoint_seeded_and_near_70_10_20():
    patients = _patients(300, 3)
    parts = release_splits.split_release("padchest", patients, [""] * len(patients), seed=0)
    sizes = [len(parts[s]) for s in release_splits.SPLITS]
    assert sum(sizes) == 900 and abs(sizes[0] - 630) <= 3 and abs(sizes[2] - 180) <= 3
    owners = [{patients[i] for i in parts[s]} for s in release_splits.SPLITS]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    again = release_splits.split_release("padchest", patients, [""] * 900, seed=0)
    other = release_splits.split_release("padchest", patients, [""] * 900, seed=1)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    assert not np.array_equal(parts["test"], other["test"])


def test_chexpert_valid_csv_is_the_test_set_and_train_is_cut_by_patient():
    patients = _patients(200, 2) + _patients(10, 1, prefix="v")
    own = ["train"] * 400 + ["valid"] * 10
    parts = release_splits.split_release("chexpert", patients, own)
    np.testing.assert_array_equal(parts["test"], np.arange(400, 410))
    assert abs(len(parts["val"]) - 40) <= 2 and len(parts["train"]) + len(parts["val"]) == 400
    assert not {patients[i] for i in parts["train"]} & {patients[i] for i in parts["val"]}


def test_mimic_keeps_its_own_split_and_refuses_unknown_names():
    parts = release_splits.split_release("mimic_cxr", ["a", "a", "b", "c"],
                                         ["train", "train", "validate", "test"])
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [0, 1], "val": [2],
                                                          "test": [3]}
    with pytest.raises(ValueError, match=r"MIMIC split names \['dev'\]"):
        release_splits.split_release("mimic_cxr", ["a"], ["dev"])


def test_split_hash_ignores_order_and_sees_any_change():
    h = release_splits.split_hash(["b.png", "a.png"])
    assert h == release_splits.split_hash(["a.png", "b.png"]) and len(h) == 64
    assert h != release_splits.split_hash(["a.png", "c.png"])


def test_prepared_mimic_metadata_gives_the_official_split(tmp_path):
    synthetic.generate_format(str(tmp_path / "raw"), "mimic_cxr", n=30, size=32, workers=0)
    b = release_builder.build("mimic_cxr", str(tmp_path / "raw"), str(tmp_path / "out"),
                              resolution=8, workers=0)
    meta = b.info.metadata
    assert len(meta["patient_ids"]) == len(meta["release_splits"]) == meta["num_images"] == 30
    parts = release_splits.split_release("mimic_cxr", meta["patient_ids"],
                                         meta["release_splits"])
    for name, own in (("train", "train"), ("val", "validate"), ("test", "test")):
        assert [meta["release_splits"][i] for i in parts[name]] == [own] * len(parts[name])
    assert sum(len(v) for v in parts.values()) == 30
