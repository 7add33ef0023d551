"""Recalibration for a new site: thresholds and calibrator refitted on the target's validation
split, measured before and after on the same target test images."""

import numpy as np
import pytest

from cxrjax.evaluation import calibration, external, recalibration
from cxrjax.evaluation import operating_points as op

CLASSES = ("a", "b", "c", "d")


def _site(seed: int, n: int, shift: float = 0.0, known: float = 1.0) -> external.Scored:
    """Calibrated scores at the source (shift 0); another site's are ``shift`` higher in logit
    (too many positives called, probabilities too high); ``known``: the share of known labels."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.6, (n, len(CLASSES)))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.uint8)
    probs = 1 / (1 + np.exp(-(z + shift)))
    mask = (rng.random(z.shape) < known).astype(np.uint8)
    return external.Scored([f"{seed}-{i}" for i in range(n)], probs, labels * mask, mask)


def _recalibrate(**kw):
    own_val, own_test = _site(0, 800), _site(1, 800)
    target_val, target_test = _site(2, 800, 1.5, 0.8), _site(3, 1000, 1.5, 0.8)
    deployed, result = recalibration.recalibrate(own_val, own_test, target_val, target_test,
                                                 CLASSES, n_boot=0, **kw)
    return (own_val, own_test, target_val, target_test), deployed, result


def test_after_thresholds_are_fitted_on_the_targets_known_validation_labels():
    (own_val, _, target_val, target_test), deployed, result = _recalibrate(method="platt")
    for c, name in enumerate(CLASSES):
        known = target_val.mask[:, c] == 1
        expected = op.choose_thresholds(target_val.probs[known, c], target_val.labels[known, c])
        assert deployed.thresholds[c] == expected[0] == result["after"]["per_class"][name][
            "threshold"]
        own = op.choose_thresholds(own_val.probs[:, c], own_val.labels[:, c])[0]
        assert result["before"]["per_class"][name]["threshold"] == own
        # before and after count the same target test images: those with a known label
        for column in ("before", "after"):
            row = result[column]["per_class"][name]
            assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == target_test.mask[:, c].sum()
    assert result["images"]["target_test"] == 1000 and deployed.chosen_on.startswith("the target")


def test_recalibration_moves_the_targets_ece_and_specificity_toward_the_source():
    _, _, result = _recalibrate(method="platt")
    mean = result["mean"]
    assert result["classes_compared"] == list(CLASSES)
    assert abs(mean["after"]["ece"] - mean["source_test"]["ece"]) < \
        abs(mean["before"]["ece"] - mean["source_test"]["ece"])
    assert abs(mean["after"]["specificity"] - mean["source_test"]["specificity"]) < \
        abs(mean["before"]["specificity"] - mean["source_test"]["specificity"])
    assert mean["after"]["ece"] < 0.05 < mean["before"]["ece"]


def test_the_ece_after_is_that_of_the_calibrator_fitted_on_the_target_validation_split():
    (_, _, target_val, target_test), _, result = _recalibrate(method="temperature")
    fitted = calibration.fit_calibrator(target_val.probs, target_val.labels, "temperature",
                                        classes=CLASSES, mask=target_val.mask)
    ece, _ = calibration.expected_calibration_error(fitted.apply(target_test.probs),
                                                    target_test.labels, mask=target_test.mask)
    assert [result["after"]["per_class"][c]["ece"] for c in CLASSES] == pytest.approx(ece)
    assert result["calibrator_before"] == "none" and result["after"]["calibrator"] == \
        "temperature"


def test_a_class_the_target_cannot_set_keeps_the_runs_threshold(tmp_path):
    own_val, own_test, target_val, target_test = _site(0, 500), _site(1, 500), \
        _site(2, 500, 1.0), _site(3, 500, 1.0)
    target_val.mask[:, 2] = 0  # the target does not label class c
    with pytest.warns(UserWarning, match="the target's validation split: c: no positive"):
        deployed, result = recalibration.recalibrate(own_val, own_test, target_val,
                                                     target_test, CLASSES, n_boot=0)
    own = op.choose_thresholds(own_val.probs, own_val.labels)
    assert deployed.thresholds[2] == own[2] and deployed.thresholds[0] != own[0]
    assert result["thresholds_kept_from_run"] == ["c"]
    deployed.save(tmp_path / "t.json")
    loaded = op.OperatingPoints.load(tmp_path / "t.json", CLASSES)
    np.testing.assert_array_equal(loaded.thresholds, deployed.thresholds)
    assert loaded.chosen_on == deployed.chosen_on == (
        "the target's validation split (the run's own for c)") and loaded.rule == "youden"
    text = recalibration.format_markdown({**result, "label": "x", "train_source": "nih",
                                          "thresholds_file": "t.json"})
    assert "Kept the run's threshold" in text and "| **mean of 4** |" in text
    assert "ECE of all predictions pooled" in text


def test_an_unknown_calibrator_is_refused():
    with pytest.raises(ValueError, match="method 'isotonic'"):
        _recalibrate(method="isotonic")
