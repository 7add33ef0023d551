"""cxrjax.metrics against scikit-learn: AUC with heavy ties, W/D/N-AUC, NaN classes, bootstrap."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrjax import metrics
from cxrjax.data.labels import CLASSES, load_label_table


def _tied_data(n: int, num_classes: int = 14, seed: int = 0, decimals: int = 1):
    """Labels with varied prevalence and scores correlated with them, rounded -> heavy ties."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.01, 0.5, num_classes)
    labels = (rng.random((n, num_classes)) < prevalence).astype(np.uint8)
    scores = rng.random((n, num_classes)) * 0.7 + 0.3 * labels
    return np.round(scores, decimals).astype(np.float32), labels


def _sklearn_per_class(scores, labels, **kw):
    return np.array([roc_auc_score(labels[:, c], scores[:, c], **kw)
                     for c in range(labels.shape[1])])


def test_roc_auc_matches_sklearn_with_heavy_ties():
    scores, labels = _tied_data(3000)
    assert len(np.unique(scores)) <= 11  # every score shared by hundreds of images
    np.testing.assert_allclose(metrics.roc_auc(scores, labels),
                               _sklearn_per_class(scores, labels), rtol=0, atol=1e-12)


def test_roc_auc_with_sample_weight_matches_sklearn():
    scores, labels = _tied_data(1000, num_classes=4, seed=1)
    w = np.random.default_rng(2).integers(0, 4, size=1000).astype(float)
    np.testing.assert_allclose(metrics.roc_auc(scores, labels, sample_weight=w),
                               _sklearn_per_class(scores, labels, sample_weight=w), atol=1e-12)


def test_roc_auc_single_valued_class_is_nan_with_warning_naming_it():
    scores, labels = _tied_data(300, seed=8)
    labels[:, CLASSES.index("Hernia")] = 0
    with pytest.warns(RuntimeWarning, match="Hernia"):
        auc = metrics.roc_auc(scores, labels)
    assert np.isnan(auc[-1]) and np.isfinite(auc[:-1]).all()


def test_summary_leaves_single_valued_class_out_of_means_and_says_so():
    scores, labels = _tied_data(2000, seed=9)
    labels[:, CLASSES.index("Hernia")] = 0
    with pytest.warns(RuntimeWarning, match="Hernia"):
        out = metrics.summary(scores, labels, n_boot=20)
    ref = _sklearn_per_class(scores[:, :-1], labels[:, :-1])
    assert np.isnan(out["per_class"]["Hernia"])
    assert out["excluded_classes"] == ["Hernia"]
    assert out["n_auc_excluded_classes"] == ["Hernia"]
    assert out["mean_auc"] == pytest.approx(ref.mean(), abs=1e-12)
    w = load_label_table().prevalence()
    assert out["w_auc"] == pytest.approx(np.sum(w[:-1] * ref), abs=1e-12)
    assert np.isfinite(out["d_auc"]) and np.isfinite(out["n_auc"])
    assert all(np.isfinite(out["mean_auc_ci95"]))


def test_w_auc_weights_are_share_of_all_nih_images_and_normalized_matches_sklearn_weighted():
    scores, labels = _tied_data(3000, seed=10)
    out = metrics.summary(scores, labels, n_boot=0)
    table = load_label_table()
    weights = table.labels.sum(0) / len(table)
    assert len(table) == 112_120
    assert weights.sum() == pytest.approx(0.724, abs=0.001)
    np.testing.assert_allclose(list(out["w_auc_weights"].values()), weights, atol=1e-12)
    ref = _sklearn_per_class(scores, labels)
    assert out["w_auc"] == pytest.approx(np.sum(weights * ref), abs=1e-12)
    assert out["w_auc_normalized"] == pytest.approx(
        roc_auc_score(labels, scores, average="weighted"), abs=1e-12)
    assert out["mean_auc"] == pytest.approx(roc_auc_score(labels, scores, average="macro"))
    perfect = metrics.summary(labels.astype(float), labels, n_boot=0)
    assert perfect["w_auc"] == pytest.approx(weights.sum())  # why the paper's W-AUC is ~0.58


def test_summary_accepts_explicit_weights_and_rejects_wrong_shape():
    scores, labels = _tied_data(500, num_classes=3, seed=11)
    out = metrics.summary(scores, labels, weights=np.array([0.5, 0.25, 0.25]), n_boot=0)
    ref = _sklearn_per_class(scores, labels)
    assert out["w_auc"] == pytest.approx(0.5 * ref[0] + 0.25 * ref[1] + 0.25 * ref[2])
    with pytest.raises(ValueError, match="weights"):
        metrics.summary(scores, labels, weights=np.ones(4), n_boot=0)
    with pytest.raises(ValueError, match="default W-AUC weights"):
        metrics.summary(scores, labels, n_boot=0)


