"""Did the image model learn more than the metadata? A metadata-only baseline.

Per class, a scikit-learn logistic regression on the patient's sex (one-hot), age (scaled,
with a missing indicator), view position (PA, AP, other: one-hot) and, where the data have it
(NIH's layout), the follow-up number (log(1 + n), scaled: it tracks how ill a patient is).
Fitted on the run's train split, scored on its test split, and reported beside the image
model: mean AUC with its bootstrap CI (``metrics.summary``), and the classes where the
baseline comes within ``CLOSE_MARGIN`` of the model's AUC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.data import patient_metadata as metadata
from cxrjax.evaluation import metrics
from cxrjax.evaluation.section import Section, caveats_logged_once

CLOSE_MARGIN = 0.05  # a class whose baseline AUC is within this of the model's is listed


def features(meta: metadata.Metadata) -> tuple[np.ndarray, list[str]]:
    """(N, F) float features of the metadata present, and their names."""
    columns: dict[str, np.ndarray] = {}
    if meta.sex is not None:
        columns.update({"sex=F": meta.sex == "F", "sex=M": meta.sex == "M"})
    if meta.age is not None:
        known = ~np.isnan(meta.age)
        columns.update({"age": np.where(known, meta.age, 0.0), "age unknown": ~known})
    if meta.view is not None:
        columns.update({f"view={v}": meta.view == v for v in metadata.VIEWS})
        columns["view=other"] = ~np.isin(meta.view, (*metadata.VIEWS, ""))
    if meta.follow_up is not None:
        columns["log(1 + follow-up #)"] = np.log1p(np.maximum(meta.follow_up, 0))
    if not columns:
        raise ValueError("no metadata field to fit a baseline on")
    return np.stack([v.astype(np.float64) for v in columns.values()], axis=1), list(columns)


def fit_predict(train: metadata.Metadata, train_labels: np.ndarray,
                test: metadata.Metadata) -> tuple[np.ndarray, list[str]]:
    """(test probabilities (N_test, C) of one logistic regression per class fitted on the
    train split, feature names); a class with one train label value predicts its train rate."""
    x_train, names = features(train)
    x_test, test_names = features(test)
    if names != test_names:
        raise ValueError(f"train and test metadata differ in fields: {names} vs {test_names}")
    from sklearn.linear_model import LogisticRegression  # scikit-learn: only when fitted
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels = np.asarray(train_labels).astype(bool)
    out = np.empty((len(x_test), train_labels.shape[1]))
    for c in range(train_labels.shape[1]):
        y = train_labels[:, c]
        if y.all() or not y.any():
            out[:, c] = float(y.mean())
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        out[:, c] = model.fit(x_train, y).predict_proba(x_test)[:, 1]
    return out, names


def compare(baseline: Mapping, model: Mapping, classes: Sequence[str]) -> dict:
    """The baseline's and the model's ``metrics.summary`` side by side (JSON-ready)."""
    close = [{"class": c, "baseline": baseline["per_class"][c], "model": model["per_class"][c]}
             for c in classes
             if np.isfinite(baseline["per_class"][c]) and np.isfinite(model["per_class"][c])
             and baseline["per_class"][c] >= model["per_class"][c] - CLOSE_MARGIN]
    return {"mean_auc": baseline["mean_auc"], "mean_auc_ci95": baseline["mean_auc_ci95"],
            "per_class": baseline["per_class"], "per_class_ci95": baseline["per_class_ci95"],
            "model_mean_auc": model["mean_auc"],
            "model_mean_auc_ci95": model.get("mean_auc_ci95"),
            "model_per_class": model["per_class"], "margin": CLOSE_MARGIN,
            "close_classes": close, "n_boot": baseline["n_boot"]}


def evaluate_baseline(train: metadata.Metadata, train_labels, test: metadata.Metadata,
                      test_labels, model_summary: Mapping, *, n_boot: int = 1000,
                      seed: int = 0, classes: Sequence[str] | None = None) -> dict:
    """Fit on train, score on test, compare with the image model's ``model_summary``."""
    probs, names = fit_predict(train, train_labels, test)
    classes = list(classes or metrics.class_names(probs.shape[1]))
    summary = metrics.summary(probs, test_labels, weights=np.full(len(classes), 1 / len(classes)),
                              n_boot=n_boot, seed=seed)
    summary["per_class"] = dict(zip(classes, summary["per_class"].values(), strict=True))
    summary["per_class_ci95"] = dict(zip(classes, summary["per_class_ci95"].values(),
                                         strict=True))
    return {"features": names, "train_images": int(len(train_labels)),
            "test_images": int(len(test_labels)), **compare(summary, model_summary, classes)}


