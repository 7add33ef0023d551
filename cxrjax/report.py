"""The end-of-run report: WORKDIR/report.md, ROC curves and training curves as PNG.

Also holds the paper's reported numbers and the mapping from a config to its paper row, which
``scripts/reproduce_tables.py`` shares. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import datetime
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cxrjax.data.labels import CLASSES  # noqa: E402
from cxrjax.metric_writers import read_metrics  # noqa: E402

# Mean AUC over the 14 classes as printed in Ge et al. 2018 (arXiv 1807.07247), keyed by our
# config name ("chexnet" is the CheXNet figure the paper compares against). Only numbers we could
# check are here: the per-class values and W/D/N-AUC of Table 1 and every Table 2 figure are not.
PAPER_MEAN_AUC: dict[str, float] = {
    "r18": 0.8239, "d121": 0.8354, "r18_msml": 0.8388, "d121_vgg_msml": 0.8537,
    "chexnet": 0.8413,
}

# Our config name -> the paper's row label, per table, in the paper's order.
TABLE1_ROWS: dict[str, str] = {
    "r18": "R18", "r18_bl": "R18-BL", "r18_r18_bl": "R18 + R18-BL",
    "r18_msml": "R18 + R18-F-MSML", "r18_vgg_msml": "R18 + VGG-F-MSML",
    "d121": "D121", "d121_bl": "D121-BL", "d121_d121_bl": "D121 + D121-BL",
    "d121_msml": "D121 + D121-F-MSML", "d121_vgg_msml": "D121 + VGG-F-MSML",
    "r18_d121_ensemble": "R18 + D121 (ensemble)",
}
TABLE2_ROWS: dict[str, str] = {
    "r18_msml": "Global", "r18_msml_local": "Local", "r18_msml_local_fixed": "Local-Fixed",
}

# Head key -> column title; the fused column is the model's reported prediction.
HEAD_TITLES: dict[str, str] = {
    "ce": "CE (stream A)", "ce_b": "CE (stream B)", "msml": "MSML (stream B)",
    "fce": "FCE (bilinear)", "fused": "Fused",
}
SUMMARY_ROWS: tuple[tuple[str, str], ...] = (
    ("mean_auc", "**AUC**"), ("w_auc", "**W-AUC**"), ("d_auc", "**D-AUC**"),
    ("n_auc", "**N-AUC**"),
)
_TRUNK_ABBREV = {"resnet18": "r18", "densenet121": "d121", "vgg16": "vgg"}


def fmt(value: Any, digits: int = 4) -> str:
    """A metric as the tables print it: 4 decimals, ``n/a`` for NaN or a missing value."""
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _as_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def config_row(config: Any) -> str | None:
    """The config name (``r18_msml``, ``d121_bl``, ``r18_msml_local`` ...) whose model and
    training stages ``config`` (a ConfigDict or its JSON dict) has; None if it is no paper row."""
    c = _as_dict(config)
    m, stages = c.get("model") or {}, (c.get("train") or {}).get("stages") or []
    a, b = _TRUNK_ABBREV.get(m.get("trunk_a")), m.get("trunk_b")
    if a is None or (b is not None and b not in _TRUNK_ABBREV):
        return None
    if b is None:
        name = f"{a}_bl" if m.get("bilinear") else a
    elif m.get("head_b") == "msml":
        name = f"{a}_msml" if b == m["trunk_a"] else f"{a}_{_TRUNK_ABBREV[b]}_msml"
    else:
        name = f"{a}_{_TRUNK_ABBREV[b]}_bl"
    if len(stages) == 2:
        name += "_local" if stages[1].get("trainable", ".*") == ".*" else "_local_fixed"
    return name if name in TABLE1_ROWS or name in TABLE2_ROWS else None


def row_label(name: str | None) -> str:
    """``r18_msml_local`` -> ``R18 + R18-F-MSML, Local``; unknown names come back unchanged."""
    if name in TABLE2_ROWS and name != "r18_msml":
        return f"{TABLE1_ROWS['r18_msml']}, {TABLE2_ROWS[name]}"
    return TABLE1_ROWS.get(name, name or "unknown config")


# ---------------------------------------------------------------------------------------------
# Tables (markdown).
# ---------------------------------------------------------------------------------------------


def per_class_table(columns: Mapping[str, Mapping], class_names: Sequence[str] = CLASSES,
                    extra_rows: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """The paper's Table 1 layout: one row per class, then AUC / W-AUC / D-AUC / N-AUC rows;
    one column per summary (``{title: metrics.summary(...)}``). ``extra_rows``: (title, cells)."""
    titles = list(columns)
    lines = ["| Finding | " + " | ".join(titles) + " |",
             "|---|" + "---:|" * len(titles)]
    for name in class_names:
        cells = [fmt((s.get("per_class") or {}).get(name)) for s in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, title in SUMMARY_ROWS:
        lines.append(f"| {title} | " + " | ".join(fmt(s.get(key)) for s in columns.values())
                     + " |")
    for title, cells in extra_rows:
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ci_text(summary: Mapping) -> str:
    """``[lo, hi]`` of a summary's 95% CI of the mean AUC, or ``n/a``."""
    lo, hi = (list(summary.get("mean_auc_ci95") or []) + [None, None])[:2]
    return "n/a" if fmt(lo) == "n/a" else f"[{fmt(lo)}, {fmt(hi)}]"


