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
from cxrjax.evaluation.section import Section, caveats_logged_once
from cxrjax.io import fileio, run_layout

RULES = ("youden", "max_f1", "sensitivity")
RUN_FILE = run_layout.eval_link(run_layout.THRESHOLDS)  # a run's thresholds, under W
MEASURES = ("sensitivity", "specificity", "ppv", "npv", "f1")
_BOOT_CHUNK = 100  # resamples per matrix product: (chunk, N) float32 counts


class ThresholdsError(ValueError):
    """A thresholds file or rule that cannot be used; the message says why in one line."""


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, TP, FP) at every distinct score of one class."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each tie group
    return s[last], np.cumsum(y)[last], np.cumsum(~y)[last]


def choose_thresholds(scores, labels, rule: str = "youden", *,
                      target_sensitivity: float | None = None,
                      classes: Sequence[str] | None = None) -> np.ndarray:
    """(C,) thresholds for (N, C) validation scores and 0/1 labels, chosen by ``rule``."""
    scores, labels = metrics.check_scores(scores, labels)
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
        thresholds, tp, fp = _curve(scores[:, c], labels[:, c])
        positives, negatives = tp[-1], fp[-1]
        if positives == 0 or negatives == 0:
            lacking["positive" if positives == 0 else "negative"].append(names[c])
            continue
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

    @classmethod
    def fit(cls, scores, labels, rule: str = "youden", *, target_sensitivity: float | None = None,
            classes: Sequence[str] | None = None) -> OperatingPoints:
        """``choose_thresholds`` wrapped with its class names and rule."""
        values = choose_thresholds(scores, labels, rule, target_sensitivity=target_sensitivity,
                                   classes=classes)
        return cls(_names(classes, len(values)), values, rule, target_sensitivity)

    def save(self, path: str | os.PathLike) -> None:
        """Writes strict JSON (NaN as null); creates the parent folder."""
        path = os.fspath(path)
        fileio.makedirs(os.path.dirname(path) or ".")
        body = {"rule": self.rule, "target_sensitivity": self.target_sensitivity,
                "chosen_on": "validation", "classes": list(self.classes),
                "thresholds": {c: None if math.isnan(v) else float(v)
                               for c, v in zip(self.classes, self.thresholds, strict=True)}}
        fileio.write_text(path, json.dumps(body, indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, classes: Sequence[str] = CLASSES) -> OperatingPoints:
        """Reads ``thresholds.json``; it must hold exactly ``classes``, in that order."""
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
        saved, wanted = list(body["classes"]), list(classes)
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
        return cls(tuple(saved), values, body["rule"], body.get("target_sensitivity"))

    @classmethod
    def of_run(cls, workdir: str) -> OperatingPoints | None:
        """A run's ``W/eval/thresholds.json`` (written when it is tested), None if absent."""
        path = fileio.join(workdir, RUN_FILE)
        return cls.load(path) if fileio.exists(path) else None

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
               weights: np.ndarray) -> list[np.ndarray]:
    """[TP, FP, FN, TN], each (B, C), for (B, N) image weights; NaN for invalid classes."""
    parts = [calls & labels, calls & ~labels, ~calls & labels, ~calls & ~labels]
    stacked = np.concatenate(parts, axis=1).astype(np.float32)  # (N, 4C)
    counts = (weights.astype(np.float32) @ stacked).astype(np.float64)
    counts[:, np.tile(~valid, 4)] = np.nan
    return np.split(counts, 4, axis=1)


def operating_point_metrics(scores, labels, thresholds, *, n_boot: int = 1000, seed: int = 0,
                            classes: Sequence[str] | None = None) -> dict:
    """Per class at ``thresholds``: confusion counts and each of ``MEASURES`` as
    {value, low, high} (a 95% percentile bootstrap CI over ``n_boot`` image resamples; a
    resample where a measure is undefined is left out of its interval)."""
    scores, labels = metrics.check_scores(scores, labels)
    thresholds = np.asarray(thresholds, np.float64)
    calls = positive_calls(scores, thresholds)
    names = _names(classes, scores.shape[1])
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {n_boot}")
    valid = ~np.isnan(thresholds)
    n = len(scores)
    point = _confusion(calls, labels, valid, np.ones((1, n)))
    rng = np.random.default_rng(seed)
    boot = {m: [] for m in MEASURES}
    for lo in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - lo)
        draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)
        for m, v in _rates(*_confusion(calls, labels, valid, weights)).items():
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
# A run's operating points: chosen on validation, measured on test, as tables.
# ---------------------------------------------------------------------------------------------

