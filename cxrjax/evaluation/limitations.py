"""The known limitations of a trained run, read from its recorded config.

One place decides what a run's config implies about where its predictions can be trusted, so
that everything that shows a prediction (``predict``'s console, CSV and heatmap captions, a
model card) says the same thing. A limitation listed here is serious enough to go beside every
prediction: a model that never saw a chest X-ray, or saw only thumbnails of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Limitation:
    """``short``: a few words for a caption or a CSV cell; ``text``: the full sentence."""

    short: str
    text: str


def _get(config: Any, dotted: str) -> Any:
    """``config.a.b`` for a ConfigDict or a plain dict (a config.json read back); None if
    absent."""
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) or hasattr(value, "get") else None
        if value is None:
            return None
    return value


def run_limitations(config: Any) -> tuple[Limitation, ...]:
    """The limitations a run's recorded config implies; () for a model trained on full-size
    chest X-rays (NIH, or any other release's images)."""
    source = _get(config, "data.source") or "nih"
    resolution = _get(config, "data.resolution")
    sources = source.split("+")  # a mix (cxrjax.data.mixing) names its sources a+b
    synthetic = [s for s in sources if s.startswith("synthetic")]
    if synthetic:
        trained = ("this model was trained on synthetic images (drawn shapes, "
                   "cxrjax.data.synthetic), not on chest X-rays" if len(sources) == 1 else
                   f"this model was trained on a mix ({source}) that draws from synthetic "
                   f"images ({', '.join(synthetic)}: drawn shapes, cxrjax.data.synthetic)")
        return (Limitation("trained on synthetic images, not X-rays",
                           f"{trained}: its probabilities for real X-rays mean nothing"),)
    if source == "chestmnist":
        size = f" ({resolution} px)" if resolution else ""
        return (Limitation(
            "trained on ChestMNIST thumbnails",
            f"this model was trained on ChestMNIST{size}, MedMNIST's downsized copy of "
            "ChestX-ray14, not on full-size X-rays: small findings are lost at that size, and "
            "it was not tested on full-size images"),)
    return ()


def warning_text(limitations: tuple[Limitation, ...]) -> str:
    """The short forms joined for one CSV cell or caption; '' when there are none."""
    return "; ".join(x.short for x in limitations)
