"""Operating points and calibration on data with missing labels: each class is fitted and
scored over its known images only; an all-ones mask (NIH) gives exactly the unmasked numbers."""

import json

import numpy as np
import pytest
from helpers import tiny_config

from cxrjax.evaluation import calibration, evaluator, operating_points
from cxrjax.evaluation.section import SectionInputs


def _split(name: str, seed: int, n: int = 400) -> evaluator.SplitScores:
    """Scores that rise with the label; a quarter of the labels are missing (stored as 0, as a
    release stores an uncertain finding under ``ignore``), on images the model scores high."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.3).astype(np.uint8)
    probs = np.clip(0.15 + 0.45 * labels + rng.normal(0, 0.15, labels.shape), 0.01, 0.99)
    missing = rng.random(labels.shape) < 0.25
    probs[missing] = rng.uniform(0.3, 0.6, missing.sum())
    stored = np.where(missing, 0, labels).astype(np.uint8)
    return evaluator.SplitScores(name, [f"{name}{i}" for i in range(n)], {"fused": probs},
                                 stored, label_mask=(~missing).astype(np.uint8))


def _inputs(val, test, tmp_path, calibrate="platt"):
    config = tiny_config("r18")
    config.eval.update(dict(n_boot=0, threshold_rule="youden", calibration=calibrate))
    return SectionInputs(config, str(tmp_path), test, val, write_files=False)


def _ece_by_hand(probs, labels, n_bins=15):
    """ECE of one class from its definition (scikit-learn's right-closed uniform bins)."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (probs > lo) & (probs <= hi) if lo > 0 else (probs <= hi)
        if inside.any():
            total += inside.sum() * abs(labels[inside].mean() - probs[inside].mean())
    return total / len(probs)


def test_thresholds_and_ece_use_only_the_known_labels_of_each_class(tmp_path):
    val, test = _split("val", 0), _split("test", 1)
    points = operating_points.SECTION.compute(_inputs(val, test, tmp_path))
    cal = calibration.SECTION.compute(_inputs(val, test, tmp_path))
    read_as_negative = operating_points.choose_thresholds(val.probs["fused"], val.labels)
    ece_read_as_negative = calibration.calibration_summary(test.probs["fused"], test.labels)
    changed = 0
    for c, name in enumerate(points["per_class"]):
        known_val, known_test = val.label_mask[:, c] == 1, test.label_mask[:, c] == 1
        expected = operating_points.choose_thresholds(val.probs["fused"][known_val, c],
                                                      val.labels[known_val, c])[0]
        row = points["per_class"][name]
        assert row["threshold"] == expected
        changed += expected != read_as_negative[c]
        calls = test.probs["fused"][known_test, c] >= expected
        truth = test.labels[known_test, c] == 1
        assert row["tp"] + row["fn"] == truth.sum()  # the missing labels are not negatives
        assert row["sensitivity"]["value"] == pytest.approx((calls & truth).sum() / truth.sum())
        assert row["specificity"]["value"] == pytest.approx((~calls & ~truth).sum()
                                                            / (~truth).sum())
        ece = _ece_by_hand(test.probs["fused"][known_test, c], truth)
        assert cal["heads"]["fused"]["per_class"][name] == pytest.approx(ece, abs=1e-12)
        assert ece != pytest.approx(ece_read_as_negative["per_class"][name], abs=1e-6)
        fitted = calibration.fit_calibrator(val.probs["fused"][known_val, c:c + 1],
                                            val.labels[known_val, c:c + 1], "platt",
                                            classes=[name])
        assert cal["rescaling"]["parameters"]["per_class"][name]["slope"] == pytest.approx(
            fitted.slope[0], rel=1e-6)
    assert changed >= 10  # read as negatives, the missing labels would move these


def test_an_all_ones_mask_gives_exactly_the_unmasked_numbers(tmp_path):
    val, test = _split("val", 2), _split("test", 3)
    known = [evaluator.SplitScores(s.split, s.image_ids, s.probs, s.labels,
                                   label_mask=np.ones_like(s.labels)) for s in (val, test)]
    plain = [evaluator.SplitScores(s.split, s.image_ids, s.probs, s.labels) for s in (val, test)]
    for section in (operating_points.SECTION, calibration.SECTION):
        masked, unmasked = (json.dumps(section.compute(_inputs(*splits, tmp_path)))
                            for splits in (known, plain))  # as text: NaN equals NaN
        assert masked == unmasked


def test_a_class_without_a_known_label_has_no_threshold_and_no_ece(tmp_path):
    val, test = _split("val", 4), _split("test", 5)
    for s in (val, test):
        s.label_mask[:, 4] = 0  # Mass: a release that does not label it
    with pytest.warns(UserWarning, match="Mass"):
        thresholds = operating_points.choose_thresholds(val.probs["fused"], val.labels,
                                                        mask=val.label_mask)
    assert np.isnan(thresholds[4]) and not np.isnan(thresholds[:4]).any()
    summary = calibration.calibration_summary(test.probs["fused"], test.labels,
                                              mask=test.label_mask)
    per_class = np.array(list(summary["per_class"].values()))
    assert np.isnan(per_class[4]) and summary["mean_over_classes"] == pytest.approx(
        np.delete(per_class, 4).mean())
