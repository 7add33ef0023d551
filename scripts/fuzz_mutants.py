"""Seeded mutations of real input files for ``scripts/fuzz_inputs.py``.

Images (a PNG of ChestX-ray14, a DICOM) and label tables (NIH ``Data_Entry``, CheXpert
``train.csv``) are broken the ways users' files break: truncated, emptied, bytes flipped,
huge dimensions in the header, a wrong extension, other encodings, rows cut, columns or
cells swapped. Each mutant says what a reader must do with it: ``good`` (used), ``bad``
(named as an error, not used) or ``either`` (used, or named: a flipped byte may be harmless).
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import struct
import zlib
from collections.abc import Callable

import numpy as np

GOOD, BAD, EITHER = "good", "bad", "either"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DICOM_ROWS = b"\x28\x00\x10\x00US\x02\x00"  # (0028,0010) Rows, explicit VR little endian
_DICOM_COLUMNS = b"\x28\x00\x11\x00US\x02\x00"


@dataclasses.dataclass(frozen=True)
class ImageMutant:
    """Bytes to write under ``ext``, and what a reader must do with them."""

    data: bytes
    ext: str
    expect: str


def _flip(data: bytes, rng: np.random.Generator, lo: int, hi: int, count: int,
          ascii_only: bool = False) -> bytes:
    """``count`` distinct bytes in [lo, hi) XORed with a non-zero value (< 128 keeps ASCII
    ASCII); distinct, so that no flip undoes another."""
    out = bytearray(data)
    hi = min(max(hi, lo + 1), len(data))
    for pos in rng.choice(np.arange(lo, hi), min(count, hi - lo), replace=False):
        out[pos] ^= int(rng.integers(1, 128 if ascii_only else 256))
    return bytes(out)


def _huge_png(data: bytes, rng: np.random.Generator) -> bytes:
    """The IHDR claims 10,001 to 2**31-1 px a side, with a correct CRC: a decompression bomb."""
    width, height = (int(v) for v in rng.integers(10_001, 2**31 - 1, 2))
    body = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def _huge_dicom(data: bytes, rng: np.random.Generator) -> bytes:
    """Rows and Columns set to 12,000 to 65,535 each: over any sane pixel count."""
    out = bytearray(data)
    for tag in (_DICOM_ROWS, _DICOM_COLUMNS):
        at = out.find(tag) + len(tag)
        out[at:at + 2] = struct.pack("<H", int(rng.integers(12_000, 65_536)))
    return bytes(out)


def _magic(kind: str) -> tuple[int, int]:
    return (0, len(_PNG_MAGIC)) if kind == "png" else (128, 132)


IMAGE_KINDS: dict[str, Callable[[bytes, str, np.random.Generator], ImageMutant]] = {
    "truncated": lambda d, k, r: ImageMutant(d[:int(r.integers(1, int(len(d) * 0.9)))], k, BAD),
    "zero_length": lambda d, k, r: ImageMutant(b"", k, BAD),
    "flipped": lambda d, k, r: ImageMutant(
        _flip(d, r, 0, len(d), int(r.integers(1, 9))), k, EITHER),
    "header_flipped": lambda d, k, r: ImageMutant(
        _flip(d, r, 0, 1024 if k == "dcm" else 64, int(r.integers(1, 4))), k, EITHER),
    "magic_broken": lambda d, k, r: ImageMutant(
        _flip(d, r, *_magic(k), 2), k, BAD),
    "huge_dims": lambda d, k, r: ImageMutant(
        _huge_png(d, r) if k == "png" else _huge_dicom(d, r), k, BAD),
    "wrong_extension": lambda d, k, r: ImageMutant(
        d, str(r.choice(["jpg", "dcm"] if k == "png" else ["png", "jpg"])), GOOD),
    "junk_appended": lambda d, k, r: ImageMutant(
        d + r.bytes(int(r.integers(1, 4096))), k, EITHER),
    "text_as_image": lambda d, k, r: ImageMutant(
        b"Image Index,Finding Labels\n00000001_000.png,Hernia\n", k, BAD),
}


# ------------------------------------------------------------------ tables ---

@dataclasses.dataclass(frozen=True)
class Table:
    """A label table: its header line, row lines (no line ends), each row's image id, and
    where the age and sex cells are (to swap them)."""

    header: str
    rows: list[str]
    ids: list[str]
    age_col: int
    sex_col: int
    swappable: int  # columns 0..swappable-1 may be swapped whole (header and cells)
    extra: list[str] = dataclasses.field(default_factory=list)  # more real rows, no images


@dataclasses.dataclass(frozen=True)
class TableMutant:
    """The file's bytes and name suffix; ``rows``: id -> GOOD/BAD/EITHER, a missing id may be
    absent (cut off); ``whole``: what a reader must do with the file as a whole."""

    data: bytes
    suffix: str
    rows: dict[str, str]
    whole: str = GOOD
    lines: dict[str, int] | None = None  # each row's line in this file, when not 2, 3, ...


def _text(header: str, rows: list[str], end: str = "\n") -> str:
    return end.join([header, *rows]) + end


def _all(t: Table, state: str = GOOD) -> dict[str, str]:
    return dict.fromkeys(t.ids, state)


def _cells_swapped(t: Table, r: np.random.Generator) -> TableMutant:
    i = int(r.integers(len(t.rows)))
    cells = t.rows[i].split(",")
    cells[t.age_col], cells[t.sex_col] = cells[t.sex_col], cells[t.age_col]
    rows = [*t.rows[:i], ",".join(cells), *t.rows[i + 1:]]
    return TableMutant(_text(t.header, rows).encode(), ".csv", {**_all(t), t.ids[i]: BAD})


def _columns_swapped(t: Table, r: np.random.Generator) -> TableMutant:
    a, b = (int(v) for v in r.choice(t.swappable, 2, replace=False))

    def swap(line: str) -> str:
        cells = line.split(",")
        cells[a], cells[b] = cells[b], cells[a]
        return ",".join(cells)

    return TableMutant(_text(swap(t.header), [swap(x) for x in t.rows]).encode(), ".csv", _all(t))


def _row_cut(t: Table, r: np.random.Generator) -> TableMutant:
    i = int(r.integers(len(t.rows)))
    rows = list(t.rows)
    rows[i] = rows[i][:int(r.integers(1, len(rows[i])))]
    return TableMutant(_text(t.header, rows).encode(), ".csv", {**_all(t), t.ids[i]: EITHER})


def _file_cut(t: Table, r: np.random.Generator) -> TableMutant:
    """Cut within the rows: rows after the cut are gone, the row cut may be damaged."""
    data = _text(t.header, t.rows).encode()
    at = int(r.integers(len(t.header) + 2, len(data)))
    ends = np.cumsum([len(t.header) + 1] + [len(x) + 1 for x in t.rows])
    states = {}
    for i, rid in enumerate(t.ids):
        if ends[i + 1] <= at:
            states[rid] = GOOD
        elif ends[i] < at:
            states[rid] = EITHER
    return TableMutant(data[:at], ".csv", states)


def _flipped(t: Table, r: np.random.Generator) -> TableMutant:
    """ASCII bytes of the rows flipped to other ASCII bytes (NUL, quotes, commas included);
    every row from the first touched one on may be damaged (a quote can join lines)."""
    data = _text(t.header, t.rows).encode()
    start = len(t.header) + 1
    count = int(r.integers(1, 4))
    positions = sorted(int(p) for p in r.choice(np.arange(start, len(data)), count,
                                                 replace=False))
    out = bytearray(data)
    for p in positions:
        out[p] ^= int(r.integers(1, 128))
    ends = np.cumsum([start] + [len(x) + 1 for x in t.rows])
    first = int(np.searchsorted(ends, positions[0], side="right")) - 1
    states = {rid: (GOOD if i < first else EITHER) for i, rid in enumerate(t.ids)}
    # A flipped line end joins two rows, a new one splits a row: lines as csv counts them.
    lines = {rid: 1 + len(re.findall(rb"\r\n|\r|\n", bytes(out[:ends[i]])))
             for i, rid in enumerate(t.ids)}
    return TableMutant(bytes(out), ".csv", states, lines=lines)


def _quote_unclosed(t: Table, r: np.random.Generator, big: bool) -> TableMutant:
    """A cell of one row opens a quote it never closes: the rest of the file is one cell.
    ``big``: a real table's length follows (csv's 128 KiB field limit is passed)."""
    i = int(r.integers(len(t.rows)))
    cells = t.rows[i].split(",")
    j = int(r.integers(1, len(cells)))
    cells[j] = '"' + cells[j]
    rows = [*t.rows[:i], ",".join(cells), *t.rows[i + 1:], *(t.extra if big else [])]
    states = {rid: (GOOD if k < i else EITHER) for k, rid in enumerate(t.ids)}
    return TableMutant(_text(t.header, rows).encode(), ".csv", states, EITHER if big else GOOD)


def _latin1(t: Table, r: np.random.Generator) -> TableMutant:
    """A row with an extra trailing cell holding a non-ASCII letter, saved as Latin-1: read
    whole, or the file refused by name (it is not UTF-8)."""
    i = int(r.integers(len(t.rows)))
    rows = [*t.rows[:i], t.rows[i] + ",Réf. café", *t.rows[i + 1:]]
    return TableMutant(_text(t.header, rows).encode("latin-1"), ".csv", _all(t, EITHER), EITHER)


def _gz_damaged(t: Table, r: np.random.Generator, cut: bool) -> TableMutant:
    data = gzip.compress(_text(t.header, t.rows).encode(), mtime=0)
    if cut:
        data = data[:int(r.integers(10, len(data) - 1))]
    else:
        data = _flip(data, r, 10, len(data), int(r.integers(1, 4)))
    return TableMutant(data, ".csv.gz", _all(t, EITHER), BAD)


TABLE_KINDS: dict[str, Callable[[Table, np.random.Generator], TableMutant]] = {
    "utf8_bom": lambda t, r: TableMutant(("\ufeff" + _text(t.header, t.rows)).encode(), ".csv",
                                         _all(t)),
    "utf16": lambda t, r: TableMutant(_text(t.header, t.rows).encode("utf-16"), ".csv", _all(t)),
    "crlf": lambda t, r: TableMutant(_text(t.header, t.rows, "\r\n").encode(), ".csv", _all(t)),
    "gzip": lambda t, r: TableMutant(gzip.compress(_text(t.header, t.rows).encode(), mtime=0),
                                     ".csv.gz", _all(t)),
    "latin1": _latin1,
    "columns_swapped": _columns_swapped,
    "cells_swapped": _cells_swapped,
    "row_cut": _row_cut,
    "file_cut": _file_cut,
    "flipped": _flipped,
    "quote_unclosed": lambda t, r: _quote_unclosed(t, r, big=False),
    "quote_unclosed_big": lambda t, r: _quote_unclosed(t, r, big=True),
    "zero_length": lambda t, r: TableMutant(b"", ".csv", _all(t, EITHER), BAD),
    "gz_truncated": lambda t, r: _gz_damaged(t, r, cut=True),
    "gz_flipped": lambda t, r: _gz_damaged(t, r, cut=False),
}
