"""Calibration: reliability bins against scikit-learn, ECE by hand, temperature and Platt
scaling fitted on validation, and the reliability-diagram PNG."""

import warnings

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import minimize
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import calibration as cal
from cxrjax.evaluation import metrics


def _overconfident(n=4000, classes=3, temperature=2.0, seed=0):
    """Probabilities sigmoid(z) for labels drawn from sigmoid(z / temperature): too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 3.0, (n, classes))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z / temperature))).astype(int)
    return 1 / (1 + np.exp(-z)), labels


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_reliability_bins_match_scikit_learns_uniform_calibration_curve(n_bins):
    probs, labels = _overconfident()
    probs[:40, 0] = np.round(probs[:40, 0], 1)  # values exactly on bin edges
    probs[40:42, 0] = [0.0, 1.0]
    curve = cal.reliability_curve(probs, labels, n_bins)
    for c in range(probs.shape[1]):
        frac, mean = calibration_curve(labels[:, c], probs[:, c], n_bins=n_bins,
                                       strategy="uniform")
        filled = curve["count"][c] > 0
        np.testing.assert_allclose(curve["fraction_positive"][c][filled], frac)
        np.testing.assert_allclose(curve["mean_predicted"][c][filled], mean)
        assert np.isnan(curve["mean_predicted"][c][~filled]).all()
    assert curve["count"].sum(axis=1).tolist() == [len(probs)] * probs.shape[1]


def test_ece_weights_each_bins_gap_by_its_share_of_images():
    probs = np.array([[0.1], [0.1], [0.3], [0.9], [0.9], [0.9], [0.9], [1.0]])
    labels = np.array([[0], [1], [0], [1], [1], [0], [1], [1]])
    # bins of 0.5: [0, .5] holds .1 .1 .3 (mean .1667, 1/3 positive); (.5, 1] the rest
    # (mean .92, 4/5 positive): ECE = 3/8 * |1/3 - 1/6| + 5/8 * |4/5 - 0.92|.
    per_class, pooled = cal.expected_calibration_error(probs, labels, n_bins=2)
    assert per_class[0] == pytest.approx(3 / 8 * (1 / 3 - 1 / 6) + 5 / 8 * 0.12)
    assert pooled == pytest.approx(per_class[0])


def test_pooled_ece_is_the_ece_of_all_predictions_as_one_column():
    probs, labels = _overconfident(classes=4)
    per_class, pooled = cal.expected_calibration_error(probs, labels)
    alone, _ = cal.expected_calibration_error(probs.reshape(-1, 1), labels.reshape(-1, 1))
    assert pooled == pytest.approx(alone[0]) and per_class.shape == (4,)
    summary = cal.calibration_summary(probs, labels, classes=("a", "b", "c", "d"))
    assert summary["mean_over_classes"] == pytest.approx(per_class.mean())


def test_well_calibrated_probabilities_have_small_ece_and_overconfident_ones_do_not():
    rng = np.random.default_rng(1)
    probs = rng.random((20000, 2))
    calibrated = (rng.random(probs.shape) < probs).astype(int)
    assert cal.expected_calibration_error(probs, calibrated)[1] < 0.01
    assert cal.expected_calibration_error(*_overconfident())[1] > 0.05


def test_platt_scaling_is_scikit_learns_unpenalised_logistic_regression_on_the_logit():
    probs, labels = _overconfident(n=3000, seed=2)
    fitted = cal.fit_calibrator(probs, labels, "platt", l2=0.0, classes=("a", "b", "c"))
    logit = np.log(probs) - np.log1p(-probs)
    for c in range(3):
        reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
            logit[:, [c]], labels[:, c])
        assert fitted.slope[c] == pytest.approx(reference.coef_[0, 0], rel=1e-5)
        assert fitted.intercept[c] == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_temperature_scaling_recovers_the_temperature_and_lowers_test_ece():
    val = _overconfident(n=20000, temperature=2.0, seed=3)
    test = _overconfident(n=20000, temperature=2.0, seed=4)
    fitted = cal.fit_calibrator(*val, "temperature", classes=("a", "b", "c"))
    np.testing.assert_allclose(1 / fitted.slope, 2.0, rtol=0.08)
    assert (fitted.intercept == 0).all()
    report = cal.rescaling_report(*val, *test, classes=("a", "b", "c"))
    assert report["test_ece_after"]["overall"] < report["test_ece_before"]["overall"] / 3
    assert report["parameters"]["per_class"]["a"]["slope"] == pytest.approx(fitted.slope[0])


def test_separable_class_keeps_a_finite_fit_and_constant_class_stays_uncalibrated():
    probs = np.array([[0.2, 0.3], [0.3, 0.6], [0.7, 0.4], [0.8, 0.5]])
    labels = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    with pytest.warns(UserWarning, match="b: one label value"):
        fitted = cal.fit_calibrator(probs, labels, "platt", classes=("a", "b"))
    assert np.isfinite(fitted.slope).all() and fitted.slope[0] > 1
    assert (fitted.slope[1], fitted.intercept[1]) == (1.0, 0.0)
    np.testing.assert_allclose(fitted.apply(probs)[:, 1], probs[:, 1])


@pytest.mark.parametrize("method", cal.METHODS)
def test_few_low_scoring_positives_cannot_reverse_the_ranking(method):
    """Three validation positives that score low: a free fit's slope is negative (-0.43 for
    the temperature) and maps 0.1 above 0.9; the fit keeps it at the positive floor."""
    probs = np.array([[.9], [.7], [.3], [.1], [.2], [.6]])
    labels = np.array([[0], [0], [1], [0], [1], [1]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = cal.fit_calibrator(probs, labels, method, classes=["Mass"])
    rescaled = fitted.apply(probs)[:, 0]
    assert metrics.roc_auc(rescaled, labels[:, 0]) == metrics.roc_auc(probs, labels)
    assert (np.diff(rescaled[np.argsort(probs[:, 0])]) > 0).all()  # strictly increasing
    assert fitted.slope[0] == cal.MIN_SLOPE
    assert [str(w.message) for w in caught] == [
        f"Mass: validation scores do not rise with the label; slope held at its floor "
        f"{cal.MIN_SLOPE:g} (nearly flat probabilities, order kept)"]


def test_rescaled_probabilities_stay_distinct_in_both_tails():
    """Float32 models give probabilities far below 1e-7: the rescaling keeps them apart (no
    clipping when applied), and maps 0 to 0 and 1 to 1."""
    probs = np.array([0.0, 1e-100, 1e-12, 1e-9, 1e-8, 0.3, 1 - 1e-6, 1 - 1e-7, 1.0])[:, None]
    for slope, intercept in ((0.5, 0.0), (1.0, 0.0), (2.0, -3.0)):
        rescaled = cal.Calibrator("platt", ("a",), np.array([slope]),
                                  np.array([intercept])).apply(probs)[:, 0]
        assert (np.diff(rescaled) > 0).all() and rescaled[[0, -1]].tolist() == [0.0, 1.0]


def _bounded_reference(z, y, method, l2):
    """The same penalised likelihood minimised by scipy's bounded L-BFGS-B."""
    def loss(v):
        t = v[0] * z + (v[1] if method == "platt" else 0.0)
        return (np.logaddexp(0, t) - y * t).mean() + 0.5 * l2 * v[0] ** 2
    return minimize(loss, [1.0, 0.0], method="L-BFGS-B", bounds=[(cal.MIN_SLOPE, None),
                    (None, None)], options={"ftol": 1e-15, "gtol": 1e-11}).x


