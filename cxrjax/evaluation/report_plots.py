"""The report's plots: ROC curves per class and training curves, as PNG (local or gs://).

matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cxrjax.data.labels import CLASSES  # noqa: E402
from cxrjax.evaluation.figure_layout import place_grid  # noqa: E402
from cxrjax.evaluation.prediction_files import (
    HEAD_TITLES,  # noqa: E402
    format_value,  # noqa: E402
)
from cxrjax.io import fileio  # noqa: E402


def fmt(value: Any, digits: int = 4) -> str:
    return format_value(value, digits)


def plot_roc_curves(path: str, scores: np.ndarray, labels: np.ndarray,
                    aucs: Mapping[str, float] | None = None,
                    class_names: Sequence[str] = CLASSES, title: str = "",
                    mask: np.ndarray | None = None) -> None:
    """A grid four wide (4x4 for NIH's 14): one ROC curve per class (AUC in the legend), then
    all of them together and their legend; with ``mask`` (N, C, 0 = label missing) each class
    over its known images."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ValueError(f"ROC curves need (N, {len(class_names)}) scores and labels, got "
                         f"{scores.shape} and {labels.shape}")
    rows = -(-(len(class_names) + 2) // 4)
    fig, axes = plt.subplots(rows, 4, figsize=(14, 3.5 * rows), sharex=True, sharey=True)
    axes = axes.ravel()
    axes[0].set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05))  # shared: every panel's limits
    for ax in axes:
        ax.set_autoscale_on(False)  # fixed limits: no panel rescales its siblings per line
    together, key = axes[-2], axes[-1]
    for ax in axes[len(class_names):-2]:
        ax.axis("off")
    together.set_prop_cycle(color=plt.get_cmap("tab20").colors[:len(class_names)])
    for c, name in enumerate(class_names):
        ax = axes[c]
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        rows = slice(None) if mask is None else np.asarray(mask)[:, c].astype(bool)
        y = labels[rows, c].astype(bool)
        if y.all() or not y.any():
            ax.text(0.5, 0.5, "one label value:\nno curve", ha="center", va="center")
        else:
            fpr, tpr, _ = roc_curve(y, scores[rows, c])
            auc = (aucs or {}).get(name)
            label = f"AUC {fmt(auc)}" if auc is not None else None
            ax.plot(fpr, tpr, lw=1.5, label=label)
            together.plot(fpr, tpr, lw=0.8, label=name)
            if label:
                ax.legend(loc="lower right", fontsize=9)
        ax.set_title(f"{name} ({int(y.sum())} pos.)", fontsize=10)
    together.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    together.set_title("all classes (legend at right)", fontsize=10)
    key.axis("off")  # the "all classes" legend gets this panel to itself, readable
    handles, names = together.get_legend_handles_labels()
    if handles:
        key.legend(handles, names, loc="center left", fontsize=10, frameon=False,
                        title="all classes", title_fontsize=10)
    for ax in axes[-4:]:
        ax.set_xlabel("false positive rate")
    for ax in axes[::4]:
        ax.set_ylabel("true positive rate")
    fig.suptitle(title or "ROC curves, test split")
    place_grid(fig, left=0.7, right=0.1, bottom=0.55, top=0.85, wspace=0.25, hspace=0.4)
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig: Any, path: str) -> None:
    """A PNG at a local or gs:// path, written atomically."""
    with fileio.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)


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
    """``training_figure(records)`` as a PNG; an empty log gives a PNG that says so."""
    fig = training_figure(records, empty_message)
    _savefig(fig, path)
    plt.close(fig)


# Per-head losses in the order the model family names its heads, then any other.
_HEAD_ORDER = ("ce", "ce_b", "msml", "fce")


