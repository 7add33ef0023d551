"""The paper's metric family: per-class ROC AUC, W-AUC, D-AUC, N-AUC, and a bootstrap CI.

The AUC (ties count half, exactly as scikit-learn) is a weighted Mann-Whitney statistic from
per-tie-group weight sums, written twice for two jobs: in float64 NumPy for the exact point
estimates (`roc_auc`, `summary`), and jitted in float32 for the bootstrap, where a resample is
a vector of counts over the images, pre-sorted once per class, so 1,000 resamples need no sort.

A figure that is undefined on the evaluated set is NaN, never an error, with a warning that
names it and says why: a class with a single label value (its AUC, and it is left out of every
mean; `summary` lists the excluded classes), D-AUC without an image with a finding, N-AUC
without a "No Finding" image, a mean with no class to average, a CI with no usable resample.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.data.labels import CLASSES, load_label_table

# Bootstrap resamples vectorised together inside the jitted loop (memory: batch x N x C).
_BOOT_BATCH = 16
# The conditional bootstrap of the mean AUC draws at most this many times n_boot resamples.
_MAX_DRAW_FACTOR = 20
# A class with fewer test positives than this has an unreliable AUC: tables and reports flag it.
FEW_POSITIVES = 5


# ----------------------------------------------------------------------------------------------
# NumPy reference.
# ----------------------------------------------------------------------------------------------


def class_names(num_classes: int) -> tuple[str, ...]:
    """The NIH names for 14 columns, else ``class_0 ... class_{C-1}``."""
    if num_classes == len(CLASSES):
        return CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def check_scores(scores: np.ndarray, labels: np.ndarray, what: str = "scores", *,
                 allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 scores and bool labels (N >= 1 unless ``allow_empty``; (N,) is one
    class); a bad array is a ValueError naming the problem, ``what`` naming the scores."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim == 1:
        scores, labels = scores[:, None], labels.reshape(-1, 1)
    if scores.ndim != 2 or scores.shape != labels.shape or not (len(scores) or allow_empty):
        raise ValueError(f"{what} {scores.shape} and labels {labels.shape} must both be (N, C)")
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise ValueError(f"{what} must be finite numbers (found NaN, inf or non-numeric values)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return scores.astype(np.float64), labels.astype(bool)


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable ascending order of a column and the start index of each group of equal scores."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def weighted_aucs(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one class under each row of sample ``weights`` (B, N) -> (B,): weighted
    Mann-Whitney with ties counted half.

    AUC = sum_g P_g (N_<g + N_g / 2) / (P N): P_g, N_g are the positive and negative weight in
    tie group g, N_<g the negative weight in lower groups. NaN where P or N is 0, or where
    there is no image at all (``reduceat`` cannot sum an empty row).
    """
    order, starts = _tie_groups(np.asarray(score, np.float64))
    y_sorted = np.asarray(positive, bool)[order]
    w_sorted = np.asarray(weights, np.float64)[:, order]
    if not y_sorted.shape[-1]:
        return np.full(w_sorted.shape[0], np.nan)
    w_pos = np.where(y_sorted, w_sorted, 0.0)
    pos = np.add.reduceat(w_pos, starts, axis=1)
    neg = np.add.reduceat(w_sorted, starts, axis=1) - pos
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _warn_degenerate(auc: np.ndarray, labels: np.ndarray, names: Sequence[str], what: str,
                     among: str = "") -> None:
    """One warning naming every NaN class and its positive count."""
    bad = np.flatnonzero(np.isnan(auc))
    if bad.size:
        listed = ", ".join(f"{names[c]} ({int(labels[:, c].sum())} positive)" for c in bad)
        warnings.warn(f"{what}: {bad.size} class(es) have one label value among the "
                      f"{labels.shape[0]} images{among}, so are NaN and left out of the means: "
                      f"{listed}", RuntimeWarning, stacklevel=3)


