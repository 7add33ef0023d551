"""The synthetic NIH-layout set: real label structure, deterministic, learnable, not trivial."""

import os

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from cxrjax.data import labels, nih_layout, pipeline, splits, synthetic, synthetic_chests


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
    table = labels.load_label_table(str(small_set / nih_layout.DATA_ENTRY_NAME))
    real = labels.load_label_table()
    assert sorted(table.image_ids) == names
    rows = real.rows(table.image_ids)
    np.testing.assert_array_equal(table.labels, real.labels[rows])
    np.testing.assert_array_equal(table.patient_ids, real.patient_ids[rows])
    lists = [(small_set / n).read_text().split() for n in splits.OFFICIAL_LISTS]
    assert sorted(lists[0] + lists[1]) == names
    s = splits.split_images(small_set / nih_layout.DATA_ENTRY_NAME, "official")
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


def _visible_seed(c, size=64):
    """An image seed at which class ``c`` is drawn with a visible sign (5% are not)."""
    lab = np.zeros(14, np.uint8)
    lab[c] = 1
    for seed in range(20):
        with_it = synthetic_chests.render(lab, size, patient_seed=1, image_seed=seed).image
        without = synthetic_chests.render(np.zeros(14, np.uint8), size, 1, seed).image
        if not np.array_equal(with_it, without):
            return seed
    raise AssertionError(f"{labels.CLASSES[c]} never drawn")


def test_each_finding_changes_the_image():
    for c in range(14):
        seed = _visible_seed(c)
        base = synthetic_chests.render(np.zeros(14, np.uint8), 64, patient_seed=1, image_seed=seed)
        lab = np.zeros(14, np.uint8)
        lab[c] = 1
        img = synthetic_chests.render(lab, 64, patient_seed=1, image_seed=seed)
        assert np.abs(img.image.astype(int) - base.image).mean() > 0.1, labels.CLASSES[c]


def test_about_one_positive_in_twenty_is_drawn_without_a_sign():
    lab = np.zeros(14, np.uint8)
    lab[labels.CLASS_INDEX["Mass"]] = 1
    hidden = np.mean([not synthetic_chests.render(lab, 32, 3, seed).boxes for seed in range(400)])
    assert 0.02 < hidden < 0.09, hidden


def _half_peak_rect(diff):
    mask = diff >= 0.5 * diff.max()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], float)


def _iou(a, b):
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.parametrize("name", labels.BOX_CLASSES)
def test_boxes_are_where_the_pixels_change_when_the_finding_is_added(name):
    """Renders with and without the finding (same seeds) differ only where it was drawn: a
    single box matches the rectangle of the half-peak difference (IoU >= 0.9, or every edge
    within a pixel for thin boxes); with several parts (nodules, bilateral effusions) every
    half-peak difference lies in a box and every box holds a visible difference."""
    size, c = 128, labels.CLASS_INDEX[name]
    lab = np.zeros(14, np.uint8)
    lab[c] = 1
    singles = drawn = 0
    for seed in range(12):
        base = synthetic_chests.render(np.zeros(14, np.uint8), size, patient_seed=7,
                                       image_seed=seed)
        img, boxes = synthetic_chests.render(lab, size, patient_seed=7, image_seed=seed)
        diff = np.abs(img.astype(int) - base.image)
        assert {n for n, _ in boxes} <= {name}
        if not boxes:  # drawn without a sign
            assert diff.max() <= 2, (seed, diff.max())
            continue
        drawn += 1
        xywh = np.array([b for _, b in boxes])
        if len(boxes) == 1:
            singles += 1
            want, got = _half_peak_rect(diff), xywh[0]
            edges = np.abs(np.r_[got[:2] - want[:2], got[:2] + got[2:] - want[:2] - want[2:]])
            assert _iou(got, want) >= 0.9 or edges.max() <= 1, (seed, got, want)
            continue
        covered = np.zeros_like(diff, bool)
        for x, y, w, h in xywh.astype(int):
            covered[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = True
            assert diff[y:y + h, x:x + w].max() >= 8, (seed, x, y, w, h)
        assert covered[diff >= 0.5 * diff.max()].all(), seed
    assert drawn >= 9 and singles >= 2, (drawn, singles)


def test_only_present_box_classes_get_boxes():
    non_box = [labels.CLASS_INDEX[c] for c in labels.CLASSES if c not in labels.BOX_CLASSES]
    lab = np.zeros(14, np.uint8)
    lab[non_box] = 1
    assert synthetic_chests.render(lab, 64, 1, 2).boxes == []
    lab[[labels.CLASS_INDEX["Mass"], labels.CLASS_INDEX["Effusion"]]] = 1
    for seed in range(5):
        names = {n for n, _ in synthetic_chests.render(lab, 64, 1, seed).boxes}
        assert names <= {"Mass", "Effusion"} and names


def test_generated_box_list_is_nih_format_in_the_1024_frame(small_set):
    path = small_set / labels.BBOX_LIST_NAME
    assert path.read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    boxes = labels.read_boxes(path)  # also checks every box lies in the 1024² frame
    table = labels.load_label_table(str(small_set / nih_layout.DATA_ENTRY_NAME))
    rows = table.rows(boxes.image_ids)
    assert table.labels[rows, boxes.labels].all()  # a box only for a labelled finding
    assert {labels.CLASSES[c] for c in boxes.labels} <= set(labels.BOX_CLASSES)
    real = labels.load_label_table()
    name = boxes.image_ids[0]
    r = int(real.rows([name])[0])
    drawn = synthetic_chests.render(real.labels[r], 64, synthetic.stable_seed(5, int(
        real.patient_ids[r])), 5 * 1_000_003 + r).boxes
    np.testing.assert_allclose(boxes.xywh[boxes.image_ids == name],
                               np.array([b for _, b in drawn]) * 1024 / 64)


def test_a_linear_model_learns_it_above_chance_but_far_from_perfectly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    real = labels.load_label_table()
    rows = synthetic.sample_rows(900, seed=1)
    y = real.labels[rows]
    x = np.stack([np.asarray(Image.fromarray(synthetic_chests.render(
        y[i], 64, synthetic.stable_seed(1, int(real.patient_ids[r])), r).image).resize(
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
    assert np.mean(list(aucs.values())) > 0.6, aucs
    assert max(aucs.values()) < 0.97, aucs  # not saturated: subtle signs, look-alikes


def test_ensure_prepared_generates_and_prepares_through_the_builder(tmp_path):
    cfg = mlc.ConfigDict(dict(
        source="synthetic", data_dir="", manual_dir="", split_scheme="paper", split_seed=0,
        resolution=64, crop=56, flip=False, workers=0, prefetch=2, chestmnist_path="",
        synthetic_n=60, synthetic_size=64, synthetic_seed=2, prepare_workers=1))
    cfg.lock()
    out = pipeline.ensure_prepared(cfg, str(tmp_path))
    root = tmp_path / "synthetic" / f"n60_s64_seed2_v{synthetic.VERSION}"
    assert out == pipeline.PreparedData(data_dir=str(root / "tfds"), manual_dir=str(root / "nih"))
    assert os.path.isfile(os.path.join(out.manual_dir, nih_layout.DATA_ENTRY_NAME))
    ds = pipeline.create_datasets(cfg, out, global_batch_size=4, eval_batch_size=8, seed=0,
                                  process_index=0, process_count=1)
    assert sum(ds.num_examples(s) for s in ("train", "val", "test")) == 60
    assert next(ds.train_iter())["image"].shape == (4, 56, 56, 1)
    assert pipeline.ensure_prepared(cfg, str(tmp_path)) == out
