"""The localization picture grid: per chosen (image, class) of a ``localization.Localized``,
the stored image, the heatmap over the crop, and the ground-truth and predicted boxes."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrjax.data import labels as labels_lib
from cxrjax.data.crop import centre_crop_offset
from cxrjax.evaluation import boxes as loc
from cxrjax.io import fileio


def grid_pairs(localized: Any, count: int) -> list[int]:
    """Up to ``count`` pairs: the first of each class in turn, then the next of each ..."""
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(localized.pair_labels):
        by_class.setdefault(int(c), []).append(i)
    chosen, queues = [], list(by_class.values())
    while len(chosen) < count and any(queues):
        for q in queues:
            if q and len(chosen) < count:
                chosen.append(q.pop(0))
    return chosen


def draw(path: str, localized: Any, datasets: Any, method: str | None = None,
         count: int = 8) -> str:
    """A PNG: per chosen (image, class), the stored image with the normalised heatmap over
    the crop, the ground-truth box(es) in green and the predicted boxes in red."""
    method = method or localized.result["primary"]
    chosen = grid_pairs(localized, count)
    cols = min(4, max(len(chosen), 1))
    rows = max(-(-len(chosen) // cols), 1)
    fig = Figure(figsize=(3.3 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    crop, resolution = localized.result["crop"], localized.result["resolution"]
    scale = resolution / np.array(labels_lib.BOX_FRAME * 2, np.float64)  # 1024² -> record
    o = centre_crop_offset(resolution, crop)
    truth, found = localized.truth, localized.predicted[method]
    for ax, i in zip(axes.flat, chosen, strict=False):
        name, label = localized.pair_ids[i], localized.pair_labels[i]
        image = datasets.records[int(localized.pair_rows[i])][0]
        heat = localized.maps[method][i].astype(np.float64)
        span = heat.max() - heat.min()
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0, resolution, resolution, 0))
        if span > 0:  # jet, its opacity rising with the heat: a cold region stays visible
            rgba = colormaps["jet"]((heat - heat.min()) / span)
            rgba[..., 3] = 0.6 * (heat - heat.min()) / span
            ax.imshow(rgba, interpolation="bilinear", extent=(o, o + crop, o + crop, o))
        ax.add_patch(Rectangle((o, o), crop, crop, fill=False, ls=":", lw=0.8, ec="white"))
        here = (truth.image_ids == name) & (truth.labels == label)
        for box in truth.xywh[here] * scale:
            ax.add_patch(Rectangle(box[:2], *box[2:], fill=False, lw=1.6, ec="lime"))
        mine = (found.image_ids == name) & (found.labels == label)
        for box in found.xywh[mine] * scale:
            ax.add_patch(Rectangle(box[:2], *box[2:], fill=False, lw=1.2, ec="red"))
        best = (max(loc.box_iou(t, p) for t in truth.xywh[here] for p in found.xywh[mine])
                if mine.any() else 0.0)
        found_text = (f"{int(mine.sum())} box(es), best IoU {best:.2f}" if span > 0
                      else "flat map, no box")
        ax.set_title(f"{name}\n{labels_lib.CLASSES[label]}: {found_text}", fontsize=8)
        ax.set(xlim=(0, resolution), ylim=(resolution, 0))
        ax.axis("off")
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    fig.suptitle(f"{localized.result['methods'][method]['title']}, {localized.result['split']}"
                 " split: green = ground truth, red = predicted", fontsize=10)
    fig.tight_layout()
    with fileio.open(path, "wb") as f:  # local or gs://
        fig.savefig(f, format="png", dpi=100)
    return path