def training_figure(records: Sequence[dict],
                    empty_message: str = "no training log (metrics.jsonl) in this workdir"
                    ) -> Any:
    """Top row: total loss, learning rate, validation mean AUC / W-AUC vs step. Bottom row: one
    panel per head's loss, so that heads with close values (CE and FCE) do not hide each other.
    A dotted line and label where each stage starts, a star on each stage's best epoch (the
    checkpoint kept as best; the last stage's is the one tested) and a dashed line through
    every panel at the tested one. Every panel labels both axes."""
    rows, starts = _global_steps(records)
    heads = sorted({k.removeprefix("train/loss_") for r in rows for k in r
                    if k.startswith("train/loss_")},
                   key=lambda h: (_HEAD_ORDER.index(h) if h in _HEAD_ORDER else 99, h))
    fig = plt.figure(figsize=(16, 8.5 if heads else 4.5), layout="constrained")
    top_fig, bottom_fig = fig.subfigures(2, 1) if heads else (fig, None)
    top = top_fig.subplots(1, 3)
    if not rows:
        for ax in top:
            ax.axis("off")
        top[1].text(0.5, 0.5, empty_message or "no step in the training log", ha="center",
                    va="center")
        return fig

    def series(key: str) -> tuple[list, list]:
        pts = [(r["x"], r[key]) for r in rows if key in r and r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    x, y = series("train/loss")
    top[0].plot(x, y, lw=1.5, color="black", **_points(x))
    top[0].set(title="training loss (total, weighted over heads)", ylabel="loss")
    _log_scale_if_wide(top[0], y)
    x, y = series("train/lr")
    top[1].plot(x, y, **_points(x))
    top[1].set(title="learning rate", ylabel="learning rate")
    _log_scale_if_wide(top[1], y, ratio=1.5)  # decays: a log scale shows each step
    if top[1].get_yscale() == "linear":
        top[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for key, label in (("val/mean_auc", "mean AUC"), ("val/w_auc", "W-AUC")):
        x, y = series(key)
        top[2].plot(x, y, marker="o", label=label)
    top[2].set(title="validation (each epoch)", ylabel="AUC")
    _mark_best(top[2], rows)
    axes = list(top)
    if heads:
        bottom = bottom_fig.subplots(1, max(3, len(heads)), sharex=True)
        for ax in bottom[len(heads):]:
            ax.axis("off")
        colors = plt.get_cmap("tab10").colors
        for i, (ax, head) in enumerate(zip(bottom, heads, strict=False)):
            x, y = series(f"train/loss_{head}")
            ax.plot(x, y, lw=1.2, color=colors[i % len(colors)], **_points(x))
            ax.set(title=f"{HEAD_TITLES.get(head, head)} head: training loss", ylabel="loss")
            _log_scale_if_wide(ax, y)
        axes += list(bottom[:len(heads)])
    _decorate(axes, rows, starts)
    return fig


def _points(x: Sequence[float]) -> dict:
    """Markers on a short series, so that a run of a few logged steps still shows them."""
    return {"marker": "o", "ms": 3} if len(x) <= 30 else {}


def _log_scale_if_wide(ax: Any, values: Sequence[float], ratio: float = 20.0) -> None:
    """A log y axis when positive ``values`` span more than ``ratio``: each decade readable."""
    if values and min(values) > 0 and max(values) > ratio * min(values):
        ax.set_yscale("log")


def _mark_best(ax: Any, rows: Sequence[dict]) -> None:
    """A star on each stage's best validated epoch, the tested one in crimson."""
    best = _best_epochs(rows)
    for i, (x_best, auc, stage) in enumerate(best):
        tested = i == len(best) - 1
        label = f"best epoch (tested): {auc:.4f}" if tested else f"best of {stage}: {auc:.4f}"
        ax.plot([x_best], [auc], marker="*", ms=16, color="crimson" if tested else "0.4",
                ls="none", zorder=5, clip_on=False, label=label)


def _decorate(axes: Sequence[Any], rows: Sequence[dict], starts: Sequence[tuple]) -> None:
    """On every panel: the step axis and its label, the tested epoch (dashed), each stage's
    start (dotted, named), and the legend where there are labelled lines."""
    best = _best_epochs(rows)
    end = max(max(r["x"] for r in rows), 1)
    for ax in axes:
        ax.set_xlabel("step (all stages)" if len(starts) > 1 else "step")
        ax.set_xlim(0, end * 1.02)  # a point on the last step stays whole
        if best:
            ax.axvline(best[-1][0], color="crimson", ls="--", lw=0.8)
        for x0, stage in starts:
            if len(starts) > 1 or x0 > 0:
                ax.axvline(x0, color="0.5", ls=":", lw=1)
            ax.annotate(stage, (x0, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                        va="top", ha="left", color="0.4")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)


def _best_epochs(rows: Sequence[dict]) -> list[tuple[float, float, str]]:
    """(x, validation mean AUC, stage) of each stage's best validated epoch, in stage order
    (the first of equal scores, as the checkpoint manager keeps it)."""
    best: dict[str, tuple[float, float, str]] = {}
    for r in rows:
        auc = r.get("val/mean_auc")
        if auc is None or auc != auc:
            continue
        stage = r.get("stage", "")
        if stage not in best or auc > best[stage][1]:
            best[stage] = (r["x"], float(auc), stage)
    return list(best.values())
