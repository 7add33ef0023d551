"""AUCs over known labels only: per class over the images whose label is known, with CIs.

A release labels some classes not at all and some images uncertainly; a ``mask`` (N, C) of 0/1
says which labels are known. Each class's AUC is computed over its known images (ties count
half, as scikit-learn); its 95% CI comes from a bootstrap stratified by label (its known
positives and negatives resampled separately). The mean AUC's CI resamples whole images, so the
classes of one resample stay correlated; only resamples in which every scored class has a
positive and a negative are kept (as ``metrics.summary`` does). ``mean_difference`` compares the
mean AUCs of two independent sets (a run's own test split and an external one) with a CI from
their independent resamples. Exact in float64 NumPy; weights are counts, so no resample sorts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrjax.evaluation.metrics import FEW_POSITIVES, weighted_aucs

_CHUNK = 128  # resamples computed together (memory: chunk x N float64 per class)
_MAX_DRAW_FACTOR = 20


def check_masked(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C) float64 scores, bool labels and bool mask (all known when None); a ValueError
    naming the problem otherwise."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask)
    if scores.ndim != 2 or scores.shape != labels.shape or mask.shape != labels.shape:
        raise ValueError(f"scores {scores.shape}, labels {labels.shape} and mask {mask.shape} "
                         "must all be (N, C)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite numbers")
    if not (np.isin(labels, (0, 1)).all() and np.isin(mask, (0, 1)).all()):
        raise ValueError("labels and mask must be 0/1")
    return scores, labels.astype(bool), mask.astype(bool)


def class_aucs(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
               ) -> np.ndarray:
    """(C,) AUC of each class over its known images; NaN where they lack a positive or a
    negative."""
    scores, labels, mask = check_masked(scores, labels, mask)
    return np.array([weighted_aucs(scores[:, c], labels[:, c], mask[None, :, c])[0]
                     for c in range(scores.shape[1])])


def _counts(rng: np.random.Generator, pool: np.ndarray, rows: int, n: int) -> np.ndarray:
    """(rows, n) counts of ``len(pool)`` draws with replacement from ``pool`` per row."""
    draws = pool[rng.integers(0, len(pool), (rows, len(pool)))]
    flat = (np.arange(rows)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def stratified_ci(score: np.ndarray, positive: np.ndarray, known: np.ndarray, n_boot: int,
                  seed: int) -> list[float]:
    """95% CI of one class's AUC: its known positives and negatives resampled separately."""
    pos, neg = np.flatnonzero(known & positive), np.flatnonzero(known & ~positive)
    if not len(pos) or not len(neg) or n_boot < 1:
        return [float("nan"), float("nan")]
    rng, n, out = np.random.default_rng(seed), len(score), []
    for start in range(0, n_boot, _CHUNK):
        rows = min(_CHUNK, n_boot - start)
        w = _counts(rng, pos, rows, n) + _counts(rng, neg, rows, n)
        out.append(weighted_aucs(score, positive, w))
    return [float(v) for v in np.percentile(np.concatenate(out), [2.5, 97.5])]


def bootstrap_means(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, n_boot: int,
                    seed: int) -> np.ndarray:
    """Mean AUC over all columns on ``n_boot`` image-level resamples in which every column
    has a known positive and negative (fewer if too rare after 20x the draws)."""
    rng, n, kept, drawn = np.random.default_rng(seed), len(scores), [], 0
    while sum(len(k) for k in kept) < n_boot and drawn < _MAX_DRAW_FACTOR * n_boot:
        rows = min(_CHUNK, n_boot)
        counts = _counts(rng, np.arange(n), rows, n)
        drawn += rows
        aucs = np.stack([weighted_aucs(scores[:, c], labels[:, c], counts * mask[None, :, c])
                         for c in range(scores.shape[1])], axis=1)
        kept.append(aucs[~np.isnan(aucs).any(axis=1)].mean(axis=1))
    return np.concatenate(kept)[:n_boot] if kept else np.zeros(0)


def _ci(values: np.ndarray) -> list[float]:
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def summary(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
            names: Sequence[str], *, n_boot: int = 1000, seed: int = 0
            ) -> tuple[dict, np.ndarray]:
    """(numbers, bootstrap means): per-class AUC over known labels with stratified CIs, the
    mean over the classes that have an AUC with its image-level CI, and per class the known,
    positive counts. The bootstrap means (mean AUC per kept resample) feed
    ``mean_difference``."""
    scores, labels, mask = check_masked(scores, labels, mask)
    if len(names) != scores.shape[1]:
        raise ValueError(f"{len(names)} class names for {scores.shape[1]} columns")
    auc = class_aucs(scores, labels, mask)
    valid = ~np.isnan(auc)
    n_pos = (labels & mask).sum(axis=0)
    class_ci = {name: stratified_ci(scores[:, c], labels[:, c], mask[:, c], n_boot, seed + c)
                for c, name in enumerate(names)}
    means = (bootstrap_means(scores[:, valid], labels[:, valid], mask[:, valid], n_boot, seed)
             if n_boot > 0 and valid.any() else np.zeros(0))
    out = {
        "per_class": {name: float(a) for name, a in zip(names, auc, strict=True)},
        "per_class_ci95": class_ci,
        "mean_auc": float(auc[valid].mean()) if valid.any() else float("nan"),
        "mean_auc_ci95": _ci(means),
        "classes_scored": [n for n, v in zip(names, valid, strict=True) if v],
        "excluded_classes": [n for n, v in zip(names, valid, strict=True) if not v],
        "n_images": int(len(scores)),
        "n_known": {name: int(k) for name, k in zip(names, mask.sum(axis=0), strict=True)},
        "n_positive": {name: int(p) for name, p in zip(names, n_pos, strict=True)},
        "few_positive_classes": [n for n, p in zip(names, n_pos, strict=True)
                                 if p < FEW_POSITIVES],
        "n_boot": int(n_boot), "n_boot_kept": int(len(means)), "seed": int(seed),
    }
    return out, means


def mean_difference(external: tuple[dict, np.ndarray], own: tuple[dict, np.ndarray]) -> dict:
    """External minus own mean AUC, and the 95% CI of that difference from the two sets'
    independent bootstrap means (paired draw by draw)."""
    (ext, ext_means), (mine, own_means) = external, own
    k = min(len(ext_means), len(own_means))
    return {"mean_auc_difference": ext["mean_auc"] - mine["mean_auc"],
            "mean_auc_difference_ci95": _ci(ext_means[:k] - own_means[:k])}


def as_summary(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, names: Sequence[str],
               *, n_boot: int = 1000, seed: int = 0) -> dict:
    """``summary`` in the keys of ``metrics.summary`` (what reports and the loop read); the
    measures that need every label known (W-AUC, D-AUC, N-AUC) are NaN."""
    out, _ = summary(scores, labels, mask, names, n_boot=n_boot, seed=seed)
    nan = {name: float("nan") for name in names}
    out.update(w_auc=float("nan"), w_auc_normalized=float("nan"), d_auc=float("nan"),
               n_auc=float("nan"), per_class_d_auc=nan, per_class_n_auc=dict(nan),
               w_auc_weights=dict(nan), d_auc_excluded_classes=list(names),
               n_auc_excluded_classes=list(names), n_boot_drawn=out["n_boot_kept"],
               masked=True)
    return out