_RULE_TEXT = {
    "youden": "the threshold maximising Youden's J (sensitivity + specificity - 1)",
    "max_f1": "the threshold maximising F1",
    "sensitivity": "the highest threshold reaching a sensitivity of {target:g}",
}


def evaluate_operating_points(val_scores, val_labels, test_scores, test_labels, *,
                              rule: str = "youden", target_sensitivity: float | None = None,
                              n_boot: int = 1000, seed: int = 0,
                              classes: Sequence[str] = CLASSES) -> tuple[OperatingPoints, dict]:
    """(thresholds chosen on validation by ``rule``, JSON-ready measures at them on test).

    ``target_sensitivity`` is used by ``rule="sensitivity"`` only (ignored otherwise)."""
    target = target_sensitivity if rule == "sensitivity" else None
    points = OperatingPoints.fit(val_scores, val_labels, rule, target_sensitivity=target,
                                 classes=classes)
    measured = operating_point_metrics(test_scores, test_labels, points.thresholds,
                                       n_boot=n_boot, seed=seed, classes=classes)
    return points, {"rule": rule, "target_sensitivity": target, "chosen_on": "validation",
                    "validation_images": int(len(val_scores)),
                    "test_images": int(len(test_scores)), **measured}


def _interval(m: dict, digits: int = 3) -> str:
    value, low, high = (m.get(k) for k in ("value", "low", "high"))
    if value is None or not np.isfinite(value):
        return "n/a"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _rows(result: dict) -> list[list[str]]:
    rows = []
    for name, r in result["per_class"].items():
        threshold = r.get("threshold")
        has = threshold is not None and np.isfinite(threshold)
        positives = (r.get("tp") or 0) + (r.get("fn") or 0) if has else None
        rows.append([name, f"{threshold:.4f}" if has else "n/a",
                     f"{positives:.0f}" if positives is not None else "n/a",
                     *(_interval(r[m]) if has else "n/a" for m in MEASURES)])
    return rows


_COLUMNS = ("Finding", "threshold", "test positives", "sensitivity", "specificity", "PPV",
            "NPV", "F1")


def markdown_table(result: dict) -> str:
    """Per class: threshold, test positives and each measure with its 95% CI, as markdown."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|---|" + "---:|" * (len(_COLUMNS) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in _rows(result)])


def format_text(result: dict) -> str:
    """The same table as plain text, for a terminal."""
    rows = [list(_COLUMNS), *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True)))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def describe(result: dict) -> str:
    """One sentence: how the thresholds were chosen and what the intervals are."""
    rule = _RULE_TEXT.get(result.get("rule"), f"rule {result.get('rule')!r}").format(
        target=result.get("target_sensitivity") or 0)
    chosen = result.get("chosen_on", "validation")
    where = (f" ({result['validation_images']} images)" if result.get("validation_images")
             else "")
    boot = result.get("n_boot") or 0
    ci = (f"95% CIs in brackets: percentile bootstrap over {boot} resamples of the "
          f"{result.get('test_images', '')} scored images" if boot else "no bootstrap CI")
    return (f"A finding is called positive when its probability is >= its class's threshold, "
            f"{rule} on the {chosen} split{where}; {ci}. A class with no positive or no "
            "negative image where the thresholds were chosen has none (n/a).")


def report_section(result: dict | None, heading: str = "##") -> str:
    """The report's operating-point section (markdown); says why when there is no result."""
    lines = [f"{heading} Operating points: when to call a finding positive", ""]
    if not result or "per_class" not in result:
        why = (result or {}).get("skipped", "not computed")
        return "\n".join(lines + [f"Not computed: {why}.", ""])
    return "\n".join(lines + [
        describe(result) + " Thresholds: `eval/thresholds.json` (`cxrjax.predict` marks its "
        "calls with them; `cxrjax.evaluate --predictions F --thresholds` applies them).", "",
        markdown_table(result), ""])


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
            n_boot=int(e.n_boot))
    if inputs.write_files:
        chosen.save(fileio.join(inputs.workdir, RUN_FILE))
    return points


SECTION = Section("operating_points", ("threshold_rule", "target_sensitivity", "n_boot"),
                  check=_check_fields, compute=_compute, report=report_section)
