"""Who the model fails: the test split broken down by sex, age band and view position.

Per group (``metadata.group_masks``): images and positives; per-class and mean AUC; sensitivity
and specificity at the run's thresholds; the pooled ECE; and the underdiagnosis rate of
Seyyed-Kalantari et al. (Nature Medicine 2021): the share of images with a finding that the
model calls "no finding" (no class at or above its threshold; a class without a threshold is
never called). Counted per image: the test split holds images, not patients.

**Missing labels.** With a label mask (a release's missing or uncertain-under-``ignore``
labels), every measure uses each class's present labels only: its AUC, sensitivity and
specificity over the images whose label is known, ECE over the known (image, class) pairs,
positives counted where known. "With a finding" means at least one present positive; an image
whose labels are all missing (or present and negative with the rest missing) is never "with a
finding", so it counts in the underdiagnosis rate of no group, though it stays in ``n``
(``images_without_known_label`` counts those with no present label at all). No mask, or all
ones (NIH), is exactly the unmasked computation.

**Intervals.** Every group is resampled on its own (its size fixed), ``n_boot`` times, 95%
percentile intervals. AUCs: per class, the group's positives and negatives are resampled
separately (``metrics``' stratified bootstrap, computed here in NumPy from the negatives'
cumulative counts, so a group of any size needs no new compile); a group's mean AUC is over
the classes that every group of its attribute can score, so the groups' means are comparable,
and a resampled mean is the mean of the classes' resamples. ECE and
underdiagnosis rate: the group's images resampled; sensitivity and specificity:
``operating_points.operating_point_metrics`` within the group. **Gaps**: for the mean AUC and
the underdiagnosis rate, the largest difference between two groups of an attribute, its CI
from the two groups' independent resamples, *flagged* when that CI excludes 0. A group with
fewer than ``MIN_GROUP_IMAGES`` images gets its counts only. Tables, the forest plot and the
files: ``subgroups_report``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.data import patient_metadata as metadata
from cxrjax.evaluation import calibration, metrics, operating_points, subgroups_report
from cxrjax.evaluation.section import Section, caveats_logged_once, figure_link, run_classes
from cxrjax.io import run_layout

MIN_GROUP_IMAGES = 30
GAP_METRICS = ("mean_auc", "underdiagnosis_rate")  # the measures whose gaps are reported
_CHUNK = 100  # resamples per vectorised step: (chunk, N) weights


def _counts(rng: np.random.Generator, k: int, b: int) -> np.ndarray:
    """(b, k) float counts: ``b`` bootstrap resamples of ``k`` items."""
    draws = rng.integers(0, k, size=(b, k))
    draws += k * np.arange(b)[:, None]  # row r's draws count into slots r*k ... r*k + k - 1
    return np.bincount(draws.ravel(), minlength=b * k).reshape(b, k).astype(np.float32)


def auc_of_counts(positive_counts: np.ndarray, negative_counts: np.ndarray,
                  below: np.ndarray, up_to: np.ndarray) -> np.ndarray:
    """(B,) Mann-Whitney AUCs (a tie counts half) of one class for (B, P) positive and (B, Q)
    negative weights, the negatives in ascending score order; ``below``/``up_to`` (P,): how
    many negatives score below / at most each positive."""
    cum = np.concatenate([np.zeros((len(negative_counts), 1)),
                          np.cumsum(negative_counts, axis=1)], axis=1)
    wins = cum[:, below] + 0.5 * (cum[:, up_to] - cum[:, below])
    return (positive_counts * wins).sum(1) / (positive_counts.sum(1) * negative_counts.sum(1))


def _class_aucs(scores: np.ndarray, labels: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """(C,) AUCs from ``metrics``, each class over its ``known`` images (all when None)."""
    if known is None:
        return metrics._auc(scores, labels)
    return np.array([metrics._auc(scores[known[:, c], c:c + 1], labels[known[:, c], c:c + 1])[0]
                     for c in range(scores.shape[1])])


def _stratified_auc(scores: np.ndarray, labels: np.ndarray, n_boot: int,
                    rng: np.random.Generator, known: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(point AUC (C,) from ``metrics``, resampled AUCs (n_boot, C)): per class, its known
    positives and negatives drawn separately; NaN for a class with one label value."""
    point = _class_aucs(scores, labels, known)
    boot = np.full((n_boot, scores.shape[1]), np.nan)
    for c in np.flatnonzero(~np.isnan(point)):
        rows = slice(None) if known is None else known[:, c]
        y, column = labels[rows, c], scores[rows, c]
        positives, negatives = column[y], np.sort(column[~y])
        below = np.searchsorted(negatives, positives, "left")
        up_to = np.searchsorted(negatives, positives, "right")
        for lo in range(0, n_boot, _CHUNK):
            b = min(_CHUNK, n_boot - lo)
            boot[lo:lo + b, c] = auc_of_counts(_counts(rng, len(positives), b),
                                               _counts(rng, len(negatives), b), below, up_to)
    return point, boot


