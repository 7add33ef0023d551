"""How far to trust a probability: expected calibration error, reliability diagrams, rescaling.

**Bins.** ``n_bins`` equal-width bins on [0, 1], right-closed as in scikit-learn's
``calibration_curve(strategy="uniform")``: bin k holds (k/B, (k+1)/B], and bin 0 also holds 0.
**ECE** of a class = sum over bins of (share of its images in the bin) x |fraction positive -
mean predicted probability|. ``overall`` pools every (image, class) prediction into one set of
bins; ``mean_over_classes`` averages the per-class values. With a ``mask`` (0 = label missing)
a class is binned, scored and fitted over its known images only (none known: no ECE). Only
probabilities are calibrated: a ranking score (the MSML head's) is not input here.

**Rescaling** (only when asked): per class, on validation, either a temperature
(``p' = sigmoid(logit(p) / T)``) or Platt scaling (``p' = sigmoid(a logit(p) + b)``), fitted by
maximum likelihood with a tiny ridge on the slope (``l2``) so a separable class stays finite.
Both are fitted for all classes at once by damped Newton steps. The slope is kept at or above
``MIN_SLOPE`` > 0, so a rescaling never reorders a class's images and its AUC is unchanged
(``fit_calibrator``). ``rescaling_report``: the test ECE before and after. Diagrams: ``draw``
of ``reliability_plot``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import metrics
from cxrjax.evaluation.operating_points import known_labels
from cxrjax.evaluation.prediction_files import HEAD_TITLES
from cxrjax.evaluation.section import Section, caveats_logged_once, figure_link, run_classes
from cxrjax.io import fileio, run_layout

METHODS = ("temperature", "platt")
_EPS = 1e-7  # the fit clips probabilities to [eps, 1 - eps] before taking logits
# The smallest slope a fit may reach: a positive floor keeps every rescaling strictly increasing
# (a slope of 0 would tie all images; a negative one reverses the ranking).
MIN_SLOPE = 1e-2


def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 probabilities in [0, 1] and float64 0/1 labels, or a one-line error."""
    probs, labels = metrics.check_scores(probs, labels, what="probabilities")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(f"probabilities must lie in [0, 1], found [{probs.min():g}, "
                         f"{probs.max():g}] (a ranking score is not a probability)")
    return probs, labels.astype(np.float64)


def _bin_index(probs: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], probs)


