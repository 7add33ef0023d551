"""The chexpert, mimic_cxr and padchest TFDS builders on tiny sets in each release's layout, the
prepare CLI's --dataset, and the NIH builder's output unchanged."""

import hashlib
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the layout writers beside this file
import release_folders as rf  # noqa: E402

from cxrjax.data import builder, label_space, padchest_layout, prepare, release_builder  # noqa: E402,I001
from cxrjax.data.nih_layout import PrepareError  # noqa: E402

P, N, U, M = label_space.POSITIVE, label_space.NEGATIVE, label_space.UNCERTAIN, label_space.MISSING
AT = label_space.CLASS_INDEX


def _records(b):
    src = b.as_data_source(split=builder.SPLIT)
    return [src[i] for i in range(len(src))]


def _chexpert_rows():
    return [(1, 1, "view1_frontal", "Female", 68, "Frontal", "AP",
             {"Pleural Effusion": "1.0", "Edema": "-1.0", "Support Devices": "1.0"}),
            (1, 1, "view2_lateral", "Female", 68, "Lateral", "", {"Pleural Effusion": "1.0"}),
            (2, 1, "view1_frontal", "Unknown", 0, "Frontal", "PA", {"No Finding": "1.0"})]


def test_chexpert_builder_writes_states_metadata_and_counts_exclusions(tmp_path):
    root = rf.chexpert_folder(tmp_path / "chexpert", _chexpert_rows())
    b = release_builder.build("chexpert", str(root), str(tmp_path / "out"), resolution=16,
                              workers=0)
    recs = _records(b)
    assert [r["image_id"].decode() for r in recs] == [
        "train/patient00001/study1/view1_frontal.jpg",
        "train/patient00002/study1/view1_frontal.jpg"]
    first, second = recs
    assert first["image"].shape == (16, 16) and abs(int(first["image"].mean()) - 10) <= 2
    assert first["label_states"].dtype == np.int8
    assert first["label_states"][AT["Effusion"]] == P and first["label_states"][AT["Edema"]] == U
    assert first["label_states"][AT["Mass"]] == M
    assert (first["sex"], first["age"], first["view"], first["split"]) == (
        b"F", 68, b"AP", b"train")
    assert (first["patient_id"], first["study_id"]) == (b"patient00001", b"patient00001/study1")
    assert (second["sex"], second["age"], second["view"]) == (b"", -1, b"PA")
    meta = b.info.metadata
    assert meta["excluded"] == {"view": 1} and meta["classes"] == list(label_space.CLASSES)
    listed = (tmp_path / "out").glob(f"chexpert/*/*/{release_builder.EXCLUDED_NAME}")
    assert [p.read_text().splitlines()[1].split("\t")[1] for p in listed] == ["view"]
    again = release_builder.load("chexpert", str(tmp_path / "out"), resolution=16)
    assert again.info.metadata["num_images"] == 2


def test_chexpert_laterals_when_selected_get_their_own_config(tmp_path):
    root = rf.chexpert_folder(tmp_path / "chexpert", _chexpert_rows())
    b = release_builder.build("chexpert", str(root), str(tmp_path / "out"), resolution=16,
                              views=["PA", "AP", "LATERAL"], workers=0)
    assert b.builder_config.name == "16px_pa_ap_lateral"
    assert b.info.metadata["num_images"] == 3 and b.info.metadata["excluded"] == {}
    with pytest.raises(FileNotFoundError, match="no complete chexpert dataset"):
        release_builder.load("chexpert", str(tmp_path / "out"), resolution=16)


