"""The synthetic NIH-layout set: real label structure, deterministic, learnable, not trivial."""

import os

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from cxrjax.data import labels, pipeline, splits, synthetic


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "nih"
    assert synthetic.main(["--out", str(out), "--n", "80", "--size", "64", "--seed", "5",
                           "--workers", "0"]) == 0
    return out


def test_set_has_the_nih_layout_and_real_rows(small_set):
    names = sorted(os.listdir(small_set / "images"))
    assert len(names) == 80
    img = Image.open(small_set / "images" / names[0])
    assert img.mode == "L" and img.size == (64, 64)
    table = labels.load_label_table(str(small_set / synthetic.CSV_NAME))
    real = labels.load_label_table()
    assert sorted(table.image_ids) == names
    rows = real.rows(table.image_ids)
    np.testing.assert_array_equal(table.labels, real.labels[rows])
    np.testing.assert_array_equal(table.patient_ids, real.patient_ids[rows])
    lists = [(small_set / n).read_text().split() for n in splits.OFFICIAL_LISTS]
    assert sorted(lists[0] + lists[1]) == names
    s = splits.split_images(small_set / synthetic.CSV_NAME, "official")
    assert sum(len(v) for v in s.values()) == 80


def test_whole_patients_are_sampled_with_their_follow_ups():
    real = labels.load_label_table()
    rows = synthetic.sample_rows(500, seed=2)
    patients = real.patient_ids[rows]
    complete = [p for p in np.unique(patients)
                if (patients == p).sum() == (real.patient_ids == p).sum()]
    assert len(complete) >= len(np.unique(patients)) - 1  # only the last one may be cut


def test_sampled_labels_keep_the_real_imbalance():
    real = labels.load_label_table()
    rows = synthetic.sample_rows(20000, seed=0)
    got, want = real.labels[rows].mean(0), real.prevalence()
    np.testing.assert_allclose(got, want, atol=0.02)
    no_finding = (real.labels[rows].sum(1) == 0).mean()
    assert 0.50 < no_finding < 0.58


def test_generation_is_deterministic_and_reused(small_set, tmp_path):
    other = synthetic.generate(str(tmp_path / "again"), 80, 64, 5, workers=0)
    name = sorted(os.listdir(small_set / "images"))[3]
    assert (small_set / "images" / name).read_bytes() == (
        tmp_path / "again" / "images" / name).read_bytes()
    before = os.path.getmtime(os.path.join(other, "images", name))
    synthetic.generate(other, 80, 64, 5)
    assert os.path.getmtime(os.path.join(other, "images", name)) == before
    with pytest.raises(ValueError, match="other parameters"):
        synthetic.generate(other, 81, 64, 5)


def test_each_finding_changes_the_image():
    base = synthetic.render(np.zeros(14, np.uint8), 64, patient_seed=1, image_seed=2)
    for c in range(14):
        lab = np.zeros(14, np.uint8)
        lab[c] = 1
        img = synthetic.render(lab, 64, patient_seed=1, image_seed=2)
        assert np.abs(img.astype(int) - base).mean() > 0.3, labels.CLASSES[c]


def test_a_linear_model_learns_it_well_above_chance_but_not_perfectly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    real = labels.load_label_table()
    rows = synthetic.sample_rows(900, seed=1)
    y = real.labels[rows]
    x = np.stack([np.asarray(Image.fromarray(synthetic.render(
        y[i], 64, synthetic._stable_seed(1, int(real.patient_ids[r])), r)).resize(
        (24, 24), Image.Resampling.BILINEAR), np.float32).ravel() / 255
        for i, r in enumerate(rows)])
    part = splits.patient_split(real.patient_ids[rows], (0.7, 0.3), seed=0)
    aucs = {}
    for c in range(14):
        ytr, yte = y[part == 0, c], y[part == 1, c]
        if ytr.sum() < 10 or yte.sum() < 5:
            continue
        model = LogisticRegression(C=0.1, max_iter=200, class_weight="balanced")
        model.fit(x[part == 0], ytr)
        aucs[labels.CLASSES[c]] = roc_auc_score(yte, model.predict_proba(x[part == 1])[:, 1])
    assert len(aucs) >= 5, aucs
    assert np.mean(list(aucs.values())) > 0.7, aucs
    assert min(aucs.values()) < 0.95, aucs  # small/randomly placed signs need more than this


def test_ensure_prepared_generates_and_prepares_through_the_builder(tmp_path):
    cfg = mlc.ConfigDict(dict(
        source="synthetic", data_dir="", manual_dir="", split_scheme="paper", split_seed=0,
        resolution=64, crop=56, flip=False, workers=0, prefetch=2, chestmnist_path="",
        synthetic_n=60, synthetic_size=64))
    out = pipeline.ensure_prepared(cfg, str(tmp_path))
    assert os.path.isfile(os.path.join(out.manual_dir, synthetic.CSV_NAME))
    ds = pipeline.create_datasets(out, global_batch_size=4, eval_batch_size=8, seed=0,
                                  process_index=0, process_count=1)
    assert sum(ds.num_examples(s) for s in ("train", "val", "test")) == 60
    assert next(ds.train_iter())["image"].shape == (4, 56, 56, 1)
    again = pipeline.ensure_prepared(cfg, str(tmp_path))
    assert again.data_dir == out.data_dir
