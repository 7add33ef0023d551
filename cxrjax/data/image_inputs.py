"""Images to score, read exactly as the prepared dataset was: PNG, JPEG or DICOM, local or gs://.

``expand_inputs`` turns arguments (files, folders) into files; ``load_image`` turns one file into
the model's input (the ``prepare`` record: gray uint8 at ``data.resolution``, centre-cropped to
``data.crop``), the gray image at its own size, the DICOM tags carried into the predictions
file and the image's warnings. A file that cannot be scored is an ImageError whose message is
one line; nothing is decoded before the header says the image is of a sane size.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrjax.data import dicom, nih_layout
from cxrjax.data.crop import centre_crop
from cxrjax.io import fileio

MAX_PIXELS = 10_000 * 10_000  # ~40x a 1024-px NIH image; larger is refused before decoding
MAX_REMOTE_BYTES = 1 << 30  # a gs:// image is read into memory whole: 1 GiB at most
FORMATS = ("PNG", "JPEG")
TAGS = ("view_position", "patient_sex", "patient_age")  # DICOM tags carried per image
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEAD = 132  # enough for a PNG's IHDR and a DICOM's preamble + "DICM"


class ImageError(ValueError):
    """An input file that cannot be scored; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """``image``: the model input (crop, crop, 1) uint8; ``gray``: the image at its own size;
    ``tags``: TAGS' values ('' when the file has none: PNG, JPEG); ``warnings``: one line each."""

    image: np.ndarray
    gray: np.ndarray
    tags: dict[str, str]
    warnings: tuple[str, ...] = ()


def _is_file(path: str) -> bool:
    return fileio.exists(path) and not fileio.isdir(path) if fileio.is_remote(path) \
        else os.path.isfile(path)


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(files to score, [(argument, error)], notes): a directory (local or gs://) means its
    files, sorted; its subfolders are named in a note, not searched."""
    files, errors, notes = [], [], []
    for arg in args:
        try:
            if fileio.isdir(arg):
                entries = fileio.listdir(arg)
                inside = [fileio.join(arg, e) for e in entries if _is_file(fileio.join(arg, e))]
                subdirs = [e for e in entries if fileio.isdir(fileio.join(arg, e))]
                if subdirs:
                    notes.append(f"{arg}: {len(subdirs)} subfolder(s) not searched (give them "
                                 f"as arguments): {', '.join(subdirs[:5])}")
                if not inside:
                    errors.append((arg, "directory holds no files"))
                files += inside
            elif _is_file(arg):
                files.append(arg)
            elif fileio.exists(arg):
                errors.append((arg, "not a regular file"))
            else:
                errors.append((arg, "no such file or directory"))
        except (OSError, ValueError) as e:  # an unreachable bucket, a malformed gs:// path
            errors.append((arg, f"cannot list it: {e}"))
    return files, errors, notes


def _source(path: str) -> str | bytes:
    """A local path as it is; a gs:// object's bytes (after a size check)."""
    if not fileio.is_remote(path):
        return path
    size = fileio.size(path)
    if size > MAX_REMOTE_BYTES:
        raise ImageError(f"{size:,} bytes, over the {MAX_REMOTE_BYTES:,}-byte limit for a "
                         "gs:// image")
    return fileio.read_bytes(path)


def _reader(source: str | bytes) -> str | io.BytesIO:
    """What PIL and pydicom open: the path, or a fresh file object over the bytes."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _head(source: str | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:_HEAD]
    with open(source, "rb") as f:
        return f.read(_HEAD)


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"image is {width}x{height} px, over the {MAX_PIXELS:,}-pixel limit "
                         "(a decompression bomb?); refused before decoding")
    if width < 1 or height < 1:
        raise ImageError(f"image header says {width}x{height} px")


def check_header(source: str | bytes) -> tuple[str, int, int]:
    """(format, width, height) of a PNG/JPEG (a path or its bytes) from its header alone;
    ImageError if it is no usable PNG/JPEG or is larger than MAX_PIXELS (nothing decoded)."""
    size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    head = _head(source)
    if head.startswith(_PNG_SIGNATURE):  # read IHDR ourselves: exact size, whatever PIL allows
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageError("truncated or corrupt PNG header")
        _check_size(*struct.unpack(">II", head[16:24]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_reader(source), formats=FORMATS) as img:
                fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused before decoding: {e}") from None
    except UnidentifiedImageError:
        if head.startswith(_PNG_SIGNATURE):
            raise ImageError("truncated or corrupt PNG (its chunks cannot be read)") from None
        raise ImageError("not a PNG, JPEG or DICOM image") from None
    except (OSError, ValueError, SyntaxError, struct.error) as e:
        raise ImageError(f"unreadable {type(e).__name__}: {e}") from None
    _check_size(width, height)
    return fmt, width, height


def _gray(source: str | bytes) -> np.ndarray:
    """The image as uint8 gray at its own size, converted as ``nih_layout.decode_image`` does."""
    with Image.open(_reader(source), formats=FORMATS) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            return np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)


def _load_png_or_jpeg(source: str | bytes, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    check_header(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            record, _ = nih_layout.decode_image(_reader(source), resolution)
            return record, _gray(source)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e) or type(e).__name__
        raise ImageError(f"cannot decode (truncated or corrupt?): {reason}") from None


def load_image(path: str, resolution: int, crop: int) -> LoadedImage:
    """One file (PNG, JPEG or DICOM; local or gs://) as the model input, its gray image, its
    DICOM tags and warnings. The input is the prepared dataset's record (gray, antialiased
    resize to ``resolution``) centre-cropped like the eval pipeline. ImageError if unusable."""
    try:  # gone since it was listed, unreadable (permissions), an unreachable bucket
        source = _source(path)
        head = _head(source)
    except OSError as e:
        raise ImageError(f"cannot read it: {e}") from None
    tags, notes = dict.fromkeys(TAGS, ""), ()
    if dicom.is_dicom(head):
        try:
            read = dicom.read_dicom(_reader(source), max_pixels=MAX_PIXELS)
        except dicom.DicomError as e:
            raise ImageError(str(e)) from None
        gray, record = read.pixels, dicom.resized(read.pixels, resolution)
        tags = {"view_position": read.view_position, "patient_sex": read.patient_sex,
                "patient_age": read.patient_age}
        notes = read.warnings
    else:
        record, gray = _load_png_or_jpeg(source, resolution)
    image = centre_crop(record, crop)
    return LoadedImage(image, gray, tags, notes)
