"""The PadChest download as users have it: one label CSV and 16-bit PNGs in folders ``0``…``54``.

The CSV (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``, plain or .gz) has one row
per image: ``ImageID`` (the PNG's name), ``ImageDir`` (its folder), ``PatientID``, ``StudyID``,
``StudyDate_DICOM`` (YYYYMMDD), ``PatientBirth`` (a year: age = study year - birth year),
``PatientSex_DICOM``, ``Projection`` (``PA``, ``AP``, ``AP_horizontal``, ``L``, ``COSTAL``, ...)
and ``Labels``, a Python-style list of lower-case terms mapped by ``label_space``. A row without
labels is left out ("missing label"); truncated PNGs are found when decoded (a "bad file").
"""

from __future__ import annotations

import ast
import collections
import functools
import glob
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cxrjax.data import label_space, nih_layout
from cxrjax.data import release_rows as rr
from cxrjax.data.nih_layout import PrepareError, Problem

CSV_GLOB = "PADCHEST_chest_x_ray_images_labels_*.csv"
COLUMNS = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
           "PatientSex_DICOM", "Projection", "Labels")
_VIEWS = {"L": "LATERAL"}  # PadChest's lateral; other projections as written
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def find_csv(manual_dir: str) -> str:
    """The one PadChest label CSV in ``manual_dir``."""
    found = sorted(glob.glob(os.path.join(manual_dir, CSV_GLOB)) +
                   glob.glob(os.path.join(manual_dir, CSV_GLOB + ".gz")))
    if not found:
        raise FileNotFoundError(f"no {CSV_GLOB} in {manual_dir}; download PadChest from BIMCV")
    if len(found) > 1:
        raise PrepareError(f"several PadChest label tables in {manual_dir}: {found}; keep one")
    return found[0]


def parse_labels(text: str) -> list[str] | None:
    """``"['pleural effusion', 'cardiomegaly']"`` -> the terms; None for an empty cell or list.

    Raises ``ValueError`` for a cell that is not a list of strings.
    """
    text = text.strip()
    if not text or text.lower() == "nan":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"Labels {text[:60]!r} is not a Python-style list") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"Labels {text[:60]!r} is not a list of strings")
    terms = [t.strip().lower() for t in value if t.strip()]
    return terms or None


def age_at_study(study_date: str, birth: str) -> int:
    """Study year minus birth year; -1 when either is missing."""
    study_date, birth = study_date.strip(), birth.strip()
    if len(study_date) < 4 or not study_date[:4].isdigit() or not birth or birth == "nan":
        return -1
    return int(study_date[:4]) - int(float(birth))


def scan(manual_dir: str, views: Sequence[str] = rr.DEFAULT_VIEWS,
         uncertain: str | None = None, check_files: bool = True) -> rr.Scan:
    """The download read: rows of the selected views, exclusions and problems."""
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
    path = find_csv(manual_dir)
    source = os.path.basename(path)
    rows, excluded, problems = [], [], []
    unmapped: collections.Counter[str] = collections.Counter()
    seen: dict[str, int] = {}
    for line_no, cell in rr.table_cells(path, COLUMNS, problems):
        where = f"{source} line {line_no}"
        image = cell["ImageID"]
        if image in seen:
            problems.append(Problem(image, f"{where}: duplicate of line {seen[image]}"))
            continue
        seen[image] = line_no
        try:
            terms = parse_labels(cell["Labels"])
            age = age_at_study(cell["StudyDate_DICOM"], cell["PatientBirth"])
        except ValueError as e:
            problems.append(Problem(image, f"{where}: {e}"))
            continue
        if terms is None:
            excluded.append(rr.Exclusion(image, rr.MISSING_LABEL, f"{where}: no labels"))
            continue
        states, unknown = label_space.padchest_states(terms)
        unmapped.update(unknown)
        projection = cell["Projection"].upper()
        rows.append(rr.ImageRow(
            image_id=image, path=os.path.join(manual_dir, cell["ImageDir"], image),
            patient_id=cell["PatientID"], study_id=cell["StudyID"], states=states,
            sex=rr.canonical_sex(cell["PatientSex_DICOM"]), age=age,
            view=_VIEWS.get(projection, cell["Projection"])))
    rows = rr.select(rows, excluded, views, uncertain)
    if check_files:
        rows = rr.check_files(rows, problems)
    return rr.Scan(rows, excluded, problems, dict(sorted(unmapped.items())))


def decode_image(path: str, resolution: int) -> tuple[np.ndarray, str]:
    """One PNG -> (resolution, resolution) uint8 gray, and its source mode.

    16-bit images are stretched from their own minimum..maximum onto 0..255: PadChest's PNGs
    hold 12-bit or narrower data, which a fixed 65535 -> 255 map would crush into a few dozen
    gray levels. Other modes decode as NIH's do. Truncated files raise ``OSError``.
    """
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode not in _SIXTEEN_BIT:
            return nih_layout.decode_image(path, resolution)
        arr = np.asarray(img, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    gray = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))
    if gray.size != (resolution, resolution):
        gray = gray.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8), mode


decode_task = functools.partial(nih_layout.decode_task, decode=decode_image)
"""Pool worker: ``(i, path, res)`` -> ``(i, image or None, mode or error text)``."""