def _per_image_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int,
                    known: np.ndarray | None = None) -> tuple[np.ndarray, int | np.ndarray]:
    """Per image and probability bin (as ``calibration``): (sum of labels - sum of
    probabilities) (N, B) over the ``known`` labels, and the predictions per image (an int when
    every label is known, else (N,)); pooled ECE = |w @ d|.sum() / (w @ per-image count)."""
    n, num_classes = probs.shape
    flat = (calibration._bin_index(probs, n_bins) + n_bins * np.arange(n)[:, None]).ravel()
    gap = labels - probs if known is None else (labels - probs) * known
    diff = np.bincount(flat, gap.ravel(), n * n_bins).reshape(n, n_bins)
    return diff, num_classes if known is None else known.sum(axis=1).astype(np.float64)


def _interval(value: float, samples: np.ndarray | None) -> dict[str, float]:
    """{value, low, high}: the 2.5/97.5 percentiles of the finite ``samples``."""
    low = high = float("nan")
    if samples is not None and np.isfinite(samples).any():
        low, high = np.percentile(samples[np.isfinite(samples)], [2.5, 97.5])
    return {"value": float(value), "low": float(low), "high": float(high)}


def _rates(weights: np.ndarray, diff: np.ndarray, per_image: int | np.ndarray,
           has: np.ndarray, missed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(pooled ECE, underdiagnosis rate), each (B,), for (B, N) image weights."""
    with np.errstate(invalid="ignore", divide="ignore"):
        total = (per_image * weights.sum(axis=1) if np.isscalar(per_image)
                 else weights @ per_image)
        ece = np.abs(weights @ diff).sum(axis=1) / total
        under = (weights @ missed) / (weights @ has) if missed is not None else \
            np.full(len(weights), np.nan)
    return ece, under


def group_cell(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None, *,
               n_boot: int, rng: np.random.Generator, seed: int, n_bins: int,
               classes: Sequence[str], known: np.ndarray | None = None
               ) -> tuple[dict, dict[str, np.ndarray]]:
    """One group's JSON-ready numbers, and its resampled AUCs (n_boot, C) and
    underdiagnosis rates (n_boot,) for the mean and the gaps; ``known`` (N, C): the present
    labels (None: all)."""
    present = labels if known is None else labels & known
    n, has = len(scores), present.any(axis=1)
    cell: dict[str, Any] = {"n": n, "images_with_finding": int(has.sum()),
                            "positives": dict(zip(classes, map(int, present.sum(0)),
                                                  strict=True))}
    if known is not None:
        cell["images_without_known_label"] = int((~known.any(axis=1)).sum())
    if n < MIN_GROUP_IMAGES:
        return {**cell, "too_small": True}, {}
    point, boot = _stratified_auc(scores, labels, n_boot, rng, known)
    cell["auc"] = {c: _interval(point[i], boot[:, i]) for i, c in enumerate(classes)}
    missed = None
    if thresholds is not None:
        missed = (has & ~operating_points.positive_calls(scores, thresholds).any(axis=1))
        measured = operating_points.operating_point_metrics(
            scores, labels, thresholds, n_boot=n_boot, seed=seed, classes=classes,
            mask=known)["per_class"]
        for m in ("sensitivity", "specificity"):
            cell[m] = {c: measured[c][m] for c in classes}
    probabilities = bool(scores.min() >= 0 and scores.max() <= 1)
    diff, per_image = _per_image_bins(np.clip(scores, 0, 1), labels, n_bins, known)
    ece, under = _rates(np.ones((1, n)), diff, per_image, has, missed)
    boot_ece, boot_under = [], []
    for lo in range(0, n_boot, _CHUNK):
        e, u = _rates(_counts(rng, n, min(_CHUNK, n_boot - lo)), diff, per_image, has, missed)
        boot_ece.append(e)
        boot_under.append(u)
    boot_under = np.concatenate(boot_under) if n_boot else None
    if probabilities:
        cell["ece"] = _interval(ece[0], np.concatenate(boot_ece) if n_boot else None)
    if missed is not None:
        cell["underdiagnosis_rate"] = _interval(under[0], boot_under)
    return cell, {"auc": boot, "underdiagnosis_rate": boot_under}


def _gap(cells: Mapping[str, dict], resampled: Mapping[str, dict], key: str) -> dict | None:
    """The largest difference of ``key`` between two groups, with its CI; None if < 2."""
    values = {g: c[key]["value"] for g, c in cells.items()
              if key in c and np.isfinite(c[key]["value"])}
    if len(values) < 2:
        return None
    ranked = sorted(values, key=values.get)  # stable: two groups even when all are equal
    low, high = ranked[0], ranked[-1]
    a, b = resampled[high].get(key), resampled[low].get(key)
    gap = _interval(values[high] - values[low], None if a is None or b is None else a - b)
    worst = low if key == "mean_auc" else high  # a low AUC, a high underdiagnosis rate
    return {"metric": key, "higher": high, "lower": low, "worst": worst, "difference": gap,
            "flagged": bool(np.isfinite(gap["low"]) and gap["low"] > 0)}


def _attribute(scores, labels, masks: Mapping[str, np.ndarray], thresholds, *, n_boot: int,
               seed: int, index: int, n_bins: int, classes: Sequence[str],
               whole_auc: np.ndarray, known: np.ndarray | None = None) -> dict:
    """Every group of one attribute, each group's mean AUC over the shared classes (and the
    whole split's over the same classes: ``whole_auc`` (C,)), gaps."""
    cells, resampled = {}, {}
    for g, (name, mask) in enumerate(masks.items()):
        rng = np.random.default_rng([seed, index, g])
        cells[name], resampled[name] = group_cell(
            scores[mask], labels[mask], thresholds, n_boot=n_boot, rng=rng, seed=seed,
            n_bins=n_bins, classes=classes, known=None if known is None else known[mask])
    scored = [g for g, c in cells.items() if "auc" in c]
    shared = [c for c in classes if scored and all(
        np.isfinite(cells[g]["auc"][c]["value"]) for g in scored)]
    columns = [classes.index(c) for c in shared]
    for g in scored if shared else ():
        boot = resampled[g]["auc"][:, columns].mean(axis=1)
        resampled[g]["mean_auc"] = boot
        cells[g]["mean_auc"] = _interval(
            np.mean([cells[g]["auc"][c]["value"] for c in shared]), boot if n_boot else None)
    assigned = np.any(list(masks.values()), axis=0) if masks else np.zeros(len(scores), bool)
    return {"groups": cells, "mean_auc_classes": shared,
            "all_images_mean_auc": float(np.mean(whole_auc[columns])) if shared else math.nan,
            "unassigned_images": int((~assigned).sum()),
            "gaps": {k: _gap(cells, resampled, k) for k in GAP_METRICS}}


def subgroup_report(scores, labels, meta: metadata.Metadata, thresholds=None, *,
                    n_boot: int = 1000, seed: int = 0, n_bins: int = 15,
                    classes: Sequence[str] | None = None, mask=None) -> dict:
    """The JSON-ready subgroup report of (N, C) scores and 0/1 labels of one test split.

    ``meta``: the images' metadata (an attribute it lacks is under ``not_broken_down`` with why);
    ``thresholds`` (C,): the run's operating points (None: no sensitivity, specificity or
    underdiagnosis rate); ``mask`` (N, C, 0 = label missing): each class over its present
    labels only."""
    scores, labels = metrics.check_scores(scores, labels)
    known = operating_points.known_labels(mask, scores.shape)
    classes = list(classes or metrics.class_names(scores.shape[1]))
    if thresholds is not None:
        thresholds = np.asarray(thresholds, np.float64)
        if thresholds.shape != (scores.shape[1],):
            raise ValueError(f"{thresholds.shape} thresholds for {scores.shape[1]} classes")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    masks = metadata.group_masks(meta)
    not_broken_down = {a: meta.missing.get(a, "no image has a known value")
                       for a in metadata.ATTRIBUTES if a not in masks}
    attributes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group's one-valued class: NaN
        whole_auc = _class_aucs(scores, labels, known)
        for index, attribute in enumerate(metadata.ATTRIBUTES):
            if attribute in masks:
                attributes[attribute] = _attribute(
                    scores, labels, masks[attribute], thresholds, n_boot=n_boot, seed=seed,
                    index=index, n_bins=n_bins, classes=classes, whole_auc=whole_auc,
                    known=known)
        overall = {"mean_auc": float(np.nanmean(whole_auc))}
    has = (labels if known is None else labels & known).any(axis=1)
    overall["images_with_finding"] = int(has.sum())
    if known is not None:
        overall["images_without_known_label"] = int((~known.any(axis=1)).sum())
    if scores.min() >= 0 and scores.max() <= 1:
        overall["ece"] = calibration.expected_calibration_error(scores, labels, n_bins,
                                                                mask=known)[1]
    if thresholds is not None:
        called = operating_points.positive_calls(scores, thresholds).any(axis=1)
        overall["underdiagnosis_rate"] = (float((has & ~called).sum() / has.sum())
                                          if has.any() else float("nan"))
    return {"n_images": int(len(scores)), "n_boot": int(n_boot), "seed": int(seed),
            "n_bins": int(n_bins), "min_group_images": MIN_GROUP_IMAGES,
            "thresholds": thresholds is not None, "classes": classes,
            "overall": overall, "attributes": attributes,
            "not_broken_down": not_broken_down}


# ---------------------------------------------------------------------------------------------
# The evaluation section: eval.subgroups -> eval/subgroups.{json,md,png}.
# ---------------------------------------------------------------------------------------------


def _check_fields(e: Any, model: Any) -> None:
    from cxrjax.config_checks import ConfigError

    if not isinstance(e.subgroups, bool):
        raise ConfigError(f"eval.subgroups={e.subgroups!r} must be True or False")


def run_thresholds(earlier: Mapping[str, Mapping]) -> np.ndarray | None:
    """The thresholds the operating-points section chose (NaN where none), or None."""
    points = earlier.get("operating_points") or {}
    if "per_class" not in points:
        return None
    return np.array([np.nan if r["threshold"] is None else r["threshold"]
                     for r in points["per_class"].values()], np.float64)


def _compute(inputs: Any) -> dict:
    """The fused test prediction by subgroup of the run's own metadata (files on process 0)."""
    test, e = inputs.test, inputs.config.eval
    try:
        meta = metadata.run_metadata(inputs.config, inputs.workdir, test.image_ids)
    except (FileNotFoundError, ValueError) as err:
        return {"skipped": f"the run's metadata could not be read ({err})"}
    if all(getattr(meta, a) is None for a in metadata.ATTRIBUTES):
        return {"skipped": "; ".join(dict.fromkeys(meta.missing.values()))}
    with caveats_logged_once("subgroups: "):
        result = subgroup_report(test.probs["fused"], test.labels, meta,
                                 run_thresholds(inputs.earlier), n_boot=int(e.n_boot),
                                 n_bins=int(e.calibration_bins),
                                 mask=getattr(test, "label_mask", None),
                                 classes=run_classes(inputs.config))
    drawn = inputs.draws_figures
    result["figure"] = run_layout.eval_link(subgroups_report.FILES[2]) if drawn else None
    if inputs.write_files:
        subgroups_report.write_outputs(result, inputs.eval_dir, figure=drawn)
    return result


def _summary(result: Mapping) -> Mapping:
    """test_metrics.json's short form: the gaps (all of it: eval/subgroups.json)."""
    if "attributes" not in result:
        return result
    return {"json": run_layout.eval_link(subgroups_report.FILES[0]),
            "not_broken_down": result["not_broken_down"],
            "gaps": {a: b["gaps"] for a, b in result["attributes"].items()}}


SECTION = Section("subgroups", ("subgroups", "n_boot", "calibration_bins", "figures"),
                  check=_check_fields, compute=_compute, summary=_summary, switch="subgroups",
                  report=lambda result: subgroups_report.markdown(
                      result, per_class=False,
                      picture=figure_link(result, run_layout.eval_link(subgroups_report.FILES[2]))))
