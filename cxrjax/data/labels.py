"""The 14 ChestX-ray14 findings, the NIH label table, and the bounding boxes.

The real NIH tables ship inside the package (``resources/``), so a user never
needs the development folder: ``load_label_table()`` with no argument reads them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import os
from collections.abc import Iterable, Sequence
from importlib import resources

import numpy as np

CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
NUM_CLASSES = len(CLASSES)
NO_FINDING = "No Finding"
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

_DATA_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                       "Patient Age", "Patient Gender", "View Position")
_RESOURCES = resources.files("cxrjax.data") / "resources"


class LabelError(ValueError):
    """A label table or label string that cannot be trusted."""


def parse_finding_labels(text: str, row: int | str | None = None) -> np.ndarray:
    """``'Effusion|Mass'`` -> (14,) uint8 multi-hot in NIH order; ``'No Finding'`` -> zeros."""
    where = f" (row {row})" if row is not None else ""
    text = text.strip()
    if not text:
        raise LabelError(f"empty 'Finding Labels'{where}")
    out = np.zeros(NUM_CLASSES, np.uint8)
    names = [name.strip() for name in text.split("|")]
    if NO_FINDING in names:
        if len(names) > 1:
            raise LabelError(f"'No Finding' combined with findings {text!r}{where}")
        return out
    for name in names:
        if name not in CLASS_INDEX:
            raise LabelError(f"unknown label {name!r}{where}; expected one of {', '.join(CLASSES)}"
                             f" or {NO_FINDING!r}")
        out[CLASS_INDEX[name]] = 1
    return out


def format_finding_labels(multi_hot: Sequence[int]) -> str:
    """Inverse of ``parse_finding_labels``."""
    names = [c for c, v in zip(CLASSES, multi_hot, strict=True) if v]
    return "|".join(names) if names else NO_FINDING


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """The NIH ``Data_Entry`` table as arrays, one row per image."""

    image_ids: tuple[str, ...]
    labels: np.ndarray  # (N, 14) uint8
    patient_ids: np.ndarray  # (N,) int64
    follow_up: np.ndarray  # (N,) int64
    age: np.ndarray  # (N,) int64
    sex: tuple[str, ...]
    view: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.image_ids)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Image name -> row."""
        return {name: i for i, name in enumerate(self.image_ids)}

    def rows(self, image_ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``image_ids``; a name absent from the table is an error naming a few."""
        image_ids = list(image_ids)
        missing = [n for n in image_ids if n not in self.index]
        if missing:
            raise LabelError(f"{len(missing)} image name(s) not in the label table, e.g. "
                             f"{', '.join(missing[:5])}")
        return np.array([self.index[n] for n in image_ids], np.int64)

    def prevalence(self) -> np.ndarray:
        """Share of ALL images in the table that carry each class (the paper's W-AUC weights)."""
        return self.labels.mean(axis=0, dtype=np.float64)


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """A text file, gzip-compressed (.gz) or plain; a missing file names its path."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"label table not found: {path}")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def parse_data_entry(lines: Iterable[str], source: str = "Data_Entry") -> LabelTable:
    """Parses a ``Data_Entry_2017*.csv``; every bad row is reported, not skipped."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise LabelError(f"{source}: empty file")
    header = [h.strip() for h in header]
    missing = [c for c in _DATA_ENTRY_COLUMNS if c not in header]
    if missing:
        raise LabelError(f"{source}: missing column(s) {missing}; is this a Data_Entry_2017 CSV?")
    col = {c: header.index(c) for c in _DATA_ENTRY_COLUMNS}
    ids, labels, patients, follow, ages, sexes, views = [], [], [], [], [], [], []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        where = f"{source} line {line_no}"
        try:
            name = row[col["Image Index"]].strip()
            labels.append(parse_finding_labels(row[col["Finding Labels"]], row=where))
            patients.append(int(row[col["Patient ID"]]))
            follow.append(int(row[col["Follow-up #"]]))
            age = row[col["Patient Age"]].strip()
            ages.append(int(age.rstrip("Y")) if age else -1)  # the 2017 file wrote '058Y'
            sexes.append(row[col["Patient Gender"]].strip())
            views.append(row[col["View Position"]].strip())
        except IndexError:
            raise LabelError(
                f"{where}: expected at least {len(header)} fields, got {len(row)}") from None
        except ValueError as e:
            if isinstance(e, LabelError):
                raise
            raise LabelError(f"{where}: {e}") from None
        if name in seen:
            raise LabelError(f"{where}: duplicate image {name!r} (first on line {seen[name]})")
        seen[name] = line_no
        ids.append(name)
    if not ids:
        raise LabelError(f"{source}: no rows")
    return LabelTable(
        image_ids=tuple(ids), labels=np.stack(labels), patient_ids=np.array(patients, np.int64),
        follow_up=np.array(follow, np.int64), age=np.array(ages, np.int64), sex=tuple(sexes),
        view=tuple(views))


@functools.lru_cache(maxsize=4)
def load_label_table(path: str | os.PathLike | None = None) -> LabelTable:
    """The NIH label table; with no path, the copy shipped in the package (112,120 rows)."""
    if path is None:
        with resources.as_file(_RESOURCES / "Data_Entry_2017_v2020.csv.gz") as p:
            with open_text(p) as f:
                return parse_data_entry(f, "Data_Entry_2017_v2020.csv.gz")
    with open_text(path) as f:
        return parse_data_entry(f, os.fspath(path))


@dataclasses.dataclass(frozen=True)
class BoundingBox:
    image_id: str
    label: str
    x: float
    y: float
    w: float
    h: float


def load_bboxes(path: str | os.PathLike | None = None) -> list[BoundingBox]:
    """The 984 hand-drawn NIH boxes (1024-px coordinates); ``Infiltrate`` -> ``Infiltration``."""
    if path is None:
        with resources.as_file(_RESOURCES / "BBox_List_2017.csv.gz") as p, open_text(p) as f:
            return _parse_bboxes(f)
    with open_text(path) as f:
        return _parse_bboxes(f)


def _parse_bboxes(lines: Iterable[str]) -> list[BoundingBox]:
    reader = csv.reader(lines)
    next(reader, None)
    boxes = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        name = "Infiltration" if row[1] == "Infiltrate" else row[1]
        if name not in CLASS_INDEX:
            raise LabelError(f"BBox_List line {line_no}: unknown label {row[1]!r}")
        x, y, w, h = (float(v) for v in row[2:6])
        boxes.append(BoundingBox(row[0], name, x, y, w, h))
    return boxes


def resource_path(name: str) -> str:
    """Filesystem path of a shipped resource (installed packages unpack to real files)."""
    return os.fspath(_RESOURCES / name)