def _ci(values) -> str:
    lo, hi = (list(values or []) + [None, None])[:2]
    if lo is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f" [{lo:.3f}, {hi:.3f}]"


def report_section(result: Mapping | None, heading: str = "##") -> str:
    """The report's baseline section (markdown); says why when there is no result."""
    lines = [f"{heading} Metadata-only baseline: more than sex, age and view?", ""]
    if not result or "mean_auc" not in result:
        why = (result or {}).get("skipped", "not computed")
        return "\n".join(lines + [f"Not computed: {why}.", ""])
    lines += [
        f"One logistic regression per class on {', '.join(result['features'])}, fitted on "
        f"the {result['train_images']} train images and scored on the "
        f"{result['test_images']} test images (95% CIs: {result['n_boot']} bootstrap "
        "resamples).", "",
        "| | mean AUC |", "|---|---:|",
        f"| Image model (fused) | {result['model_mean_auc']:.3f}"
        f"{_ci(result['model_mean_auc_ci95'])} |",
        f"| Metadata only | {result['mean_auc']:.3f}{_ci(result['mean_auc_ci95'])} |", ""]
    close = result["close_classes"]
    if close:
        lines += [f"Classes where the metadata come within {result['margin']:g} AUC of the "
                  "image model (or beat it):", "", "| Finding | metadata only | image model |",
                  "|---|---:|---:|"]
        lines += [f"| {c['class']} | {c['baseline']:.3f} | {c['model']:.3f} |" for c in close]
    else:
        lines.append(f"In no class do the metadata come within {result['margin']:g} AUC of "
                     "the image model.")
    return "\n".join(lines + [""])


# ---------------------------------------------------------------------------------------------
# The evaluation section: eval.metadata_baseline.
# ---------------------------------------------------------------------------------------------


def _check_fields(e: Any, model: Any) -> None:
    from cxrjax.config_checks import ConfigError

    if not isinstance(e.metadata_baseline, bool):
        raise ConfigError(f"eval.metadata_baseline={e.metadata_baseline!r} must be True or "
                          "False")


def _compute(inputs: Any) -> dict:
    """The baseline fitted on the run's train split (labels from its label table, the table
    its splits and records were made from: no image is read), scored on test."""
    datasets = getattr(inputs.evaluator, "datasets", None)
    if datasets is None:
        return {"skipped": "the run's datasets are not open"}
    try:
        table = metadata.run_table(inputs.config, inputs.workdir)
    except (FileNotFoundError, ValueError) as err:
        return {"skipped": f"the run's label table could not be read ({err})"}
    if table is None:
        return {"skipped": f"data.source={inputs.config.data.source!r} carries no metadata"}
    train_ids, test = datasets.image_ids("train"), inputs.test
    train, test_meta = metadata.from_table(table, train_ids), metadata.from_table(
        table, test.image_ids)
    if not np.array_equal(table.labels[table.rows(test.image_ids)], test.labels):
        return {"skipped": "the label table disagrees with the prepared test labels"}
    with caveats_logged_once("metadata baseline: "):
        return evaluate_baseline(train, table.labels[table.rows(train_ids)], test_meta,
                                 test.labels, test.results["fused"],
                                 n_boot=int(inputs.config.eval.n_boot))


SECTION = Section("metadata_baseline", ("metadata_baseline", "n_boot"), check=_check_fields,
                  compute=_compute, report=report_section, switch="metadata_baseline")