@pytest.mark.parametrize("method", cal.METHODS)
def test_constrained_fit_is_the_bounded_minimum_of_the_likelihood(method):
    rng = np.random.default_rng(11)
    z = rng.normal(0, 2, (60, 4))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-np.array([2.0, 0.5, -0.5, -2.0]) * z))
         ).astype(int)  # two classes rank right, two backwards
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fitted = cal.fit_calibrator(1 / (1 + np.exp(-z)), y, method, classes=list("abcd"))
    for c in range(4):
        slope, intercept = _bounded_reference(z[:, c], y[:, c], method, 1e-4)
        assert fitted.slope[c] == pytest.approx(slope, rel=1e-4, abs=1e-6), c
        if method == "platt":
            assert fitted.intercept[c] == pytest.approx(intercept, abs=1e-4), c
    assert (fitted.slope[2:] == cal.MIN_SLOPE).all() and (fitted.slope[:2] > 0.3).all()


@pytest.mark.parametrize("method", cal.METHODS)
def test_rescaling_never_changes_a_class_auc_on_random_inputs(method):
    """200 random validation sets (1 to 5 positives in some, ties, 0 and 1, scores that rank
    right, at random or backwards): the fitted rescaling keeps every class's AUC exactly, on
    validation and on a fresh draw."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        n, c = int(rng.integers(6, 80)), 3
        direction = rng.choice([-2.0, 0.0, 1.0, 3.0], size=c)
        z = rng.normal(0, 2, (2 * n, c))
        labels = (rng.random(z.shape) < 1 / (1 + np.exp(-direction * z))).astype(int)
        if trial % 2:  # few positives: at most five per class
            labels[np.argsort(rng.random(z.shape), axis=0)[5:], np.arange(c)] = 0
        probs = 1 / (1 + np.exp(-z))
        tied = rng.random(z.shape) < 0.2
        probs[tied] = np.round(probs[tied], 1)
        probs[rng.random(z.shape) < 0.03] = rng.choice([0.0, 1.0])
        val, test = (probs[:n], labels[:n]), (probs[n:], labels[n:])
        usable = [k for k in range(c) if 0 < val[1][:, k].sum() < n]
        if not usable:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fitted = cal.fit_calibrator(val[0][:, usable], val[1][:, usable], method,
                                        classes=[str(k) for k in usable])
        for p, y in (val, test):
            p, y = p[:, usable], y[:, usable]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class without positives: NaN both ways
                before, after = metrics.roc_auc(p, y), metrics.roc_auc(fitted.apply(p), y)
            np.testing.assert_array_equal(after, before, err_msg=f"trial {trial}")
        assert (fitted.slope > 0).all()


@pytest.mark.parametrize("probs, message", [
    (np.array([[1.5], [0.2]]), r"must lie in \[0, 1\].*not a probability"),
    (np.array([[np.nan], [0.2]]), "finite"),
])
def test_input_that_is_not_a_probability_is_a_one_line_error(probs, message):
    with pytest.raises(ValueError, match=message) as e:
        cal.expected_calibration_error(probs, np.array([[1], [0]]))
    assert "\n" not in str(e.value)


def test_unknown_method_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown calibration method 'isotonic'"):
        cal.fit_calibrator(*_overconfident(classes=1), "isotonic", classes=("a",))


def test_reliability_diagram_png_has_a_panel_per_class_and_a_line_per_head(tmp_path):
    rng = np.random.default_rng(5)
    z = rng.normal(-2.5, 2.0, (3000, 14))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)
    heads = {"fused": (1 / (1 + np.exp(-z)), labels),
             "ce": (1 / (1 + np.exp(-1.8 * z)), labels),
             "fce": (1 / (1 + np.exp(-0.6 * z - 0.5)), labels)}
    path = cal.plot_reliability(heads, str(tmp_path / "reliability.png"), classes=CLASSES)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 1000 and image.size[1] > 1000
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank


def test_run_calibration_reports_probability_heads_and_rescales_the_fused_only_when_asked(
        tmp_path):
    rng = np.random.default_rng(7)
    labels = (rng.random((800, 14)) < 0.5).astype(int)  # even odds: a temperature suffices
    logits = 4.0 * (2 * labels - 1 + rng.normal(0, 1.0, labels.shape))  # 2x overconfident
    probs = {"fused": 1 / (1 + np.exp(-logits)), "ce": 1 / (1 + np.exp(-logits / 2)),
             "msml": 1 / (1 + np.exp(-logits))}
    val, test = {h: p[:400] for h, p in probs.items()}, {h: p[400:] for h, p in probs.items()}
    plain = cal.evaluate_calibration(val, labels[:400], test, labels[400:])
    assert set(plain["heads"]) == {"fused", "ce"} and plain["ranking_heads"] == ["msml"]
    assert plain["rescaling"] is None
    path = tmp_path / "reliability.png"
    scaled = cal.evaluate_calibration(val, labels[:400], test, labels[400:],
                                      method="temperature", plot_path=str(path))
    after = scaled["rescaling"]["test_ece_after"]["overall"]
    assert after < scaled["heads"]["fused"]["overall"] / 2 and path.stat().st_size > 10_000
    section = cal.report_section(scaled, "eval/reliability.png")
    assert "| **all predictions pooled** |" in section and "MSML (stream B)" in section
    assert "Temperature scaling of the fused prediction" in section
    with pytest.raises(ValueError, match="unknown calibration 'isotonic'"):
        cal.evaluate_calibration(val, labels[:400], test, labels[400:], method="isotonic")
