"""The centre crop every consumer of a stored record shares: evaluation batches, `predict`'s
inputs, heatmap overlays and boxes mapped between the crop and the original frame."""

from __future__ import annotations

import numpy as np


def centre_crop_offset(size: int, crop: int) -> int:
    """The top-left corner (the same along both axes) of the centred ``crop``² window of a
    ``size``² image; a ValueError when the crop does not fit."""
    if not 0 < crop <= size:
        raise ValueError(f"a {crop}-px crop does not fit a {size}-px image")
    return (size - crop) // 2


def centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """The centred ``crop``² window of a square (R, R) record, as a contiguous (crop, crop, 1)."""
    o = centre_crop_offset(image.shape[0], crop)
    return np.ascontiguousarray(image[o:o + crop, o:o + crop])[..., None]
