"""What every release reader gives: one ``ImageRow`` per image in the canonical label space, and
every image it leaves out with the reason.

The readers (``chexpert_layout``, ``mimic_layout``, ``padchest_layout``) turn a download into a
``Scan``: rows to prepare, *exclusions* (images left out by design: a view not selected, no
labels), and *problems* (bad input: a missing file, an unreadable cell), which fail the
prepare unless ``--skip_bad``. Nothing is dropped silently. Light on purpose (no TFDS, no JAX).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from cxrjax.data import label_space
from cxrjax.data import labels as labels_lib
from cxrjax.data.nih_layout import PrepareError, Problem

DEFAULT_VIEWS = ("PA", "AP")  # frontal views; the readers name laterals "LATERAL"
# Why an image was left out (the keys of ``Scan.exclusion_counts``).
EXCLUDED_VIEW, MISSING_LABEL, BAD_FILE = "view", "missing label", "bad file"
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One image of a release: where it is, whose it is, its label states and metadata."""

    image_id: str  # unique in the release; records are written in this order
    path: str
    patient_id: str
    study_id: str
    states: np.ndarray  # (len(label_space.CLASSES),) int8, UNCERTAIN kept unless resolved
    sex: str  # "M", "F" or "" (missing)
    age: int  # years at the study; -1 when missing
    view: str  # "PA", "AP", "LATERAL", or the release's own name for other projections
    split: str = ""  # the release's own split (MIMIC's split file, CheXpert's csv), if any


@dataclasses.dataclass(frozen=True)
class Exclusion:
    """One image left out, the kind of reason (``EXCLUDED_VIEW``, ...) and the detail."""

    image: str
    kind: str
    reason: str


@dataclasses.dataclass
class Scan:
    """A download read: rows to prepare, images left out by design, and bad input."""

    rows: list[ImageRow]
    excluded: list[Exclusion]
    problems: list[Problem]
    unmapped_terms: dict[str, int] = dataclasses.field(default_factory=dict)

    def exclusion_counts(self) -> dict[str, int]:
        """How many images each kind of reason left out."""
        return dict(sorted(collections.Counter(e.kind for e in self.excluded).items()))


def canonical_sex(text: str) -> str:
    """``M``/``Male`` -> ``M``, ``F``/``Female`` -> ``F``; anything else (``Unknown``, ``O``,
    empty) is missing: ``""``."""
    return _SEX.get(text.strip().lower(), "")


def parse_age(text: str) -> int:
    """Whole years, or -1 when the cell is empty."""
    text = text.strip()
    return int(float(text)) if text else -1


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """The selected views, upper-case; an empty selection is an error."""
    views = tuple(v.strip().upper() for v in views if v.strip())
    if not views:
        raise ValueError("no views selected; e.g. PA,AP (frontal) or PA,AP,LATERAL")
    return views


def select(rows: Iterable[ImageRow], excluded: list[Exclusion], views: Sequence[str],
           uncertain: str | None) -> list[ImageRow]:
    """The rows of the selected views (the rest are added to ``excluded``), sorted by id,
    with the uncertainty policy applied when one is given (None keeps UNCERTAIN)."""
    wanted = {v.upper() for v in check_views(views)}
    kept = []
    for row in rows:
        if row.view.upper() not in wanted:
            excluded.append(Exclusion(row.image_id, EXCLUDED_VIEW,
                                      f"view {row.view!r} not selected" if row.view
                                      else "no view given"))
            continue
        if uncertain is not None:
            row = dataclasses.replace(row, states=label_space.resolve(row.states, uncertain))
        kept.append(row)
    return sorted(kept, key=lambda r: r.image_id)


def check_files(rows: list[ImageRow], problems: list[Problem]) -> list[ImageRow]:
    """The rows whose image file exists; the others become problems."""
    kept = []
    for row in rows:
        if os.path.isfile(row.path):
            kept.append(row)
        else:
            problems.append(Problem(row.image_id, f"image file not found: {row.path}"))
    return kept


def require_columns(header: Sequence[str], columns: Sequence[str], source: str) -> dict[str, int]:
    """Column name -> position; a missing column is a one-line ``PrepareError``."""
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise PrepareError(f"{source}: missing column(s) {missing}")
    return {c: header.index(c) for c in columns}


def table_cells(path: str, columns: Sequence[str], problems: list[Problem] | None = None
                ) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped cell}) of each non-empty row of a CSV, plain or .gz.

    A row too short for ``columns`` is a ``PrepareError``, or, given ``problems``, a
    ``Problem`` there and the row left out.
    """
    source = os.path.basename(path)
    with labels_lib.open_text(path) as f:
        reader = csv.reader(f)
        col = require_columns(next(reader, []), columns, source)
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) <= max(col.values()):
                short = f"{source} line {line_no}: too few fields ({len(fields)})"
                if problems is None:
                    raise PrepareError(short)
                problems.append(Problem(fields[0] or "?", short))
                continue
            yield line_no, {c: fields[col[c]].strip() for c in columns}


def find_file(manual_dir: str, names: Sequence[str], what: str) -> str:
    """The first of ``names`` (plain or ``.gz``) in ``manual_dir``; none is a one-line error."""
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(manual_dir, candidate)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"no {what} in {manual_dir} (looked for {', '.join(names)}, "
                            "plain or .gz)")


def fail_on_problems(scan: Scan, manual_dir: str, skip_bad: bool) -> Scan:
    """``scan`` unchanged, unless it has problems and not ``skip_bad`` (then PrepareError)."""
    if scan.problems and not skip_bad:
        raise PrepareError(f"{len(scan.problems):,} problem(s) in {manual_dir}; nothing was "
                           "written (pass --skip_bad to write the rest)", scan.problems)
    if not scan.rows:
        raise PrepareError(f"no usable images in {manual_dir} (left out: "  # each one named
                           f"{scan.exclusion_counts() or 'none'})", scan.problems)
    return scan
