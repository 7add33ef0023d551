"""Images to model inputs exactly as the run's prepared dataset made them (preprocessing.json).

A PNG or JPEG (or an array) becomes gray uint8: Pillow's ``convert("L")`` for colour and
palette images, a 16-bit image mapped linearly onto 0..255 (``x * 255 / hi + 0.5``, clipped and
truncated, in float32); it is resized to ``resolution`` square with Pillow's antialiased
bilinear filter (skipped when already that size; the aspect ratio is not kept), then centre
cropped to ``crop``. This mirrors ``cxrjax.data.nih_layout.decode_image`` and
``cxrjax.data.image_inputs.load_image`` step for step; the export checks the two agree.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 10_000 * 10_000  # larger images are refused before decoding
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


class DecodeError(ValueError):
    """An input that cannot be scored; the message says why in one line."""


def sixteen_to_uint8(pixels: np.ndarray, hi: float) -> np.ndarray:
    """A 16-bit (or 32-bit int) gray image onto uint8: ``x * (255 / hi) + 0.5``, clipped,
    truncated; float32 as the prepare step computes it."""
    arr = np.asarray(pixels, dtype=np.float32)
    return np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)


def gray_image(img: Image.Image) -> Image.Image:
    """A decoded Pillow image as the 8-bit gray ("L") image that is resized next."""
    if img.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(sixteen_to_uint8(arr, hi))
    return img if img.mode == "L" else img.convert("L")


def resize_and_crop(gray: Image.Image, resolution: int, crop: int) -> np.ndarray:
    """(crop, crop, 1) uint8: bilinear (antialiased) to resolution square, centre crop."""
    if gray.size != (resolution, resolution):
        gray = gray.resize((resolution, resolution), Image.Resampling.BILINEAR)
    record = np.asarray(gray, dtype=np.uint8)
    o = (resolution - crop) // 2
    return np.ascontiguousarray(record[o:o + crop, o:o + crop])[..., None]


def decode_file(path: str | os.PathLike, resolution: int, crop: int) -> np.ndarray:
    """A PNG or JPEG file as the model's (crop, crop, 1) uint8 input; DecodeError if not."""
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise DecodeError(f"image is {width}x{height} px, over the "
                                      f"{MAX_PIXELS:,}-pixel limit; refused before decoding")
                img.load()
                return resize_and_crop(gray_image(img), resolution, crop)
    except FileNotFoundError:
        raise DecodeError("no such file") from None
    except UnidentifiedImageError:
        raise DecodeError("not a PNG or JPEG image (a DICOM file: score it with python -m "
                          "cxrjax.predict --model, which reads DICOM)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"cannot decode (truncated or corrupt?): {e}") from None


def decode_array(pixels: np.ndarray, resolution: int, crop: int) -> np.ndarray:
    """A gray image array (H, W) or (H, W, 1), uint8 or uint16 (all 16 bits used), as the
    model's (crop, crop, 1) uint8 input, through the same steps as a file."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise DecodeError(f"an image array must be (H, W) or (H, W, 1), got {arr.shape}")
    if arr.dtype == np.uint16:
        arr = sixteen_to_uint8(arr, 65535.0)
    elif arr.dtype != np.uint8:
        raise DecodeError(f"an image array must be uint8 or uint16, got {arr.dtype}")
    return resize_and_crop(Image.fromarray(arr, "L"), resolution, crop)