def reliability_curve(probs, labels, n_bins: int = 15, *, mask=None) -> dict[str, np.ndarray]:
    """Per class and bin: ``count``, ``mean_predicted``, ``fraction_positive`` (C, B; NaN
    for an empty bin), and the bin ``edges`` (B + 1,); over the known labels of ``mask``."""
    probs, labels = _check(probs, labels)
    known = known_labels(mask, probs.shape)
    num_classes = probs.shape[1]
    flat = (_bin_index(probs, n_bins) + n_bins * np.arange(num_classes)).ravel()
    size = n_bins * num_classes
    if known is not None:  # a missing label goes to one extra slot, dropped below
        flat = np.where(known.ravel(), flat, size)
    count = np.bincount(flat, minlength=size)[:size].reshape(num_classes, n_bins)
    with np.errstate(invalid="ignore"):
        mean, frac = (np.bincount(flat, v.ravel(), size + 1)[:size].reshape(num_classes, n_bins)
                      / count for v in (probs, labels))
    return {"count": count, "mean_predicted": mean, "fraction_positive": frac,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def _ece(curve: dict[str, np.ndarray]) -> np.ndarray:
    gap = np.nan_to_num(np.abs(curve["fraction_positive"] - curve["mean_predicted"]))
    with np.errstate(invalid="ignore", divide="ignore"):  # no known label: NaN
        return (curve["count"] * gap).sum(axis=1) / curve["count"].sum(axis=1)


def expected_calibration_error(probs, labels, n_bins: int = 15, *,
                               mask=None) -> tuple[np.ndarray, float]:
    """(per-class ECE (C,), ECE of all predictions pooled), over the known labels of ``mask``
    (a class without a known label: NaN)."""
    probs, labels = _check(probs, labels)
    known = known_labels(mask, probs.shape)
    per_class = _ece(reliability_curve(probs, labels, n_bins, mask=known))
    pooled = _ece(reliability_curve(probs.reshape(-1, 1), labels.reshape(-1, 1), n_bins,
                                    mask=None if known is None else known.reshape(-1, 1)))
    return per_class, float(pooled[0])


def calibration_summary(probs, labels, *, n_bins: int = 15,
                        classes: Sequence[str] = CLASSES, mask=None) -> dict:
    """JSON-ready ECE per class, ``overall`` (pooled) and ``mean_over_classes`` (over the
    classes with a known label, where ``mask`` marks missing ones)."""
    per_class, pooled = expected_calibration_error(probs, labels, n_bins, mask=mask)
    if len(classes) != len(per_class):
        raise ValueError(f"{len(classes)} class names for {len(per_class)} columns")
    scored = per_class[~np.isnan(per_class)]
    mean = float(per_class.mean()) if len(scored) == len(per_class) else \
        float(scored.mean()) if len(scored) else float("nan")
    return {"n_bins": n_bins, "per_class": dict(zip(classes, per_class.tolist(), strict=True)),
            "overall": pooled, "mean_over_classes": mean}


def plot_reliability(heads: Mapping[str, tuple], path: str, *, n_bins: int = 15,
                     classes: Sequence[str] = CLASSES,
                     title: str = "Reliability diagrams") -> str:
    """One PNG of reliability diagrams (``reliability_plot.draw``), a line per head of
    ``{head: (probs (N, C), labels (N, C)[, mask (N, C), 0 = label missing])}``."""
    from cxrjax.evaluation import reliability_plot  # matplotlib: only when drawn

    if not heads:
        raise ValueError("plot_reliability needs at least one head")
    curves = {}
    for head, (probs, labels, *mask) in heads.items():
        probs, labels = _check(probs, labels)
        if probs.shape[1] != len(classes):
            raise ValueError(f"head {head!r}: {probs.shape[1]} columns for {len(classes)} classes")
        known = known_labels(mask[0] if mask else None, probs.shape)
        pooled = reliability_curve(probs.reshape(-1, 1), labels.reshape(-1, 1), n_bins,
                                   mask=None if known is None else known.reshape(-1, 1))
        per_class = reliability_curve(probs, labels, n_bins, mask=known)
        if not curves:  # the panels' titles count the first head's known positives
            positives = (labels * (1 if known is None else known)).sum(axis=0)
        curves[head] = (pooled, per_class, float(_ece(pooled)[0]), _ece(per_class))
    return reliability_plot.draw(curves, positives, path, n_bins=n_bins, classes=classes,
                                 title=title)


# ---------------------------------------------------------------------------------------------
# Temperature and Platt scaling, fitted on validation.
# ---------------------------------------------------------------------------------------------


def _logit(probs: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """logit(p), with p clipped to [eps, 1 - eps] (eps 0: 0 and 1 give -inf and inf)."""
    p = np.clip(probs, eps, 1 - eps)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:  # accurate in both tails: small values stay apart
    return expit(z)


def _mean(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Per class, the mean over the images; with ``weights`` (N, C: 1 / known count on a known
    label, 0 on a missing one), over each class's known images."""
    return x.mean(axis=0) if weights is None else (x * weights).sum(axis=0)


def _objective(a, b, z, y, l2, weights=None):
    t = a * z + b
    return _mean(np.logaddexp(0, t) - y * t, weights) + 0.5 * l2 * a * a


@dataclasses.dataclass(frozen=True)
class Calibrator:
    """``p' = sigmoid(slope * logit(p) + intercept)`` per class (temperature: intercept 0,
    slope = 1 / T)."""

    method: str
    classes: tuple[str, ...]
    slope: np.ndarray  # (C,)
    intercept: np.ndarray  # (C,)

    def apply(self, probs) -> np.ndarray:
        """Rescaled (N, C) probabilities, strictly increasing in each column: slope > 0, and
        the logit is not clipped here (0 -> 0, 1 -> 1). Only float64 can merge two values,
        where the result lies nearer 0 or 1 than it can hold (slope 2 sends 1 - 1e-9 to 1)."""
        probs = np.asarray(probs, np.float64)
        if probs.shape[-1:] != self.slope.shape:
            raise ValueError(f"calibrator for {len(self.slope)} classes applied to "
                             f"{probs.shape[-1]} columns")
        return _sigmoid(self.slope * _logit(probs, eps=0.0) + self.intercept)

    def to_dict(self) -> dict:
        """JSON-ready parameters per class."""
        return {"method": self.method, "per_class": {
            c: {"slope": float(a), "intercept": float(b)}
            for c, a, b in zip(self.classes, self.slope, self.intercept, strict=True)}}


def _newton_direction(a, b, z, y, l2, fit_intercept, weights=None):
    """Per class, the Newton step (da, db) to subtract; a class whose slope sits on
    ``MIN_SLOPE`` with the gradient pushing it lower moves its intercept alone."""
    p = _sigmoid(a * z + b)
    w = p * (1 - p)
    ga, gb = _mean((p - y) * z, weights) + l2 * a, _mean(p - y, weights)
    haa, hab, hbb = _mean(w * z * z, weights) + l2, _mean(w * z, weights), _mean(w, weights)
    pinned = (a <= MIN_SLOPE) & (ga > 0)
    if fit_intercept:
        det = np.maximum(haa * hbb - hab * hab, 1e-300)
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        db = np.where(pinned, gb / np.maximum(hbb, 1e-300), db)
    else:
        da, db = ga / np.maximum(haa, 1e-300), np.zeros_like(gb)
    return np.where(pinned, 0.0, da), db


def fit_calibrator(probs, labels, method: str = "temperature", *, l2: float = 1e-4,
                   classes: Sequence[str] = CLASSES, steps: int = 100,
                   mask=None) -> Calibrator:
    """Fits the per-class rescaling on validation probabilities by maximum likelihood (over
    each class's known labels where ``mask`` marks missing ones), the slope constrained to
    ``>= MIN_SLOPE`` (projected Newton steps).

    Why constrained rather than free: a rescaling exists to change what a probability means,
    never the order of the images, so the AUC, the operating points' ranking and every
    comparison of heads stay as validated. Unconstrained, a class whose few validation
    positives happen to score low gets a negative slope and its test AUC reverses. The
    constrained fit is the maximum-likelihood rescaling among the order-keeping ones: a class
    whose validation scores do not rise with its label ends on the floor, nearly flat (Platt:
    near its validation prevalence), with a warning. A class with one label value keeps the
    identity (slope 1, intercept 0), with a warning.
    """
    probs, labels = _check(probs, labels)
    known = known_labels(mask, probs.shape)
    weights = None if known is None else known / np.maximum(known.sum(axis=0), 1)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of "
                         f"{', '.join(METHODS)}")
    if len(classes) != probs.shape[1]:
        raise ValueError(f"{len(classes)} class names for {probs.shape[1]} columns")
    z, y = _logit(probs), labels
    a, b = np.ones(z.shape[1]), np.zeros(z.shape[1])
    for _ in range(steps):
        da, db = _newton_direction(a, b, z, y, l2, method == "platt", weights)
        step = np.ones_like(a)
        before = _objective(a, b, z, y, l2, weights)
        for _ in range(30):  # halve each class's step until its objective does not rise
            new_a, new_b = np.maximum(a - step * da, MIN_SLOPE), b - step * db
            worse = _objective(new_a, new_b, z, y, l2, weights) > before + 1e-15
            if not worse.any():
                break
            step = np.where(worse, step / 2, step)
        moved = np.abs(new_a - a) + np.abs(new_b - b)
        a, b = np.where(worse, a, new_a), np.where(worse, b, new_b)
        if np.max(np.where(worse, 0.0, moved)) < 1e-10:
            break
    counted = np.ones(labels.shape) if known is None else known
    degenerate = ((labels * counted).sum(axis=0) == 0) | (((1 - labels) * counted).sum(axis=0)
                                                          == 0)
    if degenerate.any():
        warnings.warn(f"{', '.join(np.asarray(classes)[degenerate])}: one label value on "
                      "validation; left uncalibrated", stacklevel=2)
        a, b = np.where(degenerate, 1.0, a), np.where(degenerate, 0.0, b)
    floored = ~degenerate & (a <= MIN_SLOPE)
    if floored.any():
        warnings.warn(f"{', '.join(np.asarray(classes)[floored])}: validation scores do "
                      "not rise with the label; slope held at its floor "
                      f"{MIN_SLOPE:g} (nearly flat probabilities, order kept)", stacklevel=2)
    return Calibrator(method, tuple(classes), a, b)


def rescaling_report(val_probs, val_labels, test_probs, test_labels, *,
                     method: str = "temperature", n_bins: int = 15,
                     classes: Sequence[str] = CLASSES, val_mask=None, test_mask=None) -> dict:
    """Fits ``method`` on validation; the test ECE before and after, and the parameters (each
    split over its known labels where a mask is given)."""
    calibrator = fit_calibrator(val_probs, val_labels, method, classes=classes, mask=val_mask)
    before = calibration_summary(test_probs, test_labels, n_bins=n_bins, classes=classes,
                                 mask=test_mask)
    after = calibration_summary(calibrator.apply(test_probs), test_labels, n_bins=n_bins,
                                classes=classes, mask=test_mask)
    return {"method": method, "fitted_on": "validation", "test_ece_before": before,
            "test_ece_after": after, "parameters": calibrator.to_dict()}


# ---------------------------------------------------------------------------------------------
# A run's calibration: ECE per probability head on test, optional rescaling, the report section.
# ---------------------------------------------------------------------------------------------

PROBABILITY_HEADS = ("fused", "ce", "ce_b", "fce")  # sigmoid of a BCE-trained logit (or a mean)
RANKING_HEADS = ("msml",)  # trained with a ranking loss: a score, not a probability


def evaluate_calibration(val_probs: Mapping[str, np.ndarray], val_labels,
                         test_probs: Mapping[str, np.ndarray], test_labels, *,
                         method: str = "none", n_bins: int = 15,
                         plot_path: str | None = None, classes: Sequence[str] = CLASSES,
                         val_mask=None, test_mask=None) -> dict:
    """Test ECE of every probability head; with ``method`` "temperature" or "platt", the
    fused prediction rescaled per class (fitted on validation) and its test ECE before and
    after. ``plot_path``: the reliability diagrams of those heads (and the rescaled fused).
    Each split counts its known labels only where a mask (N, C, 0 = missing) is given."""
    if method not in ("none", *METHODS):
        raise ValueError(f"unknown calibration {method!r}; expected none, {', '.join(METHODS)}")
    heads = [h for h in PROBABILITY_HEADS if h in test_probs]
    out = {"n_bins": n_bins, "heads": {h: calibration_summary(test_probs[h], test_labels,
                                                              n_bins=n_bins, classes=classes,
                                                              mask=test_mask)
                                       for h in heads},
           "ranking_heads": [h for h in test_probs if h in RANKING_HEADS], "rescaling": None}
    curves = {HEAD_TITLES.get(h, h): (test_probs[h], test_labels, test_mask) for h in heads}
    if method != "none":
        out["rescaling"] = rescaling_report(val_probs["fused"], val_labels, test_probs["fused"],
                                            test_labels, method=method, n_bins=n_bins,
                                            classes=classes, val_mask=val_mask,
                                            test_mask=test_mask)
        p = out["rescaling"]["parameters"]["per_class"]
        rescaled = Calibrator(method, tuple(classes), np.array([p[c]["slope"] for c in classes]),
                              np.array([p[c]["intercept"] for c in classes]))
        curves[f"Fused, {method} scaled"] = (rescaled.apply(test_probs["fused"]), test_labels,
                                             test_mask)
    if plot_path:
        plot_reliability(curves, plot_path, n_bins=n_bins, classes=classes,
                         title="Reliability diagrams, test split")
    return out


def _ece_text(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def report_section(result: Mapping | None, picture: str | None = None,
                   heading: str = "##") -> str:
    """The report's calibration section (markdown); says why when there is no result."""
    lines = [f"{heading} Calibration: can the probabilities be read as probabilities?", ""]
    if not result or "heads" not in result:
        why = (result or {}).get("skipped", "not computed")
        return "\n".join(lines + [f"Not computed: {why}.", ""])
    heads = result["heads"]
    titles = [HEAD_TITLES.get(h, h) for h in heads]
    lines += [f"Expected calibration error (ECE) on the test split: {result['n_bins']} "
              "equal-width probability bins; per class, the image-weighted mean |fraction "
              "positive - mean probability| over the bins; *all predictions pooled* puts every "
              "(image, class) probability into one set of bins. 0 is perfectly calibrated.", "",
              "| Finding | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    rows = [(c, [s["per_class"][c] for s in heads.values()])
            for c in next(iter(heads.values()))["per_class"]]
    rows += [(title, [s[key] for s in heads.values()])
             for key, title in (("mean_over_classes", "**mean of the classes**"),
                                ("overall", "**all predictions pooled**"))]
    lines += [f"| {name} | " + " | ".join(map(_ece_text, values)) + " |" for name, values in rows]
    if result.get("ranking_heads"):
        ranking = ", ".join(HEAD_TITLES.get(h, h) for h in result["ranking_heads"])
        lines += ["", f"Not calibrated: {ranking}. The MSML head is trained with a multi-label "
                  "ranking loss: its sigmoid orders findings but is not a probability, so an "
                  "ECE of it would measure nothing."]
    rescaling = result.get("rescaling")
    if rescaling:
        before, after = rescaling["test_ece_before"], rescaling["test_ece_after"]
        lines += ["", f"{rescaling['method'].capitalize()} scaling of the fused prediction, "
                  "fitted per class on the validation split (applied here only, as asked): "
                  f"test ECE pooled {_ece_text(before['overall'])} -> "
                  f"**{_ece_text(after['overall'])}**, mean of the classes "
                  f"{_ece_text(before['mean_over_classes'])} -> "
                  f"**{_ece_text(after['mean_over_classes'])}**. The AUCs, thresholds and "
                  "calls above use the probabilities as the model gives them."]
        if after["overall"] > before["overall"]:
            lines[-1] += (" Here the rescaling made the pooled test ECE worse (it was fitted on "
                          "the validation split alone): keep `eval.calibration = \"none\"` for "
                          "this model.")
    else:
        lines += ["", "No rescaling (`eval.calibration = \"none\"`; \"temperature\" or "
                  "\"platt\" fits one per class on validation and reports the test ECE before "
                  "and after)."]
    if picture:
        lines += ["", f"![Reliability diagrams]({picture})"]
    return "\n".join(lines + [""])


# ---------------------------------------------------------------------------------------------
# The evaluation section: eval.calibration, eval.calibration_bins -> eval/reliability.png.
# ---------------------------------------------------------------------------------------------


def _check_fields(e: Any, model: Any) -> None:
    from cxrjax.config_checks import ConfigError

    if e.calibration not in ("none", *METHODS):
        raise ConfigError(f"eval.calibration={e.calibration!r}: expected one of none, "
                          f"{', '.join(METHODS)}")
    if not isinstance(e.calibration_bins, int) or e.calibration_bins < 1:
        raise ConfigError(f"eval.calibration_bins={e.calibration_bins!r} must be a positive "
                          "integer")


def _compute(inputs: Any) -> dict:
    """Test ECE per probability head; the rescaling, fitted on validation, when asked."""
    e, val, test = inputs.config.eval, inputs.val, inputs.test
    drawn = inputs.draws_figures
    plot = fileio.join(inputs.eval_dir, run_layout.RELIABILITY) if drawn else None
    with caveats_logged_once("calibration, validation split: "):
        result = evaluate_calibration(
            val.probs if val else {}, val.labels if val else None, test.probs, test.labels,
            method=e.calibration if val else "none", n_bins=int(e.calibration_bins),
            plot_path=plot, val_mask=val.label_mask if val else None,
            test_mask=test.label_mask, classes=run_classes(inputs.config))
    return {**result, "figure": run_layout.eval_link(run_layout.RELIABILITY) if drawn else None}


SECTION = Section("calibration", ("calibration", "calibration_bins", "figures"),
                  check=_check_fields, compute=_compute, report=lambda result: report_section(
                      result, figure_link(result, run_layout.eval_link(run_layout.RELIABILITY))))