def _model_line(m: Mapping) -> str:
    parts = [f"stream A `{m.get('trunk_a')}`" + (f" → {m['head_a']} head" if m.get("head_a")
                                                  else "")]
    if m.get("trunk_b"):
        parts.append(f"stream B `{m['trunk_b']}`" + (f" → {m['head_b']} head"
                                                      if m.get("head_b") else ""))
    if m.get("bilinear"):
        parts.append("bilinear pooling → FCE head" + ("" if m.get("trunk_b") else " (self)"))
    return " · ".join(parts)


def _stages_line(stages: Sequence[Mapping]) -> str:
    out = []
    for s in stages:
        weights = ", ".join(f"{k} {v:g}" for k, v in sorted((s.get("loss_weights") or {}).items())
                            if v)
        trainable = s.get("trainable", ".*")
        out.append(f"{s.get('name')} ({s.get('epochs')} epochs; {weights}"
                   + ("" if trainable == ".*" else f"; trains `{trainable}`") + ")")
    return " → ".join(out)


def render_markdown(workdir: str, config: Any, results: Mapping[str, Mapping],
                    log_problem: str | None = None) -> str:
    """The text of report.md (see ``write_report``), without drawing the plots.
    ``log_problem``: why the training curves are empty (no or an unreadable metrics.jsonl)."""
    c = _as_dict(config)
    name = config_row(c)
    curves_note = f" (empty: {log_problem})" if log_problem else ""
    fused = results["fused"]
    m, data = c.get("model") or {}, c.get("data") or {}
    source = data.get("source", "?")
    order = [h for h in HEAD_TITLES if h in results] + [h for h in results if h not in HEAD_TITLES]
    columns = {HEAD_TITLES.get(h, h): results[h] for h in order}
    fusion = ", ".join(m.get("fusion") or ()) or "?"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# cxrjax run report: {row_label(name) if name else os.path.basename(workdir)}", "",
        "| | |", "|---|---|",
        f"| config | `{name or 'not a paper row'}` (workdir `{workdir}`) |",
        f"| model | {_model_line(m)} |",
        f"| training | {_stages_line((c.get('train') or {}).get('stages') or [])} |",
        f"| data | source `{source}`, split `{data.get('split_scheme', '?')}` |",
        f"| test images | {fused.get('n_images', 'n/a')} |",
        f"| reported prediction | Fused = mean of the {fusion} probabilities |",
        f"| written | {now} |", "",
        "## Test split: AUC per class", "",
        per_class_table(columns), "",
        f"Fused mean AUC **{fmt(fused.get('mean_auc'))}**, 95% bootstrap CI {ci_text(fused)} "
        f"({fused.get('n_boot', '?')} resamples of the test images). "
        f"W-AUC weights each class by its share of all NIH images (the paper's definition); "
        f"weighted by this test set's positives instead it is "
        f"{fmt(fused.get('w_auc_normalized'))}.",
    ]
    if "msml" in results:
        lines.append("The MSML column ranks images by the MSML head's scores: its AUC is valid, "
                     "but those scores are not calibrated probabilities.")
    excluded = fused.get("excluded_classes") or []
    if excluded:
        lines.append(f"Left out of the means (one label value in the test set): "
                     f"{', '.join(excluded)}.")
    paper = PAPER_MEAN_AUC.get(name or "")
    if paper is not None:
        said = f"The paper reports a mean AUC of {fmt(paper)} for {row_label(name)}"
        if source == "nih":
            ours = float(fused.get("mean_auc") if fused.get("mean_auc") is not None else math.nan)
            lines += ["", f"{said} (ours {fmt(ours)}, difference {ours - paper:+.4f})."]
        else:
            lines += ["", f"{said}. Not comparable: this run used `{source}` data, not NIH "
                      "ChestX-ray14."]
    lines += ["", "## Plots", "",
              "- [ROC curves per class, fused prediction](eval/roc_curves.png)",
              f"- [Training curves](training_curves.png){curves_note}", "",
              "![ROC curves](eval/roc_curves.png)", "", "![Training curves](training_curves.png)",
              ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------------------------


def plot_roc_curves(path: str, scores: np.ndarray, labels: np.ndarray,
                    aucs: Mapping[str, float] | None = None,
                    class_names: Sequence[str] = CLASSES, title: str = "") -> None:
    """A 4x4 grid: one ROC curve per class (AUC in the legend), then all of them together."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ValueError(f"ROC curves need (N, {len(class_names)}) scores and labels, got "
                         f"{scores.shape} and {labels.shape}")
    fig, axes = plt.subplots(4, 4, figsize=(14, 14), sharex=True, sharey=True)
    axes = axes.ravel()
    axes[14].set_prop_cycle(color=plt.get_cmap("tab20").colors[:len(class_names)])
    for c, name in enumerate(class_names):
        ax = axes[c]
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        y = labels[:, c].astype(bool)
        if y.all() or not y.any():
            ax.text(0.5, 0.5, "one label value:\nno curve", ha="center", va="center")
        else:
            fpr, tpr, _ = roc_curve(y, scores[:, c])
            auc = (aucs or {}).get(name)
            label = f"AUC {fmt(auc)}" if auc is not None else None
            ax.plot(fpr, tpr, lw=1.5, label=label)
            axes[14].plot(fpr, tpr, lw=0.8, label=name)
            if label:
                ax.legend(loc="lower right", fontsize=9)
        ax.set_title(f"{name} ({int(y.sum())} pos.)", fontsize=10)
    axes[14].plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    axes[14].set_title("all classes", fontsize=10)
    axes[14].legend(loc="lower right", fontsize=6)
    axes[15].axis("off")
    for ax in axes[12:16]:
        ax.set_xlabel("false positive rate")
    for ax in axes[::4]:
        ax.set_ylabel("true positive rate")
    fig.suptitle(title or "ROC curves, test split")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _global_steps(records: Sequence[dict]) -> tuple[list[dict], list[tuple[float, str]]]:
    """Records with a run-wide ``x`` (steps restart at each stage), the last record per
    (stage, step, kind) kept so resumed runs do not plot twice; and each stage's start."""
    stages: list[str] = []
    last: dict[tuple, dict] = {}
    for r in records:
        if not isinstance(r.get("step"), int | float):
            continue  # a line without a step cannot be placed on the x axis
        stage = r.get("stage", "")
        if stage not in stages:
            stages.append(stage)
        last[(stage, r["step"], tuple(sorted(k for k in r if "/" in k)))] = r
    offset, starts, out = 0, [], []
    for stage in stages:
        rows = sorted((r for (s, _, _), r in last.items() if s == stage), key=lambda r: r["step"])
        starts.append((offset, stage))
        out += [{**r, "x": offset + r["step"]} for r in rows]
        offset += max(r["step"] for r in rows)
    return out, starts


def plot_training_curves(path: str, records: Sequence[dict],
                         empty_message: str = "no training log (metrics.jsonl) in this workdir"
                         ) -> None:
    """Loss (total and per head), learning rate, validation mean AUC / W-AUC vs step; a
    dotted line and label where each stage starts. An empty log gives a PNG that says so."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    rows, starts = _global_steps(records)
    if not rows:
        for ax in axes:
            ax.axis("off")
        axes[1].text(0.5, 0.5, empty_message or "no step in the training log", ha="center",
                     va="center")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return
    keys = sorted({k for r in rows for k in r if k.startswith("train/loss")})

    def series(key: str) -> tuple[list, list]:
        pts = [(r["x"], r[key]) for r in rows if key in r and r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key in keys:
        x, y = series(key)
        axes[0].plot(x, y, lw=2 if key == "train/loss" else 1,
                     label="total" if key == "train/loss" else key.removeprefix("train/loss_"))
    axes[0].set(title="training loss", xlabel="step")
    x, y = series("train/lr")
    axes[1].plot(x, y)
    axes[1].set(title="learning rate", xlabel="step")
    if y and min(y) > 0 and max(y) > 1.5 * min(y):  # decays: a log scale shows each step
        axes[1].set_yscale("log")
    for key, label in (("val/mean_auc", "mean AUC"), ("val/w_auc", "W-AUC")):
        x, y = series(key)
        axes[2].plot(x, y, marker="o", label=label)
    axes[2].set(title="validation (each epoch)", xlabel="step")
    end = max(max(r["x"] for r in rows), 1)
    for ax in axes:
        ax.set_xlim(0, end)
        for x0, stage in starts:
            if len(starts) > 1 or x0 > 0:
                ax.axvline(x0, color="0.5", ls=":", lw=1)
            ax.annotate(stage, (x0, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                        va="top", ha="left", color="0.4")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The entry point train.py calls.
# ---------------------------------------------------------------------------------------------


def write_report(workdir: str, config: Any, results: dict[str, dict],
                 probs: dict[str, np.ndarray], labels: np.ndarray) -> str:
    """Writes WORKDIR/report.md, WORKDIR/eval/roc_curves.png and WORKDIR/training_curves.png.

    Args:
      workdir: the run's directory (its metrics.jsonl gives the training curves).
      config: the run's ConfigDict (or its JSON dict).
      results: ``metrics.summary`` per head ("ce", "ce_b", "msml", "fce") and "fused".
      probs: (N, 14) test-split probabilities per head, NIH class order; needs "fused".
      labels: (N, 14) 0/1 test labels.
    Returns the path of report.md.
    """
    if "fused" not in results or "fused" not in probs:
        raise ValueError(f"write_report needs the 'fused' head in results and probs; got "
                         f"results {sorted(results)} and probs {sorted(probs)}")
    labels = np.asarray(labels)
    if np.shape(probs["fused"]) != labels.shape:
        raise ValueError(f"fused probabilities {np.shape(probs['fused'])} and labels "
                         f"{labels.shape} must have the same (N, 14) shape")
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    c = _as_dict(config)
    name = config_row(c)
    with warnings.catch_warnings():  # sklearn warns on a one-valued class; the plot says so.
        warnings.simplefilter("ignore")
        plot_roc_curves(os.path.join(workdir, "eval", "roc_curves.png"), probs["fused"], labels,
                        results["fused"].get("per_class"),
                        title=f"ROC curves, fused prediction, test split: {row_label(name)}")
    try:
        with warnings.catch_warnings(record=True) as cut:  # lines cut short by a kill
            warnings.simplefilter("always")
            records = read_metrics(workdir)
        log_problem = None
        if not records:
            log_problem = (f"metrics.jsonl unreadable ({cut[0].message})" if cut else
                           "no training log (metrics.jsonl) in this workdir")
    except OSError as e:
        records, log_problem = [], f"metrics.jsonl unreadable ({e})"
    plot_training_curves(os.path.join(workdir, "training_curves.png"), records,
                         log_problem or "")
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(render_markdown(workdir, c, results, log_problem))
    return path
