"""Operating points: thresholds by rule (checked against scikit-learn), thresholds.json, and the
measures at a threshold with bootstrap CIs."""

import json
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_curve

from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import operating_points as op
from cxrjax.evaluation import operating_points_tables as tables


def _validation(n=400, classes=3, seed=0, decimals=2):
    """Informative scores with ties (rounded), a different prevalence per class."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < np.linspace(0.1, 0.5, classes)).astype(int)
    scores = np.round(1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, 1.2, labels.shape)))),
                      decimals)
    return scores, labels


def test_youden_threshold_is_scikit_learns_roc_argmax_of_tpr_minus_fpr():
    scores, labels = _validation()
    chosen = op.choose_thresholds(scores, labels)
    for c in range(scores.shape[1]):
        fpr, tpr, thresholds = roc_curve(labels[:, c], scores[:, c])
        assert chosen[c] == thresholds[np.argmax(tpr - fpr)]


def test_max_f1_threshold_reaches_the_best_f1_of_any_score_and_is_the_highest_that_does():
    scores, labels = _validation(seed=1)
    chosen = op.choose_thresholds(scores, labels, "max_f1")
    for c in range(scores.shape[1]):
        candidates = np.unique(scores[:, c])
        f1 = np.array([f1_score(labels[:, c], scores[:, c] >= t) for t in candidates])
        assert chosen[c] == candidates[f1 == f1.max()].max()


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_target_sensitivity_threshold_is_the_highest_that_reaches_the_target(target):
    scores, labels = _validation(seed=2)
    chosen = op.choose_thresholds(scores, labels, "sensitivity", target_sensitivity=target)
    for c in range(scores.shape[1]):
        fpr, tpr, thresholds = roc_curve(labels[:, c], scores[:, c], drop_intermediate=False)
        assert chosen[c] == thresholds[np.argmax(tpr >= target)]
        assert recall_score(labels[:, c], scores[:, c] >= chosen[c]) >= target


def test_youden_tie_in_exact_arithmetic_goes_to_the_highest_threshold():
    """J is exactly 1/3 at 0.4 (TP 2, FP 1) and at 0.2 (TP 3, FP 2); as floats, 2/3 - 1/3
    rounds below 1 - 2/3, which used to pick 0.2."""
    chosen = op.choose_thresholds([.6, .5, .4, .3, .2, .1], [0, 1, 1, 0, 1, 0], "youden")
    assert chosen.tolist() == [0.4]


def _exact_reference(scores, labels, rule, target=None):
    """The rule from its definition, in fractions: every distinct score as a threshold, the
    best by ``rule``, the highest threshold among equals."""
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    best, chosen = None, None
    for t in sorted(set(scores.tolist()), reverse=True):
        tp = int(((scores >= t) & (labels == 1)).sum())
        fp = int(((scores >= t) & (labels == 0)).sum())
        if rule == "youden":
            value = Fraction(tp, positives) - Fraction(fp, negatives)
        elif rule == "max_f1":
            value = Fraction(2 * tp, 2 * tp + fp + (positives - tp))
        else:  # the first (highest) threshold whose sensitivity reaches the written target
            value = int(Fraction(tp, positives) >= Fraction(repr(target)))
        if best is None or value > best:
            best, chosen = value, t
    return chosen


@pytest.mark.parametrize("rule", op.RULES)
def test_every_rule_matches_its_exact_definition_on_random_tied_scores(rule):
    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(2, 40))
        labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
        if labels.sum() in (0, n):
            continue
        scores = rng.integers(0, rng.integers(2, 12), n) / 10  # few distinct values: ties
        positives = int(labels.sum())
        target = None
        if rule == "sensitivity":  # a reachable fraction, or one just above it
            target = float(rng.integers(1, positives + 1) / positives)
            target = float(min(1.0, target + rng.choice([0.0, 1e-12, 1e-10])))
        chosen = op.choose_thresholds(scores, labels, rule, target_sensitivity=target)
        assert chosen[0] == _exact_reference(scores, labels, rule, target), (trial, rule)


def test_class_without_positives_gets_nan_threshold_and_a_warning_naming_it():
    scores, labels = _validation()
    labels[:, 1] = 0
    with pytest.warns(UserWarning, match="^Cardiomegaly: no positive validation image; its "
                      "threshold is NaN$"):
        chosen = op.choose_thresholds(scores, labels, classes=CLASSES[:3])
    assert np.isnan(chosen[1]) and np.isfinite(chosen[[0, 2]]).all()
    assert not op.positive_calls(scores, chosen)[:, 1].any()


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "accuracy"}, "unknown rule 'accuracy'"),
    ({"rule": "youden", "target_sensitivity": 0.9}, "goes with rule='sensitivity'"),
    ({"rule": "sensitivity"}, "goes with rule='sensitivity'"),
    ({"rule": "sensitivity", "target_sensitivity": 1.5}, r"must be in \(0, 1\]"),
])
def test_bad_rule_is_a_one_line_error(kwargs, message):
    scores, labels = _validation()
    with pytest.raises(op.ThresholdsError, match=message) as e:
        op.choose_thresholds(scores, labels, **kwargs)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# thresholds.json
# ---------------------------------------------------------------------------------------------


def test_thresholds_file_round_trips_with_classes_rule_and_nan_as_null(tmp_path):
    scores, labels = _validation(classes=14, n=600)
    labels[:, 13] = 0
    with pytest.warns(UserWarning, match="Hernia"):
        points = op.OperatingPoints.fit(scores, labels, "sensitivity", target_sensitivity=0.9)
    path = tmp_path / "eval" / "thresholds.json"
    points.save(path)
    body = json.loads(path.read_text())
    assert body["rule"] == "sensitivity" and body["target_sensitivity"] == 0.9
    assert body["classes"] == list(CLASSES) and body["thresholds"]["Hernia"] is None
    again = op.OperatingPoints.load(path)
    np.testing.assert_array_equal(again.thresholds, points.thresholds)
    assert (again.classes, again.rule) == (CLASSES, "sensitivity")


def test_thresholds_file_for_other_classes_is_a_one_line_error(tmp_path):
    scores, labels = _validation(classes=3)
    path = tmp_path / "thresholds.json"
    op.OperatingPoints.fit(scores, labels, classes=("a", "b", "c")).save(path)
    with pytest.raises(op.ThresholdsError, match=r"other classes.*missing \['Atelectasis'") as e:
        op.OperatingPoints.load(path)
    assert "\n" not in str(e.value)
    with pytest.raises(op.ThresholdsError, match="in another order"):
        op.OperatingPoints.load(path, classes=("c", "b", "a"))


@pytest.mark.parametrize("content, message", [
    (None, "thresholds file not found"),
    ("{not json", "not a JSON file"),
    ('{"rule": "youden"}', "not a thresholds file"),
    ('{"rule": "youden", "classes": ["a"], "thresholds": {"a": "high"}}', "needs a number"),
    ('{"rule": "vibes", "classes": ["a"], "thresholds": {"a": 0.5}}', "unknown rule 'vibes'"),
])
def test_unreadable_thresholds_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "thresholds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(op.ThresholdsError, match=message) as e:
        op.OperatingPoints.load(path, classes=("a",))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Measures at the thresholds.
# ---------------------------------------------------------------------------------------------


def test_measures_at_thresholds_equal_scikit_learns_and_sit_inside_their_intervals():
    scores, labels = _validation(n=800, seed=3)
    thresholds = op.choose_thresholds(scores, labels)
    out = op.operating_point_metrics(scores, labels, thresholds, n_boot=300,
                                     classes=("a", "b", "c"))
    for c, name in enumerate(("a", "b", "c")):
        y, called = labels[:, c], scores[:, c] >= thresholds[c]
        row = out["per_class"][name]
        expected = {"sensitivity": recall_score(y, called),
                    "specificity": recall_score(y, called, pos_label=0),
                    "ppv": precision_score(y, called),
                    "npv": precision_score(y, called, pos_label=0),
                    "f1": f1_score(y, called)}
        for measure, value in expected.items():
            assert row[measure]["value"] == pytest.approx(value), (name, measure)
            assert row[measure]["low"] <= value <= row[measure]["high"], (name, measure)
        assert row["tp"] + row["fn"] == y.sum() and row["tp"] + row["fp"] == called.sum()


def test_bootstrap_intervals_are_seeded_and_narrow_with_more_images():
    small = _validation(n=200, seed=4)
    large = _validation(n=3200, seed=4)
    t = op.choose_thresholds(*small)

    def width(data, seed=0):
        row = op.operating_point_metrics(*data, t, n_boot=200, seed=seed,
                                         classes=("a", "b", "c"))["per_class"]["c"]
        return row["sensitivity"]["high"] - row["sensitivity"]["low"]

    assert width(small) == width(small) != width(small, seed=1)
    assert width(large) < width(small) / 2


def test_measure_without_a_denominator_is_nan_not_an_error():
    scores = np.array([[0.1], [0.2], [0.3]])
    labels = np.array([[0], [0], [1]])
    row = op.operating_point_metrics(scores, labels, [0.9], n_boot=20,
                                     classes=("a",))["per_class"]["a"]
    assert np.isnan(row["ppv"]["value"]) and row["specificity"]["value"] == 1.0


def test_wrong_number_of_thresholds_is_a_one_line_error():
    scores, labels = _validation()
    with pytest.raises(op.ThresholdsError, match="2 thresholds for 3 classes"):
        op.operating_point_metrics(scores, labels, [0.5, 0.5])


def test_run_operating_points_are_chosen_on_validation_and_measured_on_test():
    val, val_labels = _validation(seed=4)
    test, test_labels = _validation(seed=5)
    points, result = op.evaluate_operating_points(val, val_labels, test, test_labels,
                                                  rule="max_f1", target_sensitivity=0.9,
                                                  n_boot=50, classes=CLASSES[:3])
    np.testing.assert_array_equal(points.thresholds,
                                  op.choose_thresholds(val, val_labels, "max_f1"))
    assert result["target_sensitivity"] is None  # only the sensitivity rule reads it
    assert (result["validation_images"], result["test_images"]) == (400, 400)
    for c, name in enumerate(CLASSES[:3]):
        called = test[:, c] >= points.thresholds[c]
        assert result["per_class"][name]["f1"]["value"] == pytest.approx(
            f1_score(test_labels[:, c], called))
    table = tables.markdown_table(result)
    assert table.count("\n") == 4 and "| Atelectasis | " in table and " [" in table
    text = tables.format_text(result)
    assert text.splitlines()[0].split()[:3] == ["Finding", "threshold", "test"]
    section = tables.report_section(result)
    assert "the threshold maximising F1 on the validation split (400 images)" in section


def test_zero_resamples_give_values_without_intervals_and_no_result_says_why():
    scores, labels = _validation()
    result = op.operating_point_metrics(scores, labels, [0.5] * 3, n_boot=0)
    row = result["per_class"]["class_0"]
    assert np.isfinite(row["sensitivity"]["value"]) and np.isnan(row["sensitivity"]["low"])
    assert "no bootstrap CI" in tables.describe({**result, "rule": "youden"})
    assert "Not computed: the validation split is empty." in tables.report_section(
        {"skipped": "the validation split is empty"})
