"""cxrjax.evaluation.metrics against scikit-learn: AUC with heavy ties, W/D/N-AUC, NaN classes,
bootstrap."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrjax.data.labels import CLASSES, load_label_table
from cxrjax.evaluation import metrics


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


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible_with_seed(optimised_xla):
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


# ----------------------------------------------------------------------------------------------
# Any label matrix: tiny and skewed sets (a small run's 6-image validation split).
# ----------------------------------------------------------------------------------------------

_KINDS = ("random", "all findings", "no finding at all", "one class", "a single image",
          "a class all positive", "no 'No Finding' image", "one 'No Finding' image")


def _tiny_case(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of 1-8 images and 1-5 classes (14 now and then) of one ``kind``;
    scores on a coarse grid, so ties are common."""
    n = 1 if kind == "a single image" else int(rng.integers(2, 9))
    c = 1 if kind == "one class" else int(rng.choice([1, 2, 3, 4, 5, 14]))
    labels = (rng.random((n, c)) < rng.random()).astype(np.uint8)
    if kind == "all findings":
        labels[:] = 1
    elif kind == "no finding at all":
        labels[:] = 0
    elif kind == "a class all positive":
        labels[:, rng.integers(c)] = 1
    elif kind == "no 'No Finding' image":
        labels[np.arange(n), rng.integers(c, size=n)] = 1
    elif kind == "one 'No Finding' image":
        labels[0] = 0
        labels[np.arange(1, n), rng.integers(c, size=n - 1)] = 1
    return rng.integers(0, 4, size=(n, c)) / 4, labels


def _sklearn_or_nan(scores: np.ndarray, labels: np.ndarray) -> float:
    return roc_auc_score(labels, scores) if len(np.unique(labels)) == 2 else np.nan


def _check_one(scores: np.ndarray, labels: np.ndarray, out: dict, messages: list[str]) -> None:
    """Every figure equals scikit-learn where defined and is NaN, with a warning, where not."""
    c = labels.shape[1]
    finding = labels.any(axis=1)
    ref = {"per_class": [_sklearn_or_nan(scores[:, k], labels[:, k]) for k in range(c)],
           "per_class_d_auc": [_sklearn_or_nan(scores[finding, k], labels[finding, k])
                               for k in range(c)],
           "per_class_n_auc": [_sklearn_or_nan(scores[keep, k], labels[keep, k]) for k, keep
                               in enumerate((labels[:, k] == 1) | ~finding for k in range(c))]}
    for key, values in ref.items():
        np.testing.assert_allclose(list(out[key].values()), values, atol=1e-12, err_msg=key)
    auc = np.array(ref["per_class"])
    weights = np.array(list(out["w_auc_weights"].values()))
    means = {"mean_auc": auc, "d_auc": np.array(ref["per_class_d_auc"]),
             "n_auc": np.array(ref["per_class_n_auc"])}
    for key, values in means.items():
        defined = ~np.isnan(values)
        expected = values[defined].mean() if defined.any() else np.nan
        np.testing.assert_allclose(out[key], expected, atol=1e-12, err_msg=key)
    valid = ~np.isnan(auc)
    np.testing.assert_allclose(out["w_auc"], np.sum(weights[valid] * auc[valid])
                               if valid.any() else np.nan, atol=1e-12)
    assert np.isnan(out["w_auc_normalized"]) == (not valid.any())
    names = list(out["per_class"])
    assert out["excluded_classes"] == [names[k] for k in np.flatnonzero(~valid)]
    # The warnings: one for each kind of undefined figure, and none when all are defined.
    said = " | ".join(messages)
    if not valid.all():
        assert "AUC: " in said and all(n in said for n in out["excluded_classes"]), said
    if not valid.any():
        assert "mean AUC and W-AUC undefined" in said, said
    if np.isnan(out["d_auc"]):
        assert "D-AUC undefined" in said, said
    if np.isnan(out["n_auc"]):
        assert "N-AUC undefined" in said, said
    if not any(np.isnan(v).any() for v in (auc, *means.values())):
        assert not messages, said


def test_summary_on_any_tiny_label_matrix_matches_sklearn_or_is_nan_and_says_why():
    rng = np.random.default_rng(2026)
    seen = dict.fromkeys(_KINDS, 0)
    for case in range(480):
        kind = _KINDS[case % len(_KINDS)]
        scores, labels = _tiny_case(kind, rng)
        weights = None if labels.shape[1] == 14 else rng.random(labels.shape[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = metrics.summary(scores, labels, weights=weights, n_boot=0)
        assert all(issubclass(w.category, RuntimeWarning) for w in caught)
        try:
            _check_one(scores, labels, out, [str(w.message) for w in caught])
        except AssertionError as e:
            raise AssertionError(f"case {case} ({kind}): labels {labels.tolist()}") from e
        seen[kind] += 1
    assert min(seen.values()) == 60


def test_bootstrap_cis_on_tiny_label_matrices_are_nan_exactly_where_a_class_has_no_auc():
    rng = np.random.default_rng(7)
    for case in range(40):  # one shape (6 images, 3 classes): one compile of each bootstrap
        scores = rng.integers(0, 4, size=(6, 3)) / 4
        labels = (rng.random((6, 3)) < rng.random()).astype(np.uint8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = metrics.summary(scores, labels, weights=np.ones(3) / 3, n_boot=32, seed=case)
        auc = np.array(list(out["per_class"].values()))
        class_ci = np.array(list(out["per_class_ci95"].values()))
        np.testing.assert_array_equal(np.isnan(class_ci).any(axis=1), np.isnan(auc))
        assert ((0 <= class_ci[~np.isnan(auc)]) & (class_ci[~np.isnan(auc)] <= 1)).all()
        assert (class_ci[:, 0] <= class_ci[:, 1])[~np.isnan(auc)].all()
        lo, hi = out["mean_auc_ci95"]
        if np.isnan(auc).all():
            assert np.isnan([lo, hi]).all() and out["n_boot_drawn"] == 0
            assert any("every bootstrap CI undefined" in str(w.message) for w in caught)
        elif np.isnan([lo, hi]).any():  # too few resamples held both labels of every class
            assert any("no CI of the mean AUC" in str(w.message) for w in caught)
        else:
            assert 0 <= lo <= hi <= 1


def test_summary_of_no_image_is_nan_everywhere_with_warnings():
    with pytest.warns(RuntimeWarning, match="D-AUC undefined"):
        out = metrics.summary(np.zeros((0, 14)), np.zeros((0, 14)), n_boot=10)
    assert out["n_images"] == 0
    figures = [out[k] for k in ("mean_auc", "w_auc", "w_auc_normalized", "d_auc", "n_auc")]
    assert np.isnan(figures + out["mean_auc_ci95"]).all()
    with pytest.raises(ValueError, match="must both be"):  # a single AUC still needs images
        metrics.roc_auc(np.zeros((0, 2)), np.zeros((0, 2)))