def test_mimic_builder_joins_study_labels_and_keeps_the_official_split(tmp_path):
    images = [("d1", "10000032", "50414267", "PA", "21800506"),
              ("d2", "10000032", "50414267", "LATERAL", "21800506"),
              ("d3", "12000000", "53189527", "AP", "21800626"),
              ("d4", "12000000", "56699142", "AP", "21800626")]
    labels = {"50414267": ("10000032", {"Pneumothorax": "1.0", "Edema": "-1.0"}),
              "53189527": ("12000000", {"No Finding": "1.0"})}
    negbio = {"50414267": ("10000032", {"Pneumothorax": "0.0"}),
              "53189527": ("12000000", {})}
    root = rf.mimic_folder(tmp_path / "mimic", images, labels, negbio=negbio,
                           splits={"d1": "train", "d2": "train", "d3": "test", "d4": "train"},
                           patients={"10000032": ("M", 60, 2180)})
    b = release_builder.build("mimic_cxr", str(root), str(tmp_path / "out"), resolution=16,
                              workers=0)
    recs = _records(b)
    assert [(r["image_id"], r["split"], r["view"]) for r in recs] == [
        (b"d1", b"train", b"PA"), (b"d3", b"test", b"AP")]
    assert recs[0]["label_states"][AT["Pneumothorax"]] == P
    assert recs[0]["label_states"][AT["Edema"]] == U
    assert (recs[0]["sex"], recs[0]["age"], recs[1]["sex"], recs[1]["age"]) == (b"M", 60, b"", -1)
    assert b.info.metadata["excluded"] == {"missing label": 1, "view": 1}
    nb = release_builder.build("mimic_cxr", str(root), str(tmp_path / "out"), resolution=16,
                               labeler="negbio", workers=0)
    assert nb.builder_config.name == "16px_negbio"
    assert _records(nb)[0]["label_states"][AT["Pneumothorax"]] == N


def _padchest_rows():
    return [("a.png", "0", "20150312", "p1", "1950", "M", "PA", "['pleural effusion']"),
            ("b.png", "0", "20150312", "p1", "1950", "M", "L", "['normal']"),
            ("c.png", "1", "20160101", "p2", "1940", "F", "AP", "['normal']"),
            ("d.png", "1", "20160101", "p3", "1980", "F", "PA", "['nodule']"),
            ("e.png", "2", "20160101", "p4", "1980", "F", "PA", "")]


def test_padchest_truncated_png_fails_then_skip_bad_writes_the_rest(tmp_path, capsys):
    root = rf.padchest_folder(tmp_path / "padchest", _padchest_rows(), truncated={"d.png"})
    out = tmp_path / "out"
    args = ["--dataset", "padchest", "--manual_dir", str(root), "--data_dir", str(out),
            "--resolution", "16", "--workers", "0"]
    assert prepare.main(args) == 1
    err = capsys.readouterr().err
    assert "1 image(s) could not be decoded" in err and "d.png" in err
    assert "cannot decode" in (out / builder.PROBLEMS_NAME).read_text()
    with pytest.raises(FileNotFoundError, match="no complete padchest dataset"):
        release_builder.load("padchest", str(out), resolution=16)
    assert prepare.main([*args, "--skip_bad"]) == 0
    printed = capsys.readouterr().out
    assert "prepared 2 images" in printed
    assert "left out 3: bad file 1, missing label 1, view 1" in printed
    b = release_builder.load("padchest", str(out), resolution=16)
    recs = _records(b)
    assert [r["image_id"] for r in recs] == [b"a.png", b"c.png"]
    assert recs[0]["label_states"][AT["Effusion"]] == P
    assert (recs[0]["age"], recs[1]["age"], recs[1]["sex"]) == (65, 76, b"F")
    assert b.info.metadata["converted"] == {"I;16": 2}
    # A flat 16-bit image has no range to stretch: black; a ramp spans 0..255.
    assert np.all(recs[0]["image"] == 0)
    manifest = (out / "padchest" / "16px" / "1.0.0" / builder.MANIFEST_NAME).read_text()
    assert "d.png" in manifest


