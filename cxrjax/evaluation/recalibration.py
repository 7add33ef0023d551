"""Recalibration for a new site: thresholds (and a calibrator) refitted on another dataset's
validation split, and what that changes on its test split.

    python -m cxrjax.evaluate --workdir W --dataset NAME --recalibrate val
                              [--calibrator none|temperature|platt] [--data FIELD=VALUE ...]

*Before* is what the run deploys: thresholds chosen by its rule (``eval.threshold_rule``) on its
own validation split, and its calibrator (``eval.calibration``) fitted there (refitted here: the
same as its ``eval/thresholds.json`` where this version wrote that file). *After*: the same
rule, and the ``--calibrator`` kind (default: the run's), fitted on the target's validation
split. Both are measured on the same target test images: per class and mean sensitivity and
specificity at the thresholds (on the fused probabilities, as ``predict`` calls them) and ECE
(of the calibrated probabilities), each class over its known labels. The run's own test split
at its own thresholds is the reference: where the source stands. A class the target's
validation split cannot set (no known positive or negative) keeps the run's threshold, and is
named. Files: ``W/eval/recalibration_<label>.{json,md}`` and
``recalibration_<label>_thresholds.json`` (``predict --thresholds`` reads it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrjax.evaluation import calibration, external
from cxrjax.evaluation import operating_points as op
from cxrjax.evaluation import prediction_files as predictions
from cxrjax.io import fileio, run_layout

COLUMNS = ("before", "after", "source_test")  # the target test twice; the run's own test
CALIBRATORS = ("none", *calibration.METHODS)


def fit(val: external.Scored, classes: Sequence[str], *, rule: str,
        target_sensitivity: float | None, method: str, where: str = "validation split"
        ) -> tuple[op.OperatingPoints, calibration.Calibrator | None]:
    """Thresholds by ``rule`` and a ``method`` calibrator (None for "none") fitted on ``val``
    over its known labels; their warnings (a class that cannot be set) say ``where``."""
    target = target_sensitivity if rule == "sensitivity" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        points = op.OperatingPoints.fit(val.probs, val.labels, rule, target_sensitivity=target,
                                        classes=classes, mask=val.mask)
        fitted = None if method == "none" else calibration.fit_calibrator(
            val.probs, val.labels, method, classes=classes, mask=val.mask)
    for w in caught:
        warnings.warn(f"{where}: {w.message}", w.category, stacklevel=2)
    return points, fitted


def measure(scored: external.Scored, thresholds: np.ndarray,
            calibrator: calibration.Calibrator | None, classes: Sequence[str], *,
            n_bins: int, n_boot: int, seed: int) -> dict:
    """Per class: the threshold, its confusion counts, sensitivity and specificity (with
    bootstrap CIs), and the ECE of the (calibrated) probabilities; the pooled ECE."""
    counted = op.operating_point_metrics(scored.probs, scored.labels, thresholds, n_boot=n_boot,
                                         seed=seed, classes=classes, mask=scored.mask)
    probs = scored.probs if calibrator is None else calibrator.apply(scored.probs)
    ece = calibration.calibration_summary(probs, scored.labels, n_bins=n_bins, classes=classes,
                                          mask=scored.mask)
    per_class = {c: {k: counted["per_class"][c][k] for k in
                     ("threshold", "tp", "fp", "fn", "tn", "sensitivity", "specificity")}
                 | {"ece": ece["per_class"][c]} for c in classes}
    return {"per_class": per_class, "ece_pooled": ece["overall"],
            "calibrator": None if calibrator is None else calibrator.method}


def _means(measured: dict, compared: Sequence[str]) -> dict:
    """Mean sensitivity, specificity and ECE over the ``compared`` classes."""
    rows = [measured["per_class"][c] for c in compared]
    return {"sensitivity": _mean([r["sensitivity"]["value"] for r in rows]),
            "specificity": _mean([r["specificity"]["value"] for r in rows]),
            "ece": _mean([r["ece"] for r in rows])}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _measurable(measured: dict, c: str) -> bool:
    row = measured["per_class"][c]
    return all(math.isfinite(v) for v in (row["sensitivity"]["value"],
                                          row["specificity"]["value"], row["ece"]))


def recalibrate(own_val: external.Scored, own_test: external.Scored,
                target_val: external.Scored, target_test: external.Scored,
                classes: Sequence[str], *, rule: str = "youden",
                target_sensitivity: float | None = None, own_method: str = "none",
                method: str = "none", n_bins: int = 15, n_boot: int = 1000, seed: int = 0,
                chosen_on: str = "the target's validation split"
                ) -> tuple[op.OperatingPoints, dict]:
    """(the thresholds to deploy at the target, the before/after/source numbers).

    The deployed thresholds are those fitted on ``target_val``, the run's own where a class
    could not be set there. Compared: the classes measurable in all three columns."""
    for name, value in (("own_method", own_method), ("method", method)):
        if value not in CALIBRATORS:
            raise ValueError(f"{name} {value!r}: expected one of {', '.join(CALIBRATORS)}")
    kw = dict(rule=rule, target_sensitivity=target_sensitivity)
    own_points, own_cal = fit(own_val, classes, method=own_method,
                              where="the run's validation split", **kw)
    fitted, new_cal = fit(target_val, classes, method=method,
                          where="the target's validation split", **kw)
    set_here = ~np.isnan(fitted.thresholds)
    kept = [c for c, ok in zip(classes, set_here, strict=True) if not ok]
    deployed = op.OperatingPoints(
        tuple(classes), np.where(set_here, fitted.thresholds, own_points.thresholds), rule,
        fitted.target_sensitivity,
        chosen_on + (f" (the run's own for {', '.join(kept)})" if kept else ""))
    opts = dict(n_bins=n_bins, n_boot=n_boot, seed=seed)
    columns = {"before": measure(target_test, own_points.thresholds, own_cal, classes, **opts),
               "after": measure(target_test, deployed.thresholds, new_cal, classes, **opts),
               "source_test": measure(own_test, own_points.thresholds, own_cal, classes,
                                      **opts)}
    compared = [c for c in classes if all(_measurable(columns[k], c) for k in COLUMNS)]
    result = {
        "rule": rule, "target_sensitivity": fitted.target_sensitivity,
        "calibrator_before": own_method, "calibrator_after": method, "n_bins": n_bins,
        "n_boot": n_boot, "seed": seed, "classes_compared": compared,
        "thresholds_kept_from_run": kept,
        "images": {"source_val": len(own_val.image_ids), "source_test": len(own_test.image_ids),
                   "target_val": len(target_val.image_ids),
                   "target_test": len(target_test.image_ids)},
        "mean": {k: _means(columns[k], compared) for k in COLUMNS}, **columns}
    return deployed, result


# ---------------------------------------------------------------------------------------------
# A run on a prepared dataset: score the four splits, recalibrate, write the files.
# ---------------------------------------------------------------------------------------------


def score_splits(workdir: str, dataset: str, overrides: Sequence[str] = ()
                 ) -> tuple[Any, tuple[external.Scored, ...]]:
    """(the opened run, (own val, own test, target val, target test)) scored by its best
    checkpoint; a ValueError if a validation split is empty."""
    from cxrjax.data import pipeline
    from cxrjax.evaluation import evaluator as evaluator_lib

    run = evaluator_lib.open_run(workdir)
    cfg = external.dataset_config(run.config, dataset, overrides)
    target = evaluator_lib.Evaluator(run.evaluator.model, run.config.model.fusion,
                                     pipeline.open_datasets(cfg, run.workdir), run.evaluator.mesh)
    for where, ev in (("the run's own data", run.evaluator), (dataset, target)):
        if not ev.datasets.num_examples("val"):
            raise ValueError(f"{where}: the validation split is empty; nothing to fit on")
    own = tuple(external.predict_masked(run.evaluator, run.variables, split)
                for split in ("val", "test"))
    # The target's labels in the model's class order (an NIH target read as its 14).
    other = tuple(external.in_run_classes(external.predict_masked(target, run.variables, split),
                                          cfg.data.classes, run.config.data.classes)
                  for split in ("val", "test"))
    return run, own + other


def run_recalibration(workdir: str, dataset: str, *, overrides: Sequence[str] = (),
                      method: str | None = None, n_boot: int = 1000, seed: int = 0,
                      write: bool = True) -> dict:
    """Scores the splits (``score_splits``), ``recalibrate``s with the run's rule, writes the
    files named in the module docstring (with ``write``, on process 0); returns the numbers."""
    import jax

    from cxrjax.data import release_splits

    run, (own_val, own_test, target_val, target_test) = score_splits(workdir, dataset, overrides)
    e = run.config.eval
    label = external.dataset_label(dataset, overrides)
    deployed, result = recalibrate(
        own_val, own_test, target_val, target_test, tuple(run.config.data.classes),
        rule=e.threshold_rule, target_sensitivity=e.target_sensitivity,
        own_method=e.calibration, method=e.calibration if method is None else method,
        n_bins=int(e.calibration_bins), n_boot=n_boot, seed=seed,
        chosen_on=f"the validation split of {label}")
    thresholds = run_layout.eval_path(run.workdir, run_layout.recalibration_file(label,
                                                                                 "thresholds"))
    result.update(workdir=run.workdir, step=run.step, train_source=run.config.data.source,
                  dataset=dataset, label=label, overrides=list(overrides),
                  target_test_split_hash=release_splits.split_hash(target_test.image_ids),
                  thresholds_file=thresholds)
    if write and jax.process_index() == 0:
        deployed.save(thresholds)
        predictions.write_json(result, run_layout.eval_path(
            run.workdir, run_layout.recalibration_file(label, "json")))
        fileio.write_text(run_layout.eval_path(run.workdir, run_layout.recalibration_file(
            label, "md")), format_markdown(result))
    return result


# ---------------------------------------------------------------------------------------------
# The table: per class and mean, before | after | the source's own test.
# ---------------------------------------------------------------------------------------------


def _cells(column: dict, c: str | None) -> list[str]:
    fv = predictions.format_value
    if c is None:
        return [fv(column[k], 3) for k in ("sensitivity", "specificity", "ece")]
    row = column["per_class"][c]
    return [fv(row["sensitivity"]["value"], 3), fv(row["specificity"]["value"], 3),
            fv(row["ece"], 3)]


def format_markdown(result: dict) -> str:
    """The before/after table (per compared class, then the mean), with what it measures."""
    images = result["images"]
    head = ["class", *(f"{m} {k}" for k in ("before", "after", "source") for m in
                       ("sens.", "spec.", "ECE"))]
    lines = [f"## Recalibration for {result['label']}", "",
             f"Trained on `{result['train_source']}`. Thresholds ({result['rule']}) and "
             f"calibrator (before: {result['calibrator_before']}, after: "
             f"{result['calibrator_after']}) fitted on the run's own validation split "
             f"(*before*, {images['source_val']} images) or on the target's "
             f"({images['target_val']} images, *after*); both measured on the same "
             f"{images['target_test']} target test images, each class over its known labels. "
             f"*source*: the run's own test split ({images['source_test']} images) at its own "
             f"thresholds. ECE: {result['n_bins']} bins.", "",
             "| " + " | ".join(head) + " |", "| --- " + "| ---: " * (len(head) - 1) + "|"]
    for c in result["classes_compared"]:
        cells = [x for k in COLUMNS for x in _cells(result[k], c)]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    mean = [x for k in COLUMNS for x in _cells(result["mean"][k], None)]
    lines.append(f"| **mean of {len(result['classes_compared'])}** | " + " | ".join(mean) + " |")
    pooled = [predictions.format_value(result[k]["ece_pooled"], 4) for k in COLUMNS]
    lines += ["", "ECE of all predictions pooled (every class's known labels): before "
              f"{pooled[0]}, after {pooled[1]}, source {pooled[2]}."]
    if result["thresholds_kept_from_run"]:
        lines += ["", "Kept the run's threshold (the target's validation split has no known "
                  f"positive or negative): {', '.join(result['thresholds_kept_from_run'])}."]
    lines += ["", f"Thresholds for `cxrjax.predict --thresholds`: `{result['thresholds_file']}`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command line (flags of ``python -m cxrjax.evaluate``).
# ---------------------------------------------------------------------------------------------


def add_flags(parser: Any) -> None:
    """``--recalibrate val`` and ``--calibrator``."""
    parser.add_argument("--recalibrate", choices=["val"], default=None,
                        help="with --workdir and --dataset: refit the run's thresholds (and "
                             "calibrator) on that dataset's validation split; report its test "
                             "split before and after, and write the thresholds for predict")
    parser.add_argument("--calibrator", choices=CALIBRATORS, default=None,
                        help="with --recalibrate: the calibrator fitted on the target's "
                             "validation split (default: the run's eval.calibration)")


def run_cli(args: Any) -> int:
    """Recalibrates as ``args`` say, prints the table (warnings once each on stderr), writes
    ``--json``; a ValueError on bad input."""
    import sys

    if args.calibrator and not args.recalibrate:
        raise ValueError("--calibrator applies to --recalibrate only")
    if not args.dataset or args.predictions or len(args.workdir or ()) != 1:
        raise ValueError("--recalibrate val needs one --workdir and --dataset NAME")
    for flag in ("thresholds", "labels", "split", "subgroups"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} does not apply to --recalibrate (it fits on the "
                             "target's validation split and reports its test split)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_recalibration(args.workdir[0], args.dataset, overrides=args.data,
                                   method=args.calibrator, n_boot=args.n_boot, seed=args.seed)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)
    print(format_markdown(result), end="")
    if args.json:
        predictions.write_json(result, args.json)
    return 0
