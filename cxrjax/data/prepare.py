"""Prepares ChestX-ray14 once: decode every PNG, resize, write ArrayRecord shards through TFDS.

    python -m cxrjax.data.prepare --manual_dir NIH_DIR --data_dir OUT [--resolution 256]
        [--workers N] [--skip_bad]

NIH_DIR is the download as users have it: ``Data_Entry_2017*.csv``, images in ``images/`` or
``images_001/images/ … images_012/images/``. Bad input fails before any dataset appears and
lists every problem; ``--skip_bad`` writes the rest plus a manifest of what was skipped and why.

This module stays light (no TFDS import at the top) because decode workers import it.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import glob
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from cxrjax.data import labels as labels_lib

DATA_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                      "Patient Age", "Patient Gender", "View Position")
DEFAULT_RESOLUTION = 256
MANIFEST_NAME = "skipped_manifest.tsv"


class PrepareError(ValueError):
    """The NIH download has problems; the message lists every one of them."""


@dataclasses.dataclass(frozen=True)
class Problem:
    image: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One good ``Data_Entry`` row and the file it names."""

    image_id: str
    path: str
    labels: np.ndarray  # (14,) uint8
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str


# ------------------------------------------------------------------ images ---

def decode_image(path: str, resolution: int) -> tuple[np.ndarray, str]:
    """Decodes one image to (resolution, resolution) uint8 grayscale and names its source mode.

    RGB(A)/LA/palette images are converted to luminance (NIH's RGBA files are gray in RGB);
    16-bit images are mapped linearly onto 0..255. The resize is PIL's antialiased bilinear
    (its filter support widens with the scale factor, so 1024 -> 256 averages, not aliases).
    Raises ``OSError``/``ValueError`` for a missing, truncated or corrupt file.
    """
    with Image.open(path) as img:
        img.load()  # a truncated PNG raises here, never returns a half-black image
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8))
        elif mode != "L":
            img = img.convert("L")
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8), mode


def decode_task(args: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    """Pool worker: ``(i, path, res)`` -> ``(i, image or None, mode or error text)``."""
    i, path, resolution = args
    try:
        image, mode = decode_image(path, resolution)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for bad files
        return i, None, f"cannot decode {path}: {type(e).__name__}: {e}"
    return i, image, mode


def _run_chunk(fn_and_chunk):
    fn, chunk = fn_and_chunk
    return [fn(t) for t in chunk]


def ordered_map(fn: Callable, tasks: Sequence, workers: int, chunk: int = 8,
                window: int = 8) -> Iterator:
    """``map(fn, tasks)`` on ``workers`` spawned processes, in order, ``window`` chunks ahead.

    A ``ProcessPoolExecutor`` (not ``Pool``): a worker that dies, e.g. because a script
    without ``if __name__ == "__main__":`` re-runs itself on import, is an error here, not an
    endless respawn. ``spawn``, not ``fork``: the parent may hold JAX/grain threads. The
    bounded window keeps memory flat when the consumer is slower than the decoders.
    """
    if workers <= 0:
        yield from map(fn, tasks)
        return
    chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    ctx = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            pending: collections.deque = collections.deque()
            for c in chunks:
                pending.append(pool.submit(_run_chunk, (fn, c)))
                if len(pending) >= window * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
    except concurrent.futures.process.BrokenProcessPool:
        raise RuntimeError(
            "a worker process died; if you called this from a script, put the call under "
            "`if __name__ == '__main__':` (workers start with 'spawn' and import the script), "
            "or pass workers=0") from None


# ------------------------------------------------------------------- input ---

def find_data_entry(manual_dir: str) -> str:
    """The ``Data_Entry_2017*.csv`` of a download (the v2020 one if both are present)."""
    found = sorted(glob.glob(os.path.join(manual_dir, "Data_Entry_2017*.csv")) +
                   glob.glob(os.path.join(manual_dir, "Data_Entry_2017*.csv.gz")))
    if not found:
        raise FileNotFoundError(f"no Data_Entry_2017*.csv in {manual_dir}; download it from NIH "
                                "(https://nihcc.app.box.com/v/ChestXray-NIHCC)")
    if len(found) > 1:
        v2020 = [f for f in found if "v2020" in os.path.basename(f)]
        if len(v2020) != 1:
            raise PrepareError(f"several label tables in {manual_dir}: {found}; keep one")
        return v2020[0]
    return found[0]


def find_images(manual_dir: str) -> tuple[dict[str, str], list[Problem]]:
    """Image name -> path over ``images/`` and ``images_*/images/``; a name twice is a problem."""
    patterns = ("images/*.png", "images_*/images/*.png", "images_*/*.png")
    paths: dict[str, str] = {}
    problems = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(manual_dir, pattern))):
            name = os.path.basename(path)
            if name in paths:
                problems.append(Problem(name, f"two files: {paths[name]} and {path}"))
            else:
                paths[name] = path
    return paths, problems