def test_padchest_16_bit_images_are_stretched_over_their_own_range(tmp_path):
    from PIL import Image

    ramp = np.tile(np.linspace(1000, 4000, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    image, mode = padchest_layout.decode_image(str(tmp_path / "ramp.png"), 32)
    assert mode.startswith("I") and image[:, 0].max() == 0 and image[:, -1].min() == 255


def test_unknown_dataset_and_bad_views_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare.main(["--dataset", "openi", "--manual_dir", str(tmp_path),
                      "--data_dir", str(tmp_path / "o")])
    assert "invalid choice: 'openi'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown dataset 'openi'"):
        release_builder.build("openi", str(tmp_path), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="no views selected"):
        release_builder.config_for(16, [" "])
    with pytest.raises(PrepareError, match="no usable images"):
        rf.chexpert_folder(tmp_path / "c", _chexpert_rows()[1:2])
        release_builder.build("chexpert", str(tmp_path / "c"), str(tmp_path / "o"),
                              resolution=16, workers=0)


# The NIH builder's records and metadata, decoded, on a fixed synthetic set: computed before the
# release builders existed, so any change to what chest_xray14 writes shows here. (The
# ArrayRecord bytes themselves vary run to run: protobuf map order is not fixed.)
NIH_DIGEST = "1c1bd4f2512df44775f17eb526f1dfdd4f3583fa133cfa445557a5fe4a5e2fb7"


def test_nih_builder_output_is_unchanged(tmp_path):
    from cxrjax.data import synthetic

    synthetic.generate(str(tmp_path / "nih"), n=24, size=32, seed=0)
    b = builder.build(str(tmp_path / "nih"), str(tmp_path / "out"), resolution=16, workers=0)
    digest = hashlib.sha256()
    for rec in _records(b):
        for key in sorted(rec):
            value = rec[key]
            digest.update(key.encode())
            digest.update(repr(value.dtype if hasattr(value, "dtype") else type(value)).encode())
            digest.update(value.tobytes() if hasattr(value, "tobytes") else bytes(value))
    for name in ("metadata.json", "features.json"):
        digest.update((b.data_path / name).read_bytes())
    assert len(_records(b)) == 24 and digest.hexdigest() == NIH_DIGEST


def test_real_chexpert_rows_prepare_with_the_right_states_cell_by_cell(tmp_path):
    """The 2,883 real rows (CRLF, unchanged) with a tiny JPEG for each, through the builder."""
    import csv
    import gzip
    import shutil

    from PIL import Image

    sample = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                          "chexpert", "train_sample.csv.gz")
    with gzip.open(sample, "rt", newline="", encoding="utf-8") as f:
        real = list(csv.DictReader(f))
    root = tmp_path / "CheXpert-v1.0-small"
    tile = Image.fromarray(np.full((8, 8), 128, np.uint8))
    for row in real:
        path = root / row["Path"].split("/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        tile.save(path)
    shutil.copy(sample, root / "train.csv.gz")
    b = release_builder.build("chexpert", str(root), str(tmp_path / "out"), resolution=8,
                              views=["PA", "AP", "LATERAL"], workers=0)
    recs = {r["image_id"].decode(): r for r in _records(b)}
    assert len(recs) == 2883 and b.info.metadata["excluded"] == {}
    cell_state = {"1.0": P, "0.0": N, "": N, "-1.0": U}
    after = {"ignore": {U: M}, "zeros": {U: N}, "ones": {U: P}}
    for row in real:
        rec = recs[row["Path"].split("/", 1)[1]]
        for column in rf.CHEXPERT_HEADER[5:]:
            at = AT["Effusion" if column == "Pleural Effusion" else column]
            raw = cell_state[row[column]]
            assert rec["label_states"][at] == raw, (row["Path"], column)
            for policy, change in after.items():
                resolved = label_space.resolve(rec["label_states"], policy)[at]
                assert resolved == change.get(raw, raw), (row["Path"], column, policy)
        assert rec["sex"].decode() == row["Sex"][0] and rec["age"] == int(row["Age"])
        lateral = row["Frontal/Lateral"] == "Lateral"
        assert rec["view"].decode() == ("LATERAL" if lateral else row["AP/PA"])


def test_tfds_own_chexpert_builder_can_still_be_imported():
    """Ours are not registered by name, so TFDS's catalog builder of the same name loads."""
    import tensorflow_datasets.image_classification.chexpert as tfds_chexpert

    assert tfds_chexpert.Chexpert.name == release_builder.Chexpert.name == "chexpert"