def test_d_auc_and_n_auc_match_sklearn_on_their_subsets():
    scores, labels = _tied_data(4000, seed=12)
    out = metrics.summary(scores, labels, n_boot=0)
    finding = labels.any(1)
    d_ref = _sklearn_per_class(scores[finding], labels[finding])
    n_ref = np.array([roc_auc_score(labels[keep, c], scores[keep, c]) for c, keep in
                      enumerate((labels[:, c] == 1) | ~finding for c in range(14))])
    np.testing.assert_allclose(list(out["per_class_d_auc"].values()), d_ref, atol=1e-12)
    np.testing.assert_allclose(list(out["per_class_n_auc"].values()), n_ref, atol=1e-12)
    assert out["d_auc"] == pytest.approx(d_ref.mean(), abs=1e-12)
    assert out["n_auc"] == pytest.approx(n_ref.mean(), abs=1e-12)


def test_jitted_weighted_auc_matches_sklearn_with_sample_weights_and_ties():
    scores, labels = _tied_data(3000, num_classes=3, decimals=2, seed=21)
    w = np.random.default_rng(3).integers(0, 5, size=3000).astype(np.float32)
    layout = metrics._sorted_layout(scores.astype(np.float64), labels.astype(bool))
    got = [float(metrics._weighted_auc_sorted(w[layout["order"][c]], layout["group"][c],
                                              layout["y_sorted"][c])) for c in range(3)]
    np.testing.assert_allclose(got, _sklearn_per_class(scores, labels, sample_weight=w),
                               atol=1e-6)


def _one_rare_bad_class(n=600, seed=0):
    """Like the demo's test split: 13 well-ranked classes and one with 2 positives, ranked low."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.15).astype(np.uint8)
    labels[:, 13] = 0
    labels[[5, 9], 13] = 1
    scores = rng.random((n, 14)) * 0.5 + 0.45 * labels
    scores[[5, 9], 13] = 0.05
    return scores, labels


def test_mean_auc_ci_holds_the_point_estimate_when_a_class_has_two_positives():
    scores, labels = _one_rare_bad_class()
    out = metrics.summary(scores, labels, n_boot=300, seed=0)
    lo, hi = out["mean_auc_ci95"]
    assert lo < out["mean_auc"] < hi
    # Resamples without a Hernia positive were redrawn, not averaged over 13 classes: the upper
    # bound stays below the mean without Hernia (the old, biased interval reached it).
    without_rare = np.mean(list(out["per_class"].values())[:13])
    assert hi < without_rare
    assert out["n_boot_drawn"] > 300
    assert out["few_positive_classes"] == ["Hernia"]


def test_per_class_ci_is_stratified_and_holds_each_point_estimate():
    scores, labels = _one_rare_bad_class(seed=1)
    out = metrics.summary(scores, labels, n_boot=300, seed=0)
    for name, (lo, hi) in out["per_class_ci95"].items():
        assert lo <= out["per_class"][name] <= hi, name
    # Stratified: every resample keeps Hernia's 2 positives, so its CI is defined.
    assert not np.isnan(out["per_class_ci95"]["Hernia"]).any()


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible_with_seed():
    scores, labels = _tied_data(2000, seed=14)
    a = metrics.summary(scores, labels, n_boot=200, seed=1)
    b = metrics.summary(scores, labels, n_boot=200, seed=1)
    c = metrics.summary(scores, labels, n_boot=200, seed=2)
    lo, hi = a["mean_auc_ci95"]
    assert lo < a["mean_auc"] < hi
    assert a["mean_auc_ci95"] == b["mean_auc_ci95"]
    assert a["mean_auc_ci95"] != c["mean_auc_ci95"]


def test_bootstrap_spread_matches_explicit_resampling_with_sklearn():
    scores, labels = _tied_data(1500, num_classes=3, seed=15)
    boot = metrics.bootstrap_auc(scores, labels, n_boot=300, seed=0).mean(1)
    rng = np.random.default_rng(99)
    ref = []
    for _ in range(300):
        idx = rng.integers(0, len(scores), len(scores))
        ref.append(_sklearn_per_class(scores[idx], labels[idx]).mean())
    assert boot.mean() == pytest.approx(np.mean(ref), abs=0.003)
    assert boot.std() == pytest.approx(np.std(ref), rel=0.25)


@pytest.mark.parametrize("scores, labels, match", [
    (np.zeros((5, 2)), np.zeros((5, 3)), "must both be"),
    (np.array([[0.1], [np.nan]]), np.array([[0], [1]]), "finite"),
    (np.array([[0.1], [0.2]]), np.array([[0], [2]]), "0/1"),
])
def test_roc_auc_rejects_bad_arrays(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.roc_auc(scores, labels)


def test_summary_has_every_key_the_json_contract_names():
    scores, labels = _tied_data(500, seed=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no class is degenerate here: no warning at all
        out = metrics.summary(scores, labels, n_boot=10)
    for key in ("per_class", "mean_auc", "w_auc", "w_auc_normalized", "d_auc", "n_auc",
                "mean_auc_ci95", "n_images"):
        assert key in out
    assert list(out["per_class"]) == list(CLASSES) and out["n_images"] == 500
