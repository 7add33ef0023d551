"""Predictions files and the text table: what a scored split looks like on disk and on screen.

A predictions file is ``.csv`` or ``.csv.gz`` with an ``Image Index`` column and one score column
per class, named ``<Class>`` or ``prob_<Class>`` (the CheXNet-reproduction format); other columns
are ignored. ``write_predictions`` writes what ``load_predictions`` reads back exactly.
Optional patient metadata columns (``sex``, ``age``, ``view``: ``METADATA_COLUMNS``) follow the
scores where the dataset has them; ``load_metadata_columns`` reads them back.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from cxrjax.data.labels import CLASSES
from cxrjax.io import fileio

IMAGE_COLUMN = "Image Index"
SCORE_PREFIX = "prob_"
METADATA_COLUMNS = ("sex", "age", "view")  # optional, after the scores, in this order
# Head key -> its title in tables and plots; "fused" is the model's reported prediction.
HEAD_TITLES: dict[str, str] = {
    "ce": "CE (stream A)", "ce_b": "CE (stream B)", "msml": "MSML (stream B)",
    "fce": "FCE (bilinear)", "fused": "Fused",
}


def _class_key(name: str) -> str:
    """Column name -> comparable class key: 'prob_Pleural Thickening' -> 'pleural_thickening'."""
    name = name.strip()
    if name.lower().startswith(SCORE_PREFIX):
        name = name[len(SCORE_PREFIX):]
    return name.strip().lower().replace(" ", "_")


_CLASS_BY_KEY = {_class_key(c): i for i, c in enumerate(CLASSES)}


def _open_csv(path: str) -> io.TextIOBase:
    if not fileio.exists(path):
        raise FileNotFoundError(f"predictions file not found: {path}")
    if fileio.isdir(path):
        raise ValueError(f"predictions path is a directory, not a CSV file: {path}")
    data = fileio.read_bytes(path)  # local or gs://; a few MB at most
    raw = gzip.GzipFile(fileobj=io.BytesIO(data)) if path.endswith(".gz") else io.BytesIO(data)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _class_columns(header: list[str], path: str) -> list[int]:
    """Header -> the column index of each class in NIH order; missing/duplicate/unknown: error."""
    if IMAGE_COLUMN not in header:
        raise ValueError(f"{path}: no {IMAGE_COLUMN!r} column (header: {', '.join(header)})")
    if header.count(IMAGE_COLUMN) > 1:
        raise ValueError(f"{path}: column {IMAGE_COLUMN!r} appears more than once")
    found: dict[int, list[str]] = {}
    for name in header:
        key = _class_key(name)
        if key in _CLASS_BY_KEY:
            found.setdefault(_CLASS_BY_KEY[key], []).append(name)
        elif name.lower().startswith(SCORE_PREFIX):
            raise ValueError(f"{path}: column {name!r} names no ChestX-ray14 class; expected "
                             f"one of {', '.join(CLASSES)}")
    duplicated = {CLASSES[c]: names for c, names in found.items() if len(names) > 1}
    if duplicated:
        raise ValueError(f"{path}: duplicated class column(s): " + "; ".join(
            f"{c} ({', '.join(map(repr, names))})" for c, names in duplicated.items()))
    missing = [c for i, c in enumerate(CLASSES) if i not in found]
    if missing:
        raise ValueError(f"{path}: missing class column(s) {', '.join(missing)}; expected "
                         f"'<Class>' or '{SCORE_PREFIX}<Class>' for each of the 14 classes "
                         "(a predictions file is scored against NIH's label table)")
    return [header.index(found[c][0]) for c in range(len(CLASSES))]


def _score(text: str, line: int, column: str, path: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} line {line}, column {column!r}: non-numeric score "
                         f"{text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path} line {line}, column {column!r}: score is {text.strip()!r}; "
                         "scores must be finite")
    return value


def load_predictions(path: str | os.PathLike) -> tuple[tuple[str, ...], np.ndarray]:
    """A predictions CSV -> (image ids, (N, 14) float64 scores in NIH class order)."""
    path = os.fspath(path)
    with _open_csv(path) as f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file (expected a header with {IMAGE_COLUMN!r} "
                                 "and 14 class columns)")
            header = [h.strip() for h in header]
            columns = _class_columns(header, path)
            image_col = header.index(IMAGE_COLUMN)
            ids: list[str] = []
            rows: list[list[float]] = []
            first_line: dict[str, int] = {}
            duplicates: list[str] = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue  # a blank line holds no prediction
                if len(row) != len(header):
                    raise ValueError(f"{path} line {line}: {len(row)} fields, header has "
                                     f"{len(header)}")
                name = row[image_col].strip()
                if not name:
                    raise ValueError(f"{path} line {line}: empty {IMAGE_COLUMN!r}")
                if name in first_line:
                    duplicates.append(f"{name} (lines {first_line[name]} and {line})")
                    continue
                first_line[name] = line
                ids.append(name)
                rows.append([_score(row[c], line, header[c], path) for c in columns])
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{path}: not a readable CSV ({e})") from None
    if duplicates:
        raise ValueError(f"{path}: {len(duplicates)} duplicate row(s), e.g. "
                         f"{', '.join(duplicates[:3])}")
    if not ids:
        raise ValueError(f"{path}: no prediction rows after the header")
    return tuple(ids), np.asarray(rows, np.float64)


def write_predictions(path: str | os.PathLike, image_ids: Sequence[str],
                      scores: np.ndarray,
                      metadata: Mapping[str, Sequence[str]] | None = None,
                      classes: Sequence[str] = CLASSES) -> None:
    """Writes ``Image Index,prob_<Class>...`` (``.csv`` or ``.csv.gz``), one column per class of
    ``classes`` (the run's, in its order; NIH's 14 are what ``load_predictions`` reads back);
    each score is the shortest text that round-trips its float32/float64 value, so ranks (and
    AUCs) computed from the file equal those computed from ``scores``.
    ``metadata``: text columns among ``METADATA_COLUMNS`` (``metadata.columns`` makes them),
    one value per image, written after the scores in that order.
    """
    path = os.fspath(path)
    scores = np.asarray(scores)
    if scores.dtype != np.float64:
        scores = scores.astype(np.float32)  # bfloat16/float16 are exact in float32
    if scores.ndim != 2 or scores.shape != (len(image_ids), len(classes)):
        raise ValueError(f"scores must be ({len(image_ids)}, {len(classes)}) for "
                         f"{len(image_ids)} image ids, got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"refusing to write non-finite scores to {path}")
    extra = _metadata_columns(metadata or {}, len(image_ids))
    fileio.makedirs(os.path.dirname(path) or ".")
    text = scores.astype(str)  # numpy's shortest round-trip repr for the dtype
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow([IMAGE_COLUMN, *(f"{SCORE_PREFIX}{c}" for c in classes), *extra])
    writer.writerows([name, *row, *(values[i] for values in extra.values())]
                     for i, (name, row) in enumerate(zip(image_ids, text, strict=True)))
    data = f.getvalue().encode("utf-8")
    # Atomic, local or gs://: the file appears complete or not at all.
    fileio.write_bytes(path, gzip.compress(data, mtime=0) if path.endswith(".gz") else data)


def _metadata_columns(metadata: Mapping[str, Sequence[str]], n: int) -> dict[str, list[str]]:
    """The given metadata columns in ``METADATA_COLUMNS`` order, checked."""
    unknown = [k for k in metadata if k not in METADATA_COLUMNS]
    if unknown:
        raise ValueError(f"unknown metadata column(s) {unknown}; expected among "
                         f"{', '.join(METADATA_COLUMNS)}")
    out = {k: [str(v) for v in metadata[k]] for k in METADATA_COLUMNS if k in metadata}
    for k, values in out.items():
        if len(values) != n:
            raise ValueError(f"metadata column {k!r} has {len(values)} values for {n} images")
    return out


def load_metadata_columns(path: str | os.PathLike) -> dict[str, list[str]]:
    """The ``METADATA_COLUMNS`` a predictions file carries (text, in its row order, blank
    lines and repeated ids skipped as ``load_predictions`` does); {} when it has none."""
    path = os.fspath(path)
    with _open_csv(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, None) or []]
        if IMAGE_COLUMN not in header:
            raise ValueError(f"{path}: no {IMAGE_COLUMN!r} column")
        wanted = {k: header.index(k) for k in METADATA_COLUMNS if k in header}
        image_col, seen = header.index(IMAGE_COLUMN), set()
        out: dict[str, list[str]] = {k: [] for k in wanted}
        for row in reader:
            if not row or len(row) != len(header) or row[image_col].strip() in seen:
                continue
            seen.add(row[image_col].strip())
            for k, c in wanted.items():
                out[k].append(row[c].strip())
    return out


def format_value(value: float | None, digits: int = 6) -> str:
    """A metric with ``digits`` decimals; ``n/a`` for NaN or a missing value."""
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(summary: dict) -> str:
    """A ``metrics.summary`` dict -> per-class table plus summary rows, as plain text."""
    fmt = format_value
    names = list(summary["per_class"])
    d, n = summary.get("per_class_d_auc", {}), summary.get("per_class_n_auc", {})
    pos, w = summary.get("n_positive", {}), summary.get("w_auc_weights", {})
    width = max(len("class"), *(len(c) for c in names))
    lines = [f"{'class':<{width}}  {'AUC':>8}  {'D-AUC':>8}  {'N-AUC':>8}  {'positives':>9}  "
             f"{'weight':>7}"]
    for c in names:
        lines.append(
            f"{c:<{width}}  {fmt(summary['per_class'][c]):>8}  {fmt(d.get(c, math.nan)):>8}  "
            f"{fmt(n.get(c, math.nan)):>8}  {pos.get(c, ''):>9}  "
            f"{fmt(w.get(c, math.nan), 4):>7}")
    lines.append("-" * len(lines[0]))
    excluded = summary.get("excluded_classes", [])
    n_used = len(names) - len(excluded)
    lo, hi = summary["mean_auc_ci95"]
    boot = summary.get("n_boot", 0)
    ci = (f"95% CI [{fmt(lo)}, {fmt(hi)}] ({boot} bootstrap resamples of the images)"
          if boot else "no bootstrap CI")
    rows = [
        (f"AUC (mean of {n_used})", summary["mean_auc"], ci),
        ("W-AUC", summary["w_auc"],
         f"weights: class share of all labelled images, sum {sum(w.values()):.4f}" if w else ""),
        ("W-AUC normalized", summary["w_auc_normalized"], "weights: positives here, sum 1"),
        ("D-AUC", summary["d_auc"], "images with >= 1 finding"),
        ("N-AUC", summary["n_auc"], "each class vs 'No Finding'"),
    ]
    label_width = max(len(r[0]) for r in rows)
    lines += [f"{name:<{label_width}}  {fmt(v)}  {note}".rstrip() for name, v, note in rows]
    lines.append(f"{'images':<{label_width}}  {summary['n_images']}")
    masked = bool(summary.get("masked"))  # labels may be missing: no W-, D- or N-AUC
    for key, what in (("excluded_classes", "AUC" if masked else "AUC, W-AUC"),
                      *(() if masked else (("d_auc_excluded_classes", "D-AUC"),
                                           ("n_auc_excluded_classes", "N-AUC")))):
        if summary.get(key):
            lines.append(f"left out of {what} (one label value): {', '.join(summary[key])}")
    if masked:
        lines.append("W-AUC, D-AUC, N-AUC: n/a, they need every label known and NIH's 'No "
                     "Finding' (each class's AUC is over its known labels)")
    return "\n".join(lines)


def _json_ready(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def write_json(summary: dict, path: str | os.PathLike) -> None:
    """Writes a summary as strict JSON (NaN as null); creates the parent folder."""
    path = os.fspath(path)
    fileio.makedirs(os.path.dirname(path) or ".")
    with fileio.open(path, "w", encoding="utf-8") as f:
        json.dump(_json_ready(summary), f, indent=2, allow_nan=False)
        f.write("\n")
