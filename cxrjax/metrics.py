"""The paper's metric family: per-class ROC AUC, W-AUC, D-AUC, N-AUC, and a bootstrap CI.

Two implementations of the same AUC (ties count half, exactly as scikit-learn):
* a NumPy reference (`roc_auc`, `summary`) that computes a *weighted* Mann-Whitney statistic
  from per-tie-group weight sums, so bootstrap resamples (multinomial counts as weights) reuse
  one sort per class;
* a jitted JAX version (`roc_auc_jax`, `auc_family_jax`) with a mask for padded eval batches.

A class with a single label value in the evaluated set gets NaN (with a warning) and is left
out of every mean; `summary` lists the excluded classes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.data.labels import CLASSES, load_label_table

# Bootstrap replicates are processed this many at a time: (chunk, N) float64 per class.
_BOOT_CHUNK = 50


# ----------------------------------------------------------------------------------------------
# NumPy reference.
# ----------------------------------------------------------------------------------------------


def class_names(num_classes: int) -> tuple[str, ...]:
    """The NIH names for 14 columns, else ``class_0 ... class_{C-1}``."""
    if num_classes == len(CLASSES):
        return CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 scores and bool labels; a bad array is a ValueError naming the problem."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim == 1:
        scores, labels = scores[:, None], labels.reshape(-1, 1)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise ValueError("scores must be finite numbers (found NaN, inf or non-numeric values)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return scores.astype(np.float64), labels.astype(bool)


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable ascending order of a column and the start index of each group of equal scores."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def _weighted_auc(y_sorted: np.ndarray, starts: np.ndarray, w_sorted: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC for (B, N) sample weights already in score order -> (B,).

    AUC = sum_g P_g (N_<g + N_g / 2) / (P N): P_g, N_g are the positive and negative weight in
    tie group g, N_<g the negative weight in lower groups. NaN where P or N is 0.
    """
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
        order, starts = _tie_groups(scores[:, c])
        out[c] = _weighted_auc(labels[order, c], starts, w[None, order])[0]
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray,
            sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Per-class ROC AUC of (N, C) scores against 0/1 labels -> (C,) float64, NaN (+warning)
    for a class with one label value (or no weight on one side). Identical to
    ``sklearn.metrics.roc_auc_score`` per column, ``sample_weight`` (N,) >= 0 included.
    """
    scores, labels = _check(scores, labels)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, np.float64)
        if sample_weight.shape != scores.shape[:1] or not (sample_weight >= 0).all():
            raise ValueError(f"sample_weight must be ({scores.shape[0]},) and >= 0, got "
                             f"shape {sample_weight.shape}")
    out = _auc(scores, labels, sample_weight)
    _warn_degenerate(out, labels, class_names(scores.shape[1]), "AUC")
    return out


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000,
                  seed: int = 0) -> np.ndarray:
    """Per-class AUCs on ``n_boot`` resamples of the images (with replacement) -> (n_boot, C).

    Each resample is a multinomial count vector used as sample weights, so each class is sorted
    once. A class with one label value in a resample is NaN there.
    """
    scores, labels = _check(scores, labels)
    n, num_classes = scores.shape
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    groups = [_tie_groups(scores[:, c]) for c in range(num_classes)]
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, num_classes))
    for lo in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - lo)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        for c, (order, starts) in enumerate(groups):
            out[lo:lo + b, c] = _weighted_auc(labels[order, c], starts, counts[:, order])
    return out


def _nanmean(x: np.ndarray, axis=None) -> np.ndarray | float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def summary(scores: np.ndarray, labels: np.ndarray, *, weights: np.ndarray | None = None,
            n_boot: int = 1000, seed: int = 0) -> dict:
    """Every number the paper reports, plus a seeded 95% bootstrap CI of the mean AUC.

    Args:
      scores, labels: (N, C) arrays; labels 0/1.
      weights: (C,) W-AUC class weights; default: share of ALL NIH images carrying each class
        (the paper's Table 1; they sum to ~0.724, so its W-AUC is ~0.58).
      n_boot: bootstrap resamples of the images for ``mean_auc_ci95`` (0 disables it): the
        2.5/97.5 percentiles of the resampled mean AUC over the classes that have a point AUC
        (a class that is one-valued in a resample is skipped in that resample's mean).
      seed: bootstrap seed.

    Returns a dict of plain Python values (floats may be NaN: ``evaluate.write_json`` writes
    them as null). ``w_auc`` = sum_c w_c AUC_c over the
    classes that have an AUC; ``w_auc_normalized`` weights each class by its positive count in
    the evaluated set, normalised to sum to 1 (sklearn's ``average='weighted'``). ``d_auc``:
    mean over classes of the AUC among images with >= 1 finding; ``n_auc``: mean over classes
    of the AUC among images with that class or no finding.
    """
    scores, labels = _check(scores, labels)
    n, num_classes = scores.shape
    names = class_names(num_classes)
    if weights is None:
        if num_classes != len(CLASSES):
            raise ValueError(f"default W-AUC weights need {len(CLASSES)} classes, got "
                             f"{num_classes}; pass weights=")
        weights = load_label_table().prevalence()
    weights = np.asarray(weights, np.float64)
    if weights.shape != (num_classes,):
        raise ValueError(f"weights must have shape ({num_classes},), got {weights.shape}")

    auc = _auc(scores, labels)
    _warn_degenerate(auc, labels, names, "AUC")
    valid = ~np.isnan(auc)
    n_pos = labels.sum(axis=0)
    support = np.where(valid, n_pos, 0).astype(np.float64)

    any_finding = labels.any(axis=1)
    d_auc = _auc(scores[any_finding], labels[any_finding])
    _warn_degenerate(d_auc, labels[any_finding], names, "D-AUC", " with a finding")
    n_auc = np.empty(num_classes)
    for c in range(num_classes):
        keep = labels[:, c] | ~any_finding
        n_auc[c] = _auc(scores[keep, c:c + 1], labels[keep, c:c + 1])[0]
    if np.isnan(n_auc).any():
        listed = ", ".join(f"{names[c]} ({int(n_pos[c])} positive)"
                           for c in np.flatnonzero(np.isnan(n_auc)))
        warnings.warn(f"N-AUC: with {int((~any_finding).sum())} 'No Finding' images, these "
                      f"classes are NaN and left out of the mean: {listed}", RuntimeWarning,
                      stacklevel=2)

    ci = [float("nan"), float("nan")]
    if n_boot > 0 and valid.any():
        boot = bootstrap_auc(scores, labels, n_boot=n_boot, seed=seed)
        boot_mean = _nanmean(boot[:, valid], axis=1)
        ci = [float(v) for v in np.nanpercentile(boot_mean, [2.5, 97.5])]

    def per_class(values: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(names, values, strict=True)}

    return {
        "per_class": per_class(auc),
        "mean_auc": float(_nanmean(auc)),
        "w_auc": float(np.sum(weights[valid] * auc[valid])),
        "w_auc_normalized": (float(np.sum(support * np.nan_to_num(auc)) / support.sum())
                             if support.sum() > 0 else float("nan")),
        "d_auc": float(_nanmean(d_auc)),
        "n_auc": float(_nanmean(n_auc)),
        "mean_auc_ci95": ci,
        "n_images": int(n),
        "per_class_d_auc": per_class(d_auc),
        "per_class_n_auc": per_class(n_auc),
        "n_positive": {name: int(v) for name, v in zip(names, n_pos, strict=True)},
        "w_auc_weights": per_class(weights),
        "excluded_classes": [names[c] for c in np.flatnonzero(~valid)],
        "d_auc_excluded_classes": [names[c] for c in np.flatnonzero(np.isnan(d_auc))],
        "n_auc_excluded_classes": [names[c] for c in np.flatnonzero(np.isnan(n_auc))],
        "n_boot": int(n_boot),
        "seed": int(seed),
    }


# ----------------------------------------------------------------------------------------------
# JAX (jitted, for use inside training and evaluation loops).
# ----------------------------------------------------------------------------------------------

# Above this many rows the exact int32 sum of 2*n_pos*n_neg could overflow.
_INT32_EXACT_ROWS = 65535


@jax.jit
def roc_auc_jax(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Per-class ROC AUC in JAX, ties counted half -> (C,) float32 (NaN for a one-value class).

    ``scores``/``labels``: (N, C) or (N,). ``mask``: (N,) or (N, C) bool; masked-out rows (e.g.
    padding of the last eval batch) count as neither positive nor negative. Scores are compared
    in float32 (+-inf rank as extremes; NaN is not supported). For each positive it counts, in
    integers, the negatives below (2x) and tied (1x); for N <= 65535 the sum over positives is
    exact in int32.
    """
    s = jnp.asarray(scores, jnp.float32)
    squeeze = s.ndim == 1
    s = s.reshape(s.shape[0], -1)
    y = jnp.asarray(labels).reshape(s.shape).astype(bool)
    if mask is None:
        valid = jnp.ones(s.shape, bool)
    else:
        m = jnp.asarray(mask).astype(bool)
        valid = jnp.broadcast_to(m.reshape(s.shape[0], -1), s.shape)
    pos, neg = y & valid, ~y & valid

    # Negatives' scores sorted per class; everything else sits at +inf, past any finite score.
    neg_sorted = jnp.sort(jnp.where(neg, s, jnp.inf), axis=0)
    n_pos = pos.sum(axis=0, dtype=jnp.int32)
    n_neg = neg.sum(axis=0, dtype=jnp.int32)

    def search(side: str) -> jax.Array:  # clamped: a +inf score never counts the fillers
        found = jax.vmap(functools.partial(jnp.searchsorted, side=side), in_axes=1, out_axes=1)(
            neg_sorted, s)
        return jnp.minimum(found.astype(jnp.int32), n_neg)

    below = search("left")  # negatives strictly below
    below_or_tied = search("right")
    twice_count = below + below_or_tied  # 2 * below + tied
    if s.shape[0] <= _INT32_EXACT_ROWS:
        total = jnp.where(pos, twice_count, 0).sum(axis=0, dtype=jnp.int32)
        den = 2.0 * n_pos.astype(jnp.float32) * n_neg.astype(jnp.float32)
        auc = total.astype(jnp.float32) / jnp.maximum(den, 1.0)
    else:  # Divide per positive first so every term is in [0, 1].
        per = twice_count.astype(jnp.float32) / (2.0 * jnp.maximum(n_neg, 1).astype(jnp.float32))
        auc = jnp.where(pos, per, 0.0).sum(axis=0) / jnp.maximum(n_pos, 1).astype(jnp.float32)
    auc = jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)
    return auc[0] if squeeze else auc


@jax.jit
def auc_family_jax(scores: jax.Array, labels: jax.Array,
                   mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-class AUC, D-AUC and N-AUC (each (C,)) and their NaN-skipping means, in one jit."""
    y = jnp.asarray(labels).astype(bool)
    valid = jnp.ones(y.shape[0], bool) if mask is None else jnp.asarray(mask).astype(bool)
    any_finding = y.any(axis=1)
    per = {
        "auc": roc_auc_jax(scores, y, valid),
        "d_auc": roc_auc_jax(scores, y, valid & any_finding),
        "n_auc": roc_auc_jax(scores, y, valid[:, None] & (y | ~any_finding[:, None])),
    }
    means = {f"mean_{k}": jnp.nanmean(v) for k, v in per.items()}
    return per | means
