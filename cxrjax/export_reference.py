"""The export's reference images: three pictures that exercise the preprocessing contract
(8-bit gray, colour, 16-bit gray) or the user's own, and their crops, which predict's decoder
and the serving decoder must agree on pixel for pixel before anything is exported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cxrjax.data import image_inputs
from cxrjax.io import fileio
from cxrjax.serving import decode, files


def reference_picture(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth gray picture in [0, 1] with an oval and some noise (deterministic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width] / np.float64(max(width, height))
    oval = ((x - 0.5) / 0.3) ** 2 + ((y - 0.5) / 0.4) ** 2 < 1
    img = 0.35 + 0.2 * np.sin(9 * x + seed) * np.cos(7 * y) + 0.3 * oval
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def write_reference_images(directory: str, resolution: int) -> list[str]:
    """Writes an 8-bit gray, an RGB and a 16-bit gray PNG of other sizes than ``resolution``
    (so each is resized); returns their file names."""
    r = resolution
    gray = reference_picture(r * 3 // 2 + 3, r * 5 // 4 + 5, 0)
    gray = Image.fromarray((gray * 255).astype(np.uint8))
    base = reference_picture(2 * r, 2 * r, 1)
    rgb = np.stack([base, base * 0.9, np.clip(base * 1.1, 0, 1)], -1)
    colour = Image.fromarray((rgb * 255).astype(np.uint8), "RGB")
    deep = Image.fromarray((reference_picture(r + 17, r + 9, 2) * 65535).astype(np.uint16))
    names = ["gray8.png", "rgb.png", "gray16.png"]
    for name, img in zip(names, (gray, colour, deep), strict=True):
        img.save(os.path.join(directory, name))
    return names


def copy_reference_images(directory: str, sources: Sequence[str]) -> list[str]:
    """Copies the given images (their decoding is checked later); returns their names."""
    names = []
    for i, src in enumerate(sources):
        name = f"{i}_{os.path.basename(src)}"
        fileio.write_bytes(os.path.join(directory, name), fileio.read_bytes(src))
        names.append(name)
    return names


def reference_crops(tmp: str, config: Any, images: Sequence[str] | None
                    ) -> tuple[list, np.ndarray]:
    """(file names, their crops as predict --workdir decodes them); the serving decoder must
    give the same crops, pixel for pixel."""
    ref_dir = os.path.join(tmp, files.REFERENCE)
    os.makedirs(ref_dir)
    res, crop = int(config.data.resolution), int(config.data.crop)
    names = (copy_reference_images(ref_dir, images) if images
             else write_reference_images(ref_dir, res))
    crops = []
    for name in names:
        path = os.path.join(ref_dir, name)
        try:
            crop_here = image_inputs.load_image(path, res, crop).image
        except image_inputs.ImageError as e:
            raise ValueError(f"--reference {name.split('_', 1)[-1]}: {e}") from None
        try:
            served = decode.decode_file(path, res, crop)
        except decode.DecodeError as e:
            raise ValueError(f"--reference {name.split('_', 1)[-1]}: {e} (the export's "
                             "reference images must be PNG or JPEG)") from None
        if not np.array_equal(served, crop_here):
            raise RuntimeError(f"cxrjax.serving decodes {name} unlike predict ("
                               f"{int(np.sum(served != crop_here))} pixels differ)")
        crops.append(crop_here)
    return names, np.stack(crops)
