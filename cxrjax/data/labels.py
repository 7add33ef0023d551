"""The 14 ChestX-ray14 findings, the NIH label table, and the boxes-file format.

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
import zlib
from collections.abc import Iterable, Mapping, Sequence
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


class _NamedText(io.TextIOWrapper):
    """A text stream whose undecodable bytes or broken compression are a one-line LabelError
    naming the file (a spreadsheet's Latin-1 export, a cut download), not a traceback."""

    def __init__(self, binary: io.BufferedIOBase, encoding: str, path: str):
        super().__init__(binary, encoding=encoding, newline="")
        self.path = path

    def _named(self, read, *args):
        try:
            return read(*args)
        except UnicodeDecodeError as e:
            raise LabelError(f"{self.path}: not {e.encoding.upper()} text (byte "
                             f"0x{e.object[e.start]:02x} cannot be decoded; a Latin-1 or "
                             "Windows export?): save it as UTF-8") from None
        except (EOFError, OSError, zlib.error) as e:  # gzip's: cut short, bad CRC, not gzip
            raise LabelError(f"{self.path}: truncated or corrupt file ({type(e).__name__}: "
                             f"{e})") from None

    def __next__(self) -> str:
        return self._named(super().__next__)

    def readline(self, size: int = -1) -> str:
        return self._named(super().readline, size)

    def read(self, size: int | None = -1) -> str:
        return self._named(super().read, size)


def open_text(path: str | os.PathLike, what: str = "file") -> io.TextIOBase:
    """A text file, gzip-compressed (.gz) or plain; a missing one is named: '<what> not found'.

    UTF-8 with or without a byte-order mark, or UTF-16 with one (how spreadsheets save "CSV
    UTF-8" and "Unicode text"); other bytes, or a truncated .gz, are a LabelError naming it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    binary = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    try:
        head = binary.peek(4)[:4]
    except (EOFError, OSError, zlib.error) as e:
        binary.close()
        raise LabelError(f"{path}: truncated or corrupt file ({type(e).__name__}: {e})") \
            from None
    encoding = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    return _NamedText(binary, encoding, path)


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
    name_at, labels_at, follow_at, patient_at, age_at, sex_at, view_at = (
        header.index(c) for c in _DATA_ENTRY_COLUMNS)  # in _DATA_ENTRY_COLUMNS' order
    ids, labels, patients, follow, ages, sexes, views = [], [], [], [], [], [], []
    seen: dict[str, int] = {}
    parsed: dict[str, np.ndarray] = {}  # NIH's 112,120 rows hold 836 distinct label strings
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            name = row[name_at].strip()
            text = row[labels_at]
            if text not in parsed:
                parsed[text] = parse_finding_labels(text, row=f"{source} line {line_no}")
            labels.append(parsed[text])
            patients.append(int(row[patient_at]))
            follow.append(int(row[follow_at]))
            age = row[age_at].strip()
            ages.append(int(age.rstrip("Y")) if age else -1)  # the 2017 file wrote '058Y'
            sexes.append(row[sex_at].strip())
            views.append(row[view_at].strip())
        except IndexError:
            raise LabelError(f"{source} line {line_no}: expected at least {len(header)} "
                             f"fields, got {len(row)}") from None
        except ValueError as e:
            if isinstance(e, LabelError):
                raise
            raise LabelError(f"{source} line {line_no}: {e}") from None
        if name in seen:
            raise LabelError(f"{source} line {line_no}: duplicate image {name!r} (first on line "
                             f"{seen[name]})")
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
    """The NIH label table; with no path, the copy shipped in the package (112,120 rows), whose
    arrays are read-only: the cache shares it with every caller."""
    if path is None:
        with resources.as_file(_RESOURCES / "Data_Entry_2017_v2020.csv.gz") as p:
            with open_text(p) as f:  # read whole: csv then iterates in C, not line by line
                table = parse_data_entry(io.StringIO(f.read(), newline=""),
                                         "Data_Entry_2017_v2020.csv.gz")
        for array in (table.labels, table.patient_ids, table.follow_up, table.age):
            array.setflags(write=False)
        return table
    with open_text(path, "label table") as f:
        return parse_data_entry(io.StringIO(f.read(), newline=""), os.fspath(path))


# ------------------------------------------------------------------ boxes ---
# NIH's BBox_List_2017.csv: header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (unquoted,
# so "Bbox [x,y,w,h]" spans four fields), rows ``name,label,x,y,w,h`` in the pixels of NIH's
# 1024² PNGs (x, y = top-left corner). NIH spells Infiltration ``Infiltrate``; both are read,
# and the NIH spelling is written.

BOX_CLASSES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration",
                                "Mass", "Nodule", "Pneumonia", "Pneumothorax")  # NIH's 8
BOX_FRAME = (1024, 1024)  # (width, height) of the frame NIH's boxes are drawn in
BBOX_LIST_NAME = "BBox_List_2017.csv"
_BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"
_NIH_SPELLING = {"Infiltration": "Infiltrate"}
_READ_SPELLING = {"Infiltrate": "Infiltration"}


class BoxError(LabelError):
    """A boxes file or box array that cannot be used; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Boxes:
    """K boxes as columns, all in one frame (the caller's names say which).

    ``xywh`` is (K, 4) float64: top-left corner, width, height in continuous pixel-edge
    coordinates; ``labels`` are indices into ``CLASSES``; ``scores`` the peak normalised heat
    of a predicted box (NaN for ground truth).
    """

    image_ids: np.ndarray  # (K,) str
    labels: np.ndarray  # (K,) int64
    xywh: np.ndarray  # (K, 4) float64
    scores: np.ndarray  # (K,) float64

    def __post_init__(self):
        k = len(self.image_ids)
        if self.labels.shape != (k,) or self.xywh.shape != (k, 4) or self.scores.shape != (k,):
            raise BoxError(f"box columns disagree: {k} image ids, labels {self.labels.shape}, "
                           f"xywh {self.xywh.shape}, scores {self.scores.shape}")

    @classmethod
    def create(cls, image_ids: Sequence[str], labels: Sequence[int | str], xywh,
               scores=None) -> Boxes:
        """Columns from lists; ``labels`` may be class names (NIH spellings too) or indices."""
        names = np.asarray(list(image_ids), dtype=str).reshape(-1)
        try:
            labels = [CLASS_INDEX[_READ_SPELLING.get(v, v)] if isinstance(v, str) else int(v)
                      for v in labels]
        except KeyError as e:
            raise BoxError(f"unknown class {e.args[0]!r}; expected one of {', '.join(CLASSES)}"
                           ) from None
        if any(not 0 <= v < NUM_CLASSES for v in labels):
            raise BoxError(f"class indices must be in [0, {NUM_CLASSES}), got {labels}")
        xywh = np.asarray(xywh, np.float64).reshape(-1, 4)
        scores = np.full(len(names), np.nan) if scores is None else np.asarray(scores, float)
        return cls(names, np.asarray(labels, np.int64).reshape(-1), xywh, scores)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"Boxes({len(self)} boxes on {len(np.unique(self.image_ids))} images)"

    def select(self, keep: np.ndarray) -> Boxes:
        """The boxes where ``keep`` (a bool mask or index array) says so."""
        return Boxes(self.image_ids[keep], self.labels[keep], self.xywh[keep], self.scores[keep])


def read_boxes(path: str | os.PathLike, *,
               image_sizes: Mapping[str, tuple[float, float]] | None = None,
               default_size: tuple[float, float] = BOX_FRAME) -> Boxes:
    """Reads a BBox_List_2017-format CSV (plain or .gz); every bad header, row, class or
    out-of-image box is a one-line ``BoxError``.

    ``image_sizes`` maps an image name to its (width, height); other images are taken to be
    ``default_size`` (NIH's 1024²). A box must lie inside its image.
    """
    source = os.path.basename(os.fspath(path))
    with open_text(path) as f:
        reader = csv.reader(f)
        # NIH's header is unquoted, so its "Bbox [x,y,w,h]" spans four fields; compare text.
        header = ",".join(h.strip() for h in next(reader, [])).rstrip(",")
        if header != _BOX_HEADER:
            raise BoxError(f"{source}: header {header!r} is not BBox_List_2017's {_BOX_HEADER!r}")
        names, labels, xywh = [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(v.strip() for v in row):
                continue
            where = f"{source} line {line_no}"
            if len(row) < 6 or any(v.strip() for v in row[6:]):
                raise BoxError(f"{where}: expected 6 fields (name,label,x,y,w,h), got {len(row)}")
            name, label = row[0].strip(), row[1].strip()
            label = _READ_SPELLING.get(label, label)
            if label not in CLASS_INDEX:
                raise BoxError(f"{where}: unknown class {row[1].strip()!r}; expected one of "
                               f"{', '.join(CLASSES)} (or NIH's 'Infiltrate')")
            try:
                box = [float(v) for v in row[2:6]]
            except ValueError:
                raise BoxError(f"{where}: x,y,w,h must be numbers, got {row[2:6]}") from None
            width, height = (image_sizes or {}).get(name, default_size)
            _check_inside(box, width, height, f"{where} ({name})")
            names.append(name)
            labels.append(CLASS_INDEX[label])
            xywh.append(box)
    if not names:
        raise BoxError(f"{source}: no boxes")
    return Boxes.create(names, labels, np.array(xywh))


def _check_inside(box: Sequence[float], width: float, height: float, where: str) -> None:
    x, y, w, h = box
    if not all(np.isfinite(box)) or w <= 0 or h <= 0:
        raise BoxError(f"{where}: box {box} needs finite values and positive width and height")
    tol = 1e-6 * max(width, height)
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise BoxError(f"{where}: box x={x:g} y={y:g} w={w:g} h={h:g} lies outside the "
                       f"{width:g}x{height:g} image")


def write_boxes(path: str | os.PathLike, boxes: Boxes) -> None:
    """Writes ``boxes`` (original frame) as a BBox_List_2017 CSV, NIH spellings included."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(f"{_BOX_HEADER},,,\n")  # byte for byte NIH's header line
        writer = csv.writer(f, lineterminator="\n")
        for name, label, box in zip(boxes.image_ids, boxes.labels, boxes.xywh, strict=True):
            cls = CLASSES[label]
            writer.writerow([name, _NIH_SPELLING.get(cls, cls), *(repr(float(v)) for v in box)])


def load_bboxes() -> Boxes:
    """The 984 hand-drawn NIH boxes shipped in the package (1024² frame)."""
    with resources.as_file(_RESOURCES / "BBox_List_2017.csv.gz") as p:
        return read_boxes(p)


def resource_path(name: str) -> str:
    """Filesystem path of a shipped resource (installed packages unpack to real files)."""
    return os.fspath(_RESOURCES / name)