def _auc(scores: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None
         ) -> np.ndarray:
    """Per-column AUC of checked (N, C) arrays, NaN where a column has one label value."""
    out = np.empty(scores.shape[1])
    w = np.ones(scores.shape[0]) if sample_weight is None else sample_weight
    for c in range(scores.shape[1]):
        out[c] = weighted_aucs(scores[:, c], labels[:, c], w[None])[0]
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray,
            sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Per-class ROC AUC of (N, C) scores against 0/1 labels -> (C,) float64, NaN (+warning)
    for a class with one label value (or no weight on one side). Identical to
    ``sklearn.metrics.roc_auc_score`` per column, ``sample_weight`` (N,) >= 0 included.
    """
    scores, labels = check_scores(scores, labels)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, np.float64)
        if sample_weight.shape != scores.shape[:1] or not (sample_weight >= 0).all():
            raise ValueError(f"sample_weight must be ({scores.shape[0]},) and >= 0, got "
                             f"shape {sample_weight.shape}")
    out = _auc(scores, labels, sample_weight)
    _warn_degenerate(out, labels, class_names(scores.shape[1]), "AUC")
    return out


def _nanmean(x: np.ndarray, axis=None) -> np.ndarray | float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _undefined(figure: str, why: str) -> None:
    """Warns that ``figure`` is NaN on this set, and why (to the caller of ``summary``)."""
    warnings.warn(f"{figure} undefined (NaN): {why}", RuntimeWarning, stacklevel=4)


def _w_auc_weights(weights: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The W-AUC class weights: ``weights`` checked, or NIH's class shares for 14 classes."""
    if weights is None:
        if num_classes != len(CLASSES):
            raise ValueError(f"default W-AUC weights need {len(CLASSES)} classes, got "
                             f"{num_classes}; pass weights=")
        weights = load_label_table().prevalence()
    weights = np.asarray(weights, np.float64)
    if weights.shape != (num_classes,):
        raise ValueError(f"weights must have shape ({num_classes},), got {weights.shape}")
    return weights


