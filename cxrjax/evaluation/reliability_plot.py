"""Reliability diagrams drawn from ``calibration``'s bins: per class and pooled, the fraction
positive against the mean predicted probability in each bin, a line per head with its ECE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from cxrjax.evaluation.figure_layout import place_grid
from cxrjax.io import fileio


def draw(heads: Mapping[str, tuple[dict, dict, float, np.ndarray]], positives: np.ndarray,
         path: str, *, n_bins: int, classes: Sequence[str], title: str) -> str:
    """One PNG: a panel for all classes pooled, then one per class (``positives`` (C,) in its
    title); a line per head from ``{head: (pooled curve, per-class curve, pooled ECE,
    per-class ECE (C,))}`` (``calibration.reliability_curve``'s dicts); the diagonal is perfect
    calibration, and marker area grows with the bin's image count."""
    panels = ["all classes (pooled)", *classes]
    cols = 4
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))  # no pyplot: no global backend state
    # Shared axes: tick labels on the outer panels only (every panel spans 0-1 both ways).
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    axes[0, 0].set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))  # shared: every panel's limits
    for ax in axes.flat:
        ax.set_autoscale_on(False)  # fixed limits: no panel rescales its siblings per line
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for h, (head, (pooled_curve, curve, pooled, per_class)) in enumerate(heads.items()):
        for p, ax in enumerate(axes.flat[:len(panels)]):
            src, c = (pooled_curve, 0) if p == 0 else (curve, p - 1)
            ece = pooled if p == 0 else per_class[p - 1]
            keep = src["count"][c] > 0
            if not keep.any():  # a class without a known label: no line
                continue
            size = 8 + 60 * np.sqrt(src["count"][c][keep] / src["count"][c].max())
            ax.plot(src["mean_predicted"][c][keep], src["fraction_positive"][c][keep], "-",
                    color=colors[h % len(colors)], lw=1.2, label=f"{head} ECE {ece:.3f}")
            ax.scatter(src["mean_predicted"][c][keep], src["fraction_positive"][c][keep],
                       s=size, color=colors[h % len(colors)], zorder=3)
    for p, ax in enumerate(axes.flat):
        if p >= len(panels):
            ax.axis("off")
            continue
        ax.plot([0, 1], [0, 1], "--", color="0.6", lw=0.8)
        count = positives.sum() if p == 0 else positives[p - 1]
        ax.set_title(f"{panels[p]} ({count:g} pos.)")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left", frameon=False)
        if p % cols == 0:
            ax.set_ylabel("fraction positive", fontsize=8)
        if p >= len(panels) - cols:  # the lowest panel of its column: its x axis labelled
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("mean predicted probability", fontsize=8)
    fig.suptitle(f"{title}: {n_bins} equal-width bins, marker area ~ images in the bin; "
                 "the dashed diagonal is perfect calibration", fontsize=11)
    place_grid(fig, left=0.6, right=0.15, bottom=0.5, top=0.8, wspace=0.2, hspace=0.4)
    with fileio.open(path, "wb") as f:  # local or gs://; Figure renders with Agg
        fig.savefig(f, format="png", dpi=110)
    return path