def read_rows(csv_path: str, image_paths: dict[str, str]
              ) -> tuple[list[Row], list[Problem]]:
    """Parses the table, matches it against the files, and collects every problem."""
    from cxrjax.data.labels import open_text  # same gz/plain handling as the label module

    problems: list[Problem] = []
    rows: dict[str, Row] = {}
    first_line: dict[str, int] = {}
    duplicated: set[str] = set()
    with open_text(csv_path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in DATA_ENTRY_COLUMNS if c not in header]
        if missing:
            raise PrepareError(f"{csv_path}: missing column(s) {missing}; is this a "
                               "Data_Entry_2017 CSV?")
        col = {c: header.index(c) for c in DATA_ENTRY_COLUMNS}
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            name = fields[col["Image Index"]].strip() if len(fields) > col["Image Index"] else ""
            where = f"{os.path.basename(csv_path)} line {line_no}"
            if name in first_line:
                duplicated.add(name)
                problems.append(Problem(name, f"duplicate row: {where} repeats line "
                                              f"{first_line[name]}"))
                continue
            first_line[name] = line_no
            try:
                age = fields[col["Patient Age"]].strip()
                row = Row(image_id=name, path=image_paths.get(name, ""),
                          labels=labels_lib.parse_finding_labels(fields[col["Finding Labels"]],
                                                                 row=where),
                          patient_id=int(fields[col["Patient ID"]]),
                          follow_up=int(fields[col["Follow-up #"]]),
                          age=int(age.rstrip("Y")) if age else -1,
                          sex=fields[col["Patient Gender"]].strip(),
                          view=fields[col["View Position"]].strip())
            except IndexError:
                problems.append(Problem(name or "?", f"{where}: too few fields ({len(fields)})"))
                continue
            except ValueError as e:  # LabelError included: unknown label, bad number
                problems.append(Problem(name or "?", f"{where}: {e}"))
                continue
            if not row.path:
                problems.append(Problem(name, f"{where}: image file not found in the download"))
                continue
            rows[name] = row
    for name in duplicated:
        rows.pop(name, None)
    in_csv = set(first_line)
    problems += [Problem(n, "image file has no row in the label table")
                 for n in sorted(image_paths) if n not in in_csv]
    return [rows[n] for n in sorted(rows)], problems


def format_problems(problems: Sequence[Problem]) -> str:
    return "\n".join(f"  {p.image}: {p.reason}" for p in problems)


def write_manifest(path: str, skipped: Sequence[Problem]) -> None:
    """A TSV of every skipped image and why (``--skip_bad``)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("image\treason\n")
        f.writelines(f"{p.image}\t{p.reason}\n" for p in skipped)


# --------------------------------------------------------------------- CLI ---

def prepare(manual_dir: str, data_dir: str, resolution: int = DEFAULT_RESOLUTION,
            workers: int | None = None, skip_bad: bool = False):
    """Builds (or reuses) the ``chest_xray14`` dataset; returns the prepared TFDS builder."""
    from cxrjax.data import builder as builder_lib

    return builder_lib.build(manual_dir, data_dir, resolution=resolution, workers=workers,
                             skip_bad=skip_bad)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual_dir", required=True, help="the NIH download (CSV + images)")
    parser.add_argument("--data_dir", required=True, help="where the TFDS dataset is written")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    parser.add_argument("--workers", type=int, default=None, help="decode processes (all cores)")
    parser.add_argument("--skip_bad", action="store_true",
                        help=f"skip bad images, listing them in {MANIFEST_NAME}")
    args = parser.parse_args(argv)
    try:
        b = prepare(args.manual_dir, args.data_dir, args.resolution, args.workers, args.skip_bad)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = b.info.metadata
    print(f"prepared {meta['num_images']} images at {args.resolution}px in {b.data_dir}; "
          f"converted to grayscale: {meta['converted'] or 'none'}")
    if meta["skipped"]:
        print(f"skipped {len(meta['skipped'])} image(s), listed with reasons in "
              f"{os.path.join(os.fspath(b.data_dir), MANIFEST_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
