"""DICOM chest X-rays as the uint8 gray images the rest of cxrjax reads, with their tags.

``read_dicom`` decodes one single-frame grayscale file (native or compressed pixel data; JPEG
through Pillow, pydicom's own decoder plugin) and maps it to 0..255 as a viewer would show it:
the modality transform (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT), then the VOI
transform (a VOI LUT, else ``WindowCenter``/``WindowWidth``, else the whole range the stored
bits can hold: ``BitsStored`` 12 means 0..4095 becomes 0..255, as a 16-bit PNG's 0..65535
does), then ``MONOCHROME1``'s inversion (0 = white there). An 8-bit MONOCHROME2 file without
those tags keeps its values exactly, as the same pixels in a PNG do. Multi-frame files and
colour images are refused; a modality other than CR/DX, a view that is not frontal and a patient
under 18 are warnings the caller shows beside the prediction. pydicom is an optional extra
(``pip install "cxrjax[dicom]"``); without it a DICOM file is a one-line error.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

RADIOGRAPHY = ("CR", "DX")  # computed and digital radiography: what chest X-ray releases hold
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL")
ADULT_AGE = 18
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


class DicomError(ValueError):
    """A DICOM file that cannot be read as one chest X-ray; the message is one line."""


@dataclasses.dataclass(frozen=True)
class DicomImage:
    """``pixels``: (rows, columns) uint8 gray, 0 = black; the tags as written ('' if absent);
    ``warnings``: one line each, why a prediction on this image deserves less trust."""

    pixels: np.ndarray
    view_position: str
    patient_sex: str
    patient_age: str
    modality: str
    warnings: tuple[str, ...]


def is_dicom(head: bytes) -> bool:
    """Whether a file's first 132 bytes are a DICOM file's: a 128-byte preamble, then DICM."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def age_in_years(age: str) -> float | None:
    """A ``PatientAge`` (``062Y``, ``011M``, ``003W``, ``010D``, or bare years ``62``) in
    years; None when it cannot be read."""
    match = _AGE.match(age or "")
    if match is None:
        return None
    return int(match.group(1)) * _YEARS_PER_UNIT[match.group(2).upper()]


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _check_layout(ds: Any, max_pixels: int | None) -> str:
    """Refuses multi-frame, colour and oversized images before decoding; returns the
    photometric interpretation."""
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): one image per file is read")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    gray = photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1
    rgb = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT") and samples == 3
    if not (gray or rgb):
        raise DicomError(f"a {photometric or 'untagged'} DICOM with {samples} sample(s) per "
                         "pixel: only grayscale X-rays are read")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or columns < 1:
        raise DicomError(f"DICOM header says {columns}x{rows} px")
    if max_pixels is not None and rows * columns > max_pixels:
        raise DicomError(f"image is {columns}x{rows} px, over the {max_pixels:,}-pixel limit; "
                         "refused before decoding")
    return photometric


def _stored_range(ds: Any) -> np.ndarray:
    """The lowest and highest value ``BitsStored`` bits can hold (signed or not)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], np.float64)
    return np.array([0, 2 ** bits - 1], np.float64)


def _first(value: Any) -> float:
    """A tag's first value as a float (a window tag may hold several alternative windows)."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str)
                 else value)


