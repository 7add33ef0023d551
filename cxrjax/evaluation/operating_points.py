"""When to call a finding positive: per-class thresholds chosen on validation, and what they give.

A finding is called positive when its score is ``>= threshold``. ``choose_thresholds`` picks one
threshold per class among the scores themselves, by a rule:

* ``youden`` (default): the largest TPR - FPR (Youden's J) on the validation ROC curve;
* ``max_f1``: the largest F1 = 2TP / (2TP + FP + FN);
* ``sensitivity``: the highest threshold whose sensitivity reaches ``target_sensitivity`` (so
  the most specific one that meets it).

Ties go to the highest threshold, decided exactly: each rule compares integer counts (Youden's
J as ``TP N - FP P``, F1 as one correctly rounded ratio of integers, the target as the decimal
it is written as), never a float such as ``TP/P - FP/N`` whose rounding could split a tie. A
class with no positive or no negative validation image gets NaN (with a warning): it cannot be
called, and every count at it is NaN. ``OperatingPoints`` saves and
loads ``thresholds.json``, naming its classes and its rule; a file for other classes is a
one-line ``ThresholdsError``. ``operating_point_metrics`` reports sensitivity, specificity, PPV,
NPV and F1 per class, each with a seeded bootstrap 95% CI: image resamples are count vectors,
and all four confusion counts of every class and resample come from one matrix product.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import metrics
from cxrjax.evaluation.operating_points_tables import MEASURES, report_section
from cxrjax.evaluation.section import Section, caveats_logged_once, run_classes
from cxrjax.io import fileio, run_layout

RULES = ("youden", "max_f1", "sensitivity")
RUN_FILE = run_layout.eval_link(run_layout.THRESHOLDS)  # a run's thresholds, under W
_BOOT_CHUNK = 100  # resamples per matrix product: (chunk, N) float32 counts


class ThresholdsError(ValueError):
    """A thresholds file or rule that cannot be used; the message says why in one line."""


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, TP, FP) at every distinct score of one class."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each tie group
    return s[last], np.cumsum(y)[last], np.cumsum(~y)[last]


def known_labels(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    """(N, C) bool of the known labels (``mask`` 1), or None when every label is known (no mask
    or all ones), so that the computation is then exactly the unmasked one."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    mask = mask.reshape(-1, 1) if mask.ndim == 1 else mask
    if mask.shape != tuple(shape):
        raise ValueError(f"label mask {mask.shape} must have the labels' shape {tuple(shape)}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("the label mask must be 0/1 (0: label missing)")
    mask = mask.astype(bool)
    return None if mask.all() else mask


def choose_thresholds(scores, labels, rule: str = "youden", *,
                      target_sensitivity: float | None = None,
                      classes: Sequence[str] | None = None, mask=None) -> np.ndarray:
    """(C,) thresholds for (N, C) validation scores and 0/1 labels, chosen by ``rule``; with
    ``mask`` (N, C, 0 = missing), each class over its known images only."""
    scores, labels = metrics.check_scores(scores, labels)
    known = known_labels(mask, scores.shape)
    if rule not in RULES:
        raise ThresholdsError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if (rule == "sensitivity") != (target_sensitivity is not None):
        raise ThresholdsError("target_sensitivity goes with rule='sensitivity', and only there")
    if rule == "sensitivity" and not 0.0 < target_sensitivity <= 1.0:
        raise ThresholdsError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    names = _names(classes, scores.shape[1])
    out = np.full(scores.shape[1], np.nan)
    lacking: dict[str, list[str]] = {"positive": [], "negative": []}
    for c in range(scores.shape[1]):
        rows = slice(None) if known is None else known[:, c]
        positives = int(labels[rows, c].sum())
        negatives = len(labels[rows, c]) - positives
        if positives == 0 or negatives == 0:
            lacking["positive" if positives == 0 else "negative"].append(names[c])
            continue
        thresholds, tp, fp = _curve(scores[rows, c], labels[rows, c])
        out[c] = thresholds[_best_point(rule, tp, fp, positives, negatives, target_sensitivity)]
    for kind, which in lacking.items():  # one warning per kind, naming every class
        if which:
            warnings.warn(f"{', '.join(which)}: no {kind} validation image; "
                          f"{'its threshold is' if len(which) == 1 else 'their thresholds are'}"
                          " NaN", stacklevel=2)
    return out


def _best_point(rule: str, tp: np.ndarray, fp: np.ndarray, positives: int, negatives: int,
                target_sensitivity: float | None) -> int:
    """Index of the ROC point (thresholds descending) that ``rule`` picks, the first (highest
    threshold) among exact ties."""
    tp, fp = tp.astype(np.int64), fp.astype(np.int64)
    if rule == "youden":  # J = TP/P - FP/N, times P N: exact in integers
        return int(np.argmax(tp * negatives - fp * positives))
    if rule == "max_f1":  # F1 = 2TP / (TP + FP + P): one correctly rounded division per point;
        # equal fractions round equal, and distinct ones with terms below 2**26 (67 million
        # images) differ by more than their rounding, so the float order is the exact order
        return int(np.argmax(2 * tp / (tp + fp + positives)))
    target = Fraction(repr(float(target_sensitivity)))  # 0.9 means 9/10, not 0.9000...0222
    needed = math.ceil(target * positives)
    return int(np.argmax(tp >= needed))


def _names(classes: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    if classes is None:
        return CLASSES if num_classes == len(CLASSES) else tuple(
            f"class_{i}" for i in range(num_classes))
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for {num_classes} score columns")
    return tuple(classes)


def positive_calls(scores, thresholds) -> np.ndarray:
    """(N, C) bool: score >= its class's threshold (never positive at a NaN threshold)."""
    scores, thresholds = np.asarray(scores, np.float64), np.asarray(thresholds, np.float64)
    if scores.shape[-1:] != thresholds.shape:
        raise ThresholdsError(f"{thresholds.shape[0]} thresholds for {scores.shape[-1]} classes")
    return scores >= thresholds


# ---------------------------------------------------------------------------------------------
# thresholds.json
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OperatingPoints:
    """Per-class thresholds with the rule that chose them (on the validation split)."""

    classes: tuple[str, ...]
    thresholds: np.ndarray  # (C,) float64, NaN where a class could not be set
    rule: str
    target_sensitivity: float | None = None
    chosen_on: str = "validation"  # the split (and dataset) the thresholds were chosen on

    @classmethod
    def fit(cls, scores, labels, rule: str = "youden", *, target_sensitivity: float | None = None,
            classes: Sequence[str] | None = None, mask=None) -> OperatingPoints:
        """``choose_thresholds`` wrapped with its class names and rule."""
        values = choose_thresholds(scores, labels, rule, target_sensitivity=target_sensitivity,
                                   classes=classes, mask=mask)
        return cls(_names(classes, len(values)), values, rule, target_sensitivity)

    def save(self, path: str | os.PathLike) -> None:
        """Writes strict JSON (NaN as null); creates the parent folder."""
        path = os.fspath(path)
        fileio.makedirs(os.path.dirname(path) or ".")
        body = {"rule": self.rule, "target_sensitivity": self.target_sensitivity,
                "chosen_on": self.chosen_on, "classes": list(self.classes),
                "thresholds": {c: None if math.isnan(v) else float(v)
                               for c, v in zip(self.classes, self.thresholds, strict=True)}}
        fileio.write_text(path, json.dumps(body, indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, classes: Sequence[str] | None = CLASSES
             ) -> OperatingPoints:
        """Reads ``thresholds.json``; it must hold exactly ``classes``, in that order (None:
        whichever classes it holds)."""
        path = os.fspath(path)
        try:
            body = json.loads(fileio.read_text(path))
        except FileNotFoundError:
            raise ThresholdsError(f"thresholds file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ThresholdsError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(body, dict) or not {"rule", "classes", "thresholds"} <= body.keys():
            raise ThresholdsError(f"{path}: not a thresholds file (needs rule, classes and "
                                  "thresholds)")
        saved = list(body["classes"])
        wanted = saved if classes is None else list(classes)
        if saved != wanted:
            extra = [c for c in saved if c not in wanted]
            missing = [c for c in wanted if c not in saved]
            detail = (f"missing {missing[:4]}, extra {extra[:4]}" if extra or missing
                      else "in another order")
            raise ThresholdsError(f"{path} holds thresholds for {len(saved)} other classes "
                                  f"than the {len(wanted)} scored here ({detail})")
        try:
            values = np.array([np.nan if body["thresholds"][c] is None
                               else float(body["thresholds"][c]) for c in saved])
        except (KeyError, TypeError, ValueError):
            raise ThresholdsError(f"{path}: each class needs a number (or null) under "
                                  "'thresholds'") from None
        if body["rule"] not in RULES:
            raise ThresholdsError(f"{path}: unknown rule {body['rule']!r}")
        return cls(tuple(saved), values, body["rule"], body.get("target_sensitivity"),
                   str(body.get("chosen_on") or "validation"))

    @classmethod
    def of_run(cls, workdir: str, classes: Sequence[str] = CLASSES) -> OperatingPoints | None:
        """A run's ``W/eval/thresholds.json`` (written when it is tested) for its ``classes``,
        None if absent."""
        path = fileio.join(workdir, RUN_FILE)
        return cls.load(path, classes) if fileio.exists(path) else None

    def calls(self, scores) -> list[bool | None]:
        """One image's (C,) scores -> per class True (positive), False, or None (no threshold)."""
        called = positive_calls(np.asarray(scores)[None], self.thresholds)[0]
        return [None if np.isnan(t) else bool(c)
                for c, t in zip(called, self.thresholds, strict=True)]


# ---------------------------------------------------------------------------------------------
# Sensitivity, specificity, PPV, NPV, F1 at fixed thresholds, with bootstrap CIs.
# ---------------------------------------------------------------------------------------------


def _rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """The five measures from confusion counts (any shape); NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "ppv": tp / (tp + fp), "npv": tn / (tn + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def _confusion(calls: np.ndarray, labels: np.ndarray, valid: np.ndarray,
               weights: np.ndarray, known: np.ndarray | None = None) -> list[np.ndarray]:
    """[TP, FP, FN, TN], each (B, C), for (B, N) image weights, over the ``known`` labels only
    when given; NaN for invalid classes."""
    parts = [calls & labels, calls & ~labels, ~calls & labels, ~calls & ~labels]
    if known is not None:
        parts = [p & known for p in parts]
    stacked = np.concatenate(parts, axis=1).astype(np.float32)  # (N, 4C)
    counts = (weights.astype(np.float32) @ stacked).astype(np.float64)
    counts[:, np.tile(~valid, 4)] = np.nan
    return np.split(counts, 4, axis=1)


def operating_point_metrics(scores, labels, thresholds, *, n_boot: int = 1000, seed: int = 0,
                            classes: Sequence[str] | None = None, mask=None) -> dict:
    """Per class at ``thresholds``: confusion counts and each of ``MEASURES`` as
    {value, low, high} (a 95% percentile bootstrap CI over ``n_boot`` image resamples; a
    resample where a measure is undefined is left out of its interval). With ``mask`` (N, C,
    0 = missing), a class counts its known images only."""
    scores, labels = metrics.check_scores(scores, labels)
    known = known_labels(mask, scores.shape)
    thresholds = np.asarray(thresholds, np.float64)
    calls = positive_calls(scores, thresholds)
    names = _names(classes, scores.shape[1])
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {n_boot}")
    valid = ~np.isnan(thresholds)
    n = len(scores)
    point = _confusion(calls, labels, valid, np.ones((1, n)), known)
    rng = np.random.default_rng(seed)
    boot = {m: [] for m in MEASURES}
    for lo in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - lo)
        draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)
        for m, v in _rates(*_confusion(calls, labels, valid, weights, known)).items():
            boot[m].append(v)
    values = _rates(*point)
    per_class = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN interval
        bounds = {m: np.nanpercentile(np.concatenate(boot[m]), [2.5, 97.5], axis=0)
                  if n_boot else np.full((2, len(names)), np.nan) for m in MEASURES}
    for c, name in enumerate(names):
        row = {"threshold": float(thresholds[c]),
               **{k: float(v[0, c]) for k, v in zip(("tp", "fp", "fn", "tn"), point,
                                                    strict=True)}}
        for m in MEASURES:
            row[m] = {"value": float(values[m][0, c]), "low": float(bounds[m][0, c]),
                      "high": float(bounds[m][1, c])}
        per_class[name] = row
    return {"n_boot": n_boot, "seed": seed, "per_class": per_class}


# ---------------------------------------------------------------------------------------------
# A run's operating points: chosen on validation, measured on test (tables: its own module).
# ---------------------------------------------------------------------------------------------

def evaluate_operating_points(val_scores, val_labels, test_scores, test_labels, *,
                              rule: str = "youden", target_sensitivity: float | None = None,
                              n_boot: int = 1000, seed: int = 0,
                              classes: Sequence[str] = CLASSES, val_mask=None,
                              test_mask=None) -> tuple[OperatingPoints, dict]:
    """(thresholds chosen on validation by ``rule``, JSON-ready measures at them on test),
    each split over its known labels where a mask (N, C, 0 = missing) is given.

    ``target_sensitivity`` is used by ``rule="sensitivity"`` only (ignored otherwise)."""
    target = target_sensitivity if rule == "sensitivity" else None
    points = OperatingPoints.fit(val_scores, val_labels, rule, target_sensitivity=target,
                                 classes=classes, mask=val_mask)
    measured = operating_point_metrics(test_scores, test_labels, points.thresholds,
                                       n_boot=n_boot, seed=seed, classes=classes,
                                       mask=test_mask)
    return points, {"rule": rule, "target_sensitivity": target, "chosen_on": "validation",
                    "validation_images": int(len(val_scores)),
                    "test_images": int(len(test_scores)), **measured}


# ---------------------------------------------------------------------------------------------
# The evaluation section: eval.threshold_rule, eval.target_sensitivity -> eval/thresholds.json.
# ---------------------------------------------------------------------------------------------


def _check_fields(e: Any, model: Any) -> None:
    from cxrjax.config_checks import ConfigError

    if e.threshold_rule not in RULES:
        raise ConfigError(f"eval.threshold_rule={e.threshold_rule!r}: expected one of "
                          f"{', '.join(RULES)}")
    target = e.target_sensitivity
    if e.threshold_rule == "sensitivity" and not (
            isinstance(target, int | float) and 0 < target <= 1):
        raise ConfigError(f"eval.target_sensitivity={target!r} must be in (0, 1] with "
                          "eval.threshold_rule='sensitivity'")


def _compute(inputs: Any) -> dict:
    """Thresholds chosen on validation (saved to eval/thresholds.json), measured on test."""
    e, val, test = inputs.config.eval, inputs.val, inputs.test
    if val is None:
        return {"skipped": "the validation split is empty"}
    with caveats_logged_once("operating points, validation split: "):
        chosen, points = evaluate_operating_points(
            val.probs["fused"], val.labels, test.probs["fused"], test.labels,
            rule=e.threshold_rule, target_sensitivity=e.target_sensitivity,
            n_boot=int(e.n_boot), val_mask=val.label_mask, test_mask=test.label_mask,
            classes=run_classes(inputs.config))
    if inputs.write_files:
        chosen.save(fileio.join(inputs.workdir, RUN_FILE))
    return points


SECTION = Section("operating_points", ("threshold_rule", "target_sensitivity", "n_boot"),
                  check=_check_fields, compute=_compute, report=report_section)
