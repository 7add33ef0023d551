"""Per-image patient metadata (sex, age, view position, follow-up number) and the subgroups
they define, for the subgroup report and the metadata-only baseline.

A run's metadata come from its data folder's label table (the NIH download's
``Data_Entry_2017*.csv``, the synthetic set's own, else the NIH table shipped in the package);
a predictions file's from its ``sex``, ``age`` and ``view`` columns. A field the source lacks
is ``None``, with the reason in ``Metadata.missing``.

Groups: sex as written (``F`` female, ``M`` male); age bands 0-20, 20-40, 40-60, 60-80, 80+
(lower bound included, upper excluded; an age outside [0, 120] is a data error and belongs
to no band); view PA, AP, and every other value together as ``other``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.data import labels as labels_lib

ATTRIBUTES = ("sex", "age", "view")  # the fields a subgroup is defined by, in report order
AGE_BANDS: tuple[tuple[int, int | None], ...] = ((0, 20), (20, 40), (40, 60), (60, 80),
                                                 (80, None))
MAX_AGE = 120  # a recorded age above this (NIH has a few, e.g. 414) is treated as missing
SEX_NAMES = {"F": "female", "M": "male"}
VIEWS = ("PA", "AP")  # any other view position is grouped as "other"


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Aligned with a list of image ids: each field (N,) or None when the source lacks it."""

    sex: np.ndarray | None  # str: "M", "F" (or another code), "" unknown
    age: np.ndarray | None  # float years, NaN unknown
    view: np.ndarray | None  # str: "PA", "AP", ..., "" unknown
    follow_up: np.ndarray | None = None  # int; NIH's "Follow-up #"
    missing: Mapping[str, str] = dataclasses.field(default_factory=dict)  # field -> why


def _known(values: np.ndarray | None, field: str, source: str,
           missing: dict[str, str]) -> np.ndarray | None:
    """``values`` unless none is known (then None, with the reason)."""
    if values is None:
        missing[field] = f"{source} has no {field} field"
        return None
    known = ~np.isnan(values) if values.dtype.kind == "f" else values != ""
    if not known.any():
        missing[field] = f"{source} records no {field} for these images"
        return None
    return values


def _ages(values: np.ndarray) -> np.ndarray:
    ages = values.astype(np.float64)
    ages[(ages < 0) | (ages > MAX_AGE)] = np.nan
    return ages


def from_table(table: labels_lib.LabelTable, image_ids: Sequence[str],
               source: str = "the label table") -> Metadata:
    """The metadata of ``image_ids`` (all must be in ``table``: LabelError otherwise)."""
    rows = table.rows(image_ids)
    missing: dict[str, str] = {}
    return Metadata(
        sex=_known(np.asarray(table.sex, str)[rows], "sex", source, missing),
        age=_known(_ages(table.age[rows]), "age", source, missing),
        view=_known(np.asarray(table.view, str)[rows], "view", source, missing),
        follow_up=np.asarray(table.follow_up[rows], np.int64), missing=missing)


def run_table(config: Any, workdir: str) -> labels_lib.LabelTable | None:
    """The label table a run's splits were drawn from (None for a source without one:
    chestmnist): the data folder's ``Data_Entry_2017*.csv``, else the shipped NIH table."""
    if config.data.source not in ("nih", "synthetic"):
        return None
    from cxrjax.data import nih_layout, pipeline  # the data stack: only for a run's own data

    manual_dir = pipeline.ensure_prepared(config.data, workdir).manual_dir
    try:
        return labels_lib.load_label_table(nih_layout.find_data_entry(manual_dir)
                                           if manual_dir else None)
    except FileNotFoundError:
        return labels_lib.load_label_table()


def run_metadata(config: Any, workdir: str, image_ids: Sequence[str]) -> Metadata:
    """THE metadata of a run's images (``image_ids`` of one of its splits), from its data
    folder's table; a source without one (chestmnist) gives every field None, with why."""
    table = run_table(config, workdir)
    if table is None:
        why = f"data.source={config.data.source!r} carries no patient metadata"
        return Metadata(None, None, None, None, {f: why for f in (*ATTRIBUTES, "follow_up")})
    return from_table(table, image_ids, f"the {config.data.source} label table")


def from_columns(columns: Mapping[str, Sequence[str]], n: int,
                 source: str = "the predictions file") -> Metadata:
    """Metadata from text columns (``sex``, ``age``, ``view``; absent ones are None)."""
    missing: dict[str, str] = {}

    def column(name: str) -> np.ndarray | None:
        if name not in columns:
            return None
        values = np.asarray([str(v).strip() for v in columns[name]], str)
        if len(values) != n:
            raise ValueError(f"{source}: {len(values)} {name} values for {n} images")
        return values

    age = column("age")
    if age is not None:
        try:
            age = _ages(np.asarray([float(a.rstrip("Y")) if a else math.nan for a in age]))
        except ValueError:
            raise ValueError(f"{source}: the age column holds a non-numeric value") from None
    return Metadata(sex=_known(column("sex"), "sex", source, missing),
                    age=_known(age, "age", source, missing),
                    view=_known(column("view"), "view", source, missing), missing=missing)


def columns(metadata: Metadata) -> dict[str, list[str]]:
    """The predictions file's metadata columns (``sex``, ``age``, ``view``) of the fields
    present; an unknown value is an empty cell."""
    out: dict[str, list[str]] = {}
    for name in ATTRIBUTES:
        values = getattr(metadata, name)
        if values is None:
            continue
        if name == "age":
            out[name] = ["" if np.isnan(a) else f"{a:g}" for a in values]
        else:
            out[name] = [str(v) for v in values]
    return out


def run_columns(config: Any, workdir: str, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """A run's predictions-file metadata columns (``columns`` of ``run_metadata``); {} when
    its data carry none or its label table cannot be read (the file is then written as ever)."""
    try:
        return columns(run_metadata(config, workdir, image_ids))
    except (FileNotFoundError, ValueError):
        return {}


def band_name(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high}"


def group_masks(metadata: Metadata) -> dict[str, dict[str, np.ndarray]]:
    """attribute -> group name -> (N,) bool, for the attributes the metadata carry; a group
    with no image is left out, an image with an unknown value is in no group."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if metadata.sex is not None:
        codes = [c for c in sorted(set(metadata.sex.tolist())) if c]
        out["sex"] = {SEX_NAMES.get(c, c): metadata.sex == c for c in codes}
    if metadata.age is not None:
        with np.errstate(invalid="ignore"):  # NaN ages compare False: in no band
            out["age"] = {band_name(lo, hi): (metadata.age >= lo) & (
                metadata.age < (np.inf if hi is None else hi)) for lo, hi in AGE_BANDS}
    if metadata.view is not None:
        out["view"] = {v: metadata.view == v for v in VIEWS}
        out["view"]["other"] = ~np.isin(metadata.view, (*VIEWS, ""))
    return {a: {g: m for g, m in groups.items() if m.any()} for a, groups in out.items()}