def _window(values: np.ndarray, ds: Any) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: the first window of ``WindowCenter``/``WindowWidth`` to [0, 1],
    by its ``VOILUTFunction`` (LINEAR, LINEAR_EXACT or SIGMOID)."""
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = _text(ds, "VOILUTFunction").upper() or "LINEAR"
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / max(width, 1e-6) + 0.5, 0.0, 1.0)
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def _to_unit_range(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> [0, 1] as displayed: modality transform, then VOI (LUT, window, or the
    whole stored range), before any MONOCHROME1 inversion."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi
    except ImportError:  # pydicom 2.x keeps them here
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi

    values = apply_modality_lut(stored, ds).astype(np.float64)
    lo, hi = np.sort(apply_modality_lut(_stored_range(ds), ds).astype(np.float64))
    if "VOILUTSequence" in ds:
        # A LUT is indexed by whole values: the modality transform's output, rounded.
        domain = np.arange(np.floor(lo), np.ceil(hi) + 1).astype(np.int64)
        shown = apply_voi(domain, ds).astype(np.float64)
        low, high = shown.min(), shown.max()
        out = apply_voi(np.round(values).astype(np.int64), ds).astype(np.float64)
        return (out - low) / (high - low) if high > low else np.zeros_like(out)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return _window(values, ds)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)


def _gray_from_colour(rgb: np.ndarray, photometric: str) -> np.ndarray:
    """A colour image whose channels agree (a gray picture stored as RGB) as uint8 gray;
    DicomError for a real colour image."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise DicomError(f"a {rgb.dtype} {photometric} DICOM: only grayscale X-rays are read")
    spread = int((rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)).max())
    if spread > 2:  # beyond a lossy codec's rounding: the channels carry colour
        raise DicomError(f"a colour ({photometric}) DICOM: only grayscale X-rays are read")
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"), np.uint8)


def _warnings(modality: str, view: str, age: str) -> tuple[str, ...]:
    out = []
    if modality and modality.upper() not in RADIOGRAPHY:
        out.append(f"modality {modality}, not a radiograph (CR or DX)")
    if view.upper() in LATERAL_VIEWS:
        out.append(f"lateral view ({view}): the model was trained on frontal views")
    elif view and view.upper() not in FRONTAL_VIEWS:
        out.append(f"view {view}, not frontal (PA or AP)")
    years = age_in_years(age)
    if years is not None and years < ADULT_AGE:
        out.append(f"patient aged {age}, under {ADULT_AGE}: the training data are mostly adults")
    return tuple(out)


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def read_dicom(source: str | BinaryIO, max_pixels: int | None = None) -> DicomImage:
    """One DICOM file (a path or a binary file object) as a ``DicomImage``; a DicomError (one
    line) for a file that is unreadable, not one grayscale frame, over ``max_pixels`` pixels, or
    whose pixel data no installed decoder reads."""
    try:
        import pydicom
    except ImportError:
        raise DicomError("a DICOM file; reading it needs pydicom: pip install "
                         "'cxrjax[dicom]'") from None
    # pydicom's warnings and log lines about a broken file stay quiet: the one error says it.
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read_quietly(pydicom, source, max_pixels)
    finally:
        pydicom_log.setLevel(level)


def _read_quietly(pydicom: Any, source: str | BinaryIO, max_pixels: int | None) -> DicomImage:
    try:
        ds = pydicom.dcmread(source)
    except Exception as e:  # noqa: BLE001 - a broken file raises many kinds: one line each
        raise DicomError(f"unreadable DICOM ({_first_line(e)})") from None
    try:
        return _decode(ds, max_pixels)
    except DicomError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed tag values (a fuzzed header)
        raise DicomError(f"unreadable DICOM header or pixel data ({_first_line(e)})") from None


def _decode(ds: Any, max_pixels: int | None) -> DicomImage:
    """A read dataset's checks, pixels as displayed, tags and warnings."""
    if "PixelData" not in ds:
        raise DicomError("a DICOM file without pixel data (or cut short before it)")
    photometric = _check_layout(ds, max_pixels)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - a missing decoder, truncated data, ...
        name = getattr(syntax, "name", None) or "its"
        raise DicomError(f"cannot decode the {name} pixel data ({_first_line(e)})") from None
    if photometric.startswith("MONOCHROME"):
        unit = _to_unit_range(np.asarray(stored), ds)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
        pixels = np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        pixels = _gray_from_colour(stored, photometric)
    modality, view = _text(ds, "Modality"), _text(ds, "ViewPosition")
    age = _text(ds, "PatientAge")
    return DicomImage(pixels, view, _text(ds, "PatientSex"), age, modality,
                      _warnings(modality, view, age))


def resized(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """A uint8 gray image resized to (resolution, resolution) as ``prepare`` resizes every
    release's images (PIL's antialiased bilinear, ``nih_layout.decode_image``)."""
    img = Image.fromarray(np.asarray(pixels, np.uint8), "L")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)