def _subset_aucs(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class D-AUC (among images with a finding) and N-AUC (among images with the class
    or no finding: its negatives are the "No Finding" images), NaN where undefined, warned."""
    n = labels.shape[0]
    any_finding = labels.any(axis=1)
    n_finding, n_normal = int(any_finding.sum()), n - int(any_finding.sum())
    d_auc = _auc(scores[any_finding], labels[any_finding])
    if not n_finding:
        _undefined("D-AUC", f"none of the {n} images has a finding")
    else:
        _warn_degenerate(d_auc, labels[any_finding], names, "D-AUC", " with a finding")
        if np.isnan(d_auc).all():
            _undefined("D-AUC", f"no class has a positive and a negative among the "
                                f"{n_finding} images with a finding")
    n_auc = np.array([_auc(scores[keep, c:c + 1], labels[keep, c:c + 1])[0] for c, keep in
                      enumerate(labels[:, c] | ~any_finding for c in range(labels.shape[1]))])
    if not n_normal:
        _undefined("N-AUC", f"none of the {n} images is 'No Finding' (the negatives it ranks "
                            "each class against)")
    elif np.isnan(n_auc).any():
        listed = ", ".join(names[c] for c in np.flatnonzero(np.isnan(n_auc)))
        warnings.warn(f"N-AUC: {int(np.isnan(n_auc).sum())} class(es) have no positive among "
                      f"the {n} images, so are NaN and left out of the mean: {listed}",
                      RuntimeWarning, stacklevel=3)
        if np.isnan(n_auc).all():
            _undefined("N-AUC", f"no class has a positive among the {n} images")
    return d_auc, n_auc


def _bootstrap_cis(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray, n_boot: int,
                   seed: int) -> tuple[list[float], np.ndarray, int]:
    """(mean-AUC CI, (C, 2) per-class CIs, resamples drawn); NaN where a CI is undefined."""
    class_ci = np.full((labels.shape[1], 2), np.nan)
    if n_boot <= 0:
        return [float("nan"), float("nan")], class_ci, 0
    if not valid.any():
        _undefined("every bootstrap CI", "no class has a positive and a negative among the "
                                         f"{labels.shape[0]} images")
        return [float("nan"), float("nan")], class_ci, 0
    ci, drawn = _mean_auc_ci(scores, labels, valid, n_boot, seed)
    stratified = bootstrap_auc(scores, labels, n_boot=n_boot, seed=seed, stratified=True)
    class_ci[valid] = np.percentile(stratified[:, valid], [2.5, 97.5], axis=0).T
    return ci, class_ci, drawn


def summary(scores: np.ndarray, labels: np.ndarray, *, weights: np.ndarray | None = None,
            n_boot: int = 1000, seed: int = 0) -> dict:
    """Every number the paper reports, plus seeded 95% bootstrap CIs, for any label matrix.

    ``scores``, ``labels``: (N, C), labels 0/1 (N may be 0). ``weights``: W-AUC class weights
    (default: each class's share of ALL NIH images, the paper's Table 1). ``n_boot``: bootstrap
    resamples (0: no CIs); ``mean_auc_ci95`` resamples images and redraws a resample in which
    a class with a point AUC lacks positives or negatives (``n_boot_drawn`` counts all draws);
    ``per_class_ci95`` resamples each class's positives and negatives separately.
    Returns plain Python values: ``w_auc`` = sum_c w_c AUC_c; ``w_auc_normalized`` weights by
    positives (sklearn's ``average='weighted'``); ``d_auc`` is the AUC among images with a
    finding, ``n_auc`` among images with the class or no finding. A figure is NaN exactly where
    it is undefined (one label value; no class, finding or "No Finding" image to average over),
    and a RuntimeWarning says which and why.
    """
    scores, labels = check_scores(scores, labels, allow_empty=True)
    n, num_classes = scores.shape
    names = class_names(num_classes)
    weights = _w_auc_weights(weights, num_classes)

    auc = _auc(scores, labels)
    _warn_degenerate(auc, labels, names, "AUC")
    valid = ~np.isnan(auc)
    if not valid.any():
        _undefined("mean AUC and W-AUC", f"no class has a positive and a negative among the "
                                         f"{n} images")
    n_pos = labels.sum(axis=0)
    support = np.where(valid, n_pos, 0).astype(np.float64)
    d_auc, n_auc = _subset_aucs(scores, labels, names)
    ci, class_ci, drawn = _bootstrap_cis(scores, labels, valid, n_boot, seed)

    def per_class(values: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(names, values, strict=True)}

    return {
        "per_class": per_class(auc),
        "mean_auc": float(_nanmean(auc)),
        "w_auc": float(np.sum(weights[valid] * auc[valid])) if valid.any() else float("nan"),
        "w_auc_normalized": (float(np.sum(support * np.nan_to_num(auc)) / support.sum())
                             if support.sum() > 0 else float("nan")),
        "d_auc": float(_nanmean(d_auc)),
        "n_auc": float(_nanmean(n_auc)),
        "mean_auc_ci95": ci,
        "per_class_ci95": {name: [float(lo), float(hi)]
                           for name, (lo, hi) in zip(names, class_ci, strict=True)},
        "n_images": int(n),
        "per_class_d_auc": per_class(d_auc),
        "per_class_n_auc": per_class(n_auc),
        "n_positive": {name: int(v) for name, v in zip(names, n_pos, strict=True)},
        "w_auc_weights": per_class(weights),
        "excluded_classes": [names[c] for c in np.flatnonzero(~valid)],
        "d_auc_excluded_classes": [names[c] for c in np.flatnonzero(np.isnan(d_auc))],
        "n_auc_excluded_classes": [names[c] for c in np.flatnonzero(np.isnan(n_auc))],
        "few_positive_classes": [names[c] for c in np.flatnonzero(n_pos < FEW_POSITIVES)],
        "n_boot": int(n_boot),
        "n_boot_drawn": int(drawn),
        "seed": int(seed),
    }


# ----------------------------------------------------------------------------------------------
# Bootstrap (jitted): resampled AUCs from one sort per class, resamples as count weights.
# ----------------------------------------------------------------------------------------------


def _sorted_layout(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per class (rows): ascending score order, tie-group id along it, labels in that order,
    and the image indices with positives first (for stratified draws)."""
    n, num_classes = scores.shape
    order = np.empty((num_classes, n), np.int32)
    group = np.empty((num_classes, n), np.int32)
    for c in range(num_classes):
        order[c], starts = _tie_groups(scores[:, c])
        step = np.zeros(n, np.int32)
        step[starts[1:]] = 1
        group[c] = np.cumsum(step)
    positives_first = np.argsort(~labels.T, axis=1, kind="stable").astype(np.int32)
    return {"order": order, "group": group,
            "y_sorted": np.take_along_axis(labels.T, order, axis=1),
            "positives_first": positives_first, "n_pos": labels.sum(0).astype(np.int32)}


def _weighted_auc_sorted(w: jax.Array, group: jax.Array, y: jax.Array) -> jax.Array:
    """One class: weighted Mann-Whitney AUC of weights ``w`` already in score order (float32)."""
    n = w.shape[0]
    pos = jax.ops.segment_sum(jnp.where(y, w, 0.0), group, n, indices_are_sorted=True)
    neg = jax.ops.segment_sum(w, group, n, indices_are_sorted=True) - pos
    neg_below = jnp.cumsum(neg) - neg
    num = jnp.sum(pos * (neg_below + 0.5 * neg))
    den = jnp.sum(pos) * jnp.sum(neg)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames=("n_resamples", "stratified"))
def _resampled_aucs(key: jax.Array, layout: dict, n_resamples: int, stratified: bool
                    ) -> jax.Array:
    """(n_resamples, C) AUCs. Image-level: one count vector per resample shared by all classes.
    Stratified: per class, its positives and its negatives are resampled separately."""
    n = layout["order"].shape[1]
    slot = jnp.arange(n)

    def counts_of(idx):
        return jnp.zeros(n, jnp.float32).at[idx].add(1.0)

    def stratified_class(k, order, group, y, positives_first, n_pos):
        u = jax.random.uniform(k, (n,))
        p, q = n_pos.astype(jnp.float32), (n - n_pos).astype(jnp.float32)
        in_pos = jnp.minimum((u * p).astype(jnp.int32), jnp.maximum(n_pos - 1, 0))
        in_neg = jnp.minimum(n_pos + (u * q).astype(jnp.int32), n - 1)
        idx = positives_first[jnp.where(slot < n_pos, in_pos, in_neg)]
        return _weighted_auc_sorted(counts_of(idx)[order], group, y)

    def one(k):
        if stratified:
            keys = jax.random.split(k, layout["order"].shape[0])
            return jax.vmap(stratified_class)(keys, layout["order"], layout["group"],
                                              layout["y_sorted"], layout["positives_first"],
                                              layout["n_pos"])
        counts = counts_of(jax.random.randint(k, (n,), 0, n))
        return jax.vmap(_weighted_auc_sorted)(counts[layout["order"]], layout["group"],
                                              layout["y_sorted"])

    return jax.lax.map(one, jax.random.split(key, n_resamples), batch_size=_BOOT_BATCH)


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000,
                  seed: int = 0, stratified: bool = False, draw: int = 0) -> np.ndarray:
    """Per-class AUCs on ``n_boot`` bootstrap resamples -> (n_boot, C) float64 (jitted).

    Image-level (default): images are drawn with replacement, so the classes of one resample
    stay correlated as in the data; a class that draws no positive (or no negative) is NaN
    there. ``stratified``: each class's positives and negatives are resampled separately (its
    counts stay fixed), the usual bootstrap for one AUC's CI. ``draw`` selects an independent
    batch of resamples for the same seed.
    """
    scores, labels = check_scores(scores, labels)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    layout = {k: jnp.asarray(v) for k, v in _sorted_layout(scores, labels).items()}
    key = jax.random.fold_in(jax.random.key(seed), draw)
    return np.asarray(_resampled_aucs(key, layout, n_boot, stratified), np.float64)


def _mean_auc_ci(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray, n_boot: int,
                 seed: int) -> tuple[list[float], int]:
    """95% CI of the mean AUC over the ``valid`` classes, and how many resamples were drawn.

    Only resamples in which every valid class has positives and negatives are kept, so each
    resampled mean is over the same classes as the point estimate (dropping a rare class from
    some resamples' means biases the interval towards the mean without it).
    """
    kept, drawn = [], 0
    for draw in range(_MAX_DRAW_FACTOR):
        boot = bootstrap_auc(scores, labels, n_boot=n_boot, seed=seed, draw=draw)[:, valid]
        drawn += n_boot
        kept.append(boot[~np.isnan(boot).any(axis=1)].mean(axis=1))
        if sum(len(k) for k in kept) >= n_boot:
            means = np.concatenate(kept)[:n_boot]
            return [float(v) for v in np.percentile(means, [2.5, 97.5])], drawn
    warnings.warn(f"bootstrap: fewer than {n_boot} of {drawn} resamples held a positive and a "
                  "negative of every scored class; no CI of the mean AUC", RuntimeWarning,
                  stacklevel=3)
    return [float("nan"), float("nan")], drawn
