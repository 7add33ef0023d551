"""The NIH ChestX-ray14 download as users have it: its label table, its images, their decoding.

A download is a folder with ``Data_Entry_2017*.csv`` and the PNGs in ``images/`` or
``images_001/images/ … images_012/images/``. ``scan`` reads it into good ``Row``s and a list of
every ``Problem`` visible without decoding; ``decode_image`` turns one PNG into the stored
uint8 grayscale. The TFDS builder reads a download through this module, and the synthetic set
writes one in the same layout (``DATA_ENTRY_NAME``, ``DATA_ENTRY_HEADER``).

This module stays light (no TFDS, no JAX): decode and render workers are spawned processes
that import it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import glob
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from cxrjax.data import labels as labels_lib

DATA_ENTRY_NAME = "Data_Entry_2017_v2020.csv"  # the name NIH ships the current table under
DATA_ENTRY_HEADER = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                     "Patient Age", "Patient Gender", "View Position", "OriginalImage[Width",
                     "Height]", "OriginalImagePixelSpacing[x", "y]")
DATA_ENTRY_COLUMNS = DATA_ENTRY_HEADER[:7]  # the columns read; the rest describe the scan
IMAGES_DIR = "images"
NOT_FOUND = "image file not found in the download"


SHOWN_PROBLEMS = 20  # an error message lists this many problems; a file lists them all


class PrepareError(ValueError):
    """The NIH download cannot be prepared as it is.

    ``problems`` holds every problem found; the message gives their count, the first
    ``SHOWN_PROBLEMS`` and, once ``listed_in`` names the file that lists them all, that file.
    (A download without its images has 112,120 problems: a message cannot list them.)
    """

    def __init__(self, summary: str, problems: Sequence[Problem] = (), listed_in: str = ""):
        self.summary, self.problems, self.listed_in = summary, list(problems), listed_in
        text = summary
        if self.problems:
            text += ":\n" + format_problems(self.problems[:SHOWN_PROBLEMS])
            if len(self.problems) > SHOWN_PROBLEMS:
                text += f"\n  ... and {len(self.problems) - SHOWN_PROBLEMS:,} more"
        if listed_in:
            text += f"\nevery problem is listed in {listed_in}"
        super().__init__(text)

    def listed(self, path: str) -> PrepareError:
        """The same error, pointing to ``path``, where its problems were written."""
        return PrepareError(self.summary, self.problems, listed_in=path)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why one image of the download cannot be used."""

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


def decode_task(args: tuple[int, str, int],
                decode: Callable[[str, int], tuple[np.ndarray, str]] = decode_image,
                ) -> tuple[int, np.ndarray | None, str]:
    """Pool worker: ``(i, path, res)`` -> ``(i, image or None, mode or error text)``.

    ``decode`` is a release's ``decode_image``; bind it with ``functools.partial`` so that
    spawned workers can still pickle the task function.
    """
    i, path, resolution = args
    try:
        image, mode = decode(path, resolution)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL: bad files
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


# ------------------------------------------------------------------- table ---

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
    patterns = (f"{IMAGES_DIR}/*.png", f"images_*/{IMAGES_DIR}/*.png", "images_*/*.png")
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


def csv_rows(reader: Iterator[list[str]], path: str, problems: list[Problem]
             ) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-empty record left in a ``csv.reader``. No cell of these
    tables holds a line break: a record over several lines (an unclosed quote) is a problem
    naming its lines, and a quoted field that never ends is a PrepareError naming the table."""
    source, start = os.path.basename(path), reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise PrepareError(f"{path} line {start}: {e} (an unclosed quote?)") from None
        first, start = start, reader.line_num + 1
        if reader.line_num > first:
            problems.append(Problem(fields[0].strip() or "?", (
                f"{source} lines {first}-{reader.line_num}: one row over "
                f"{reader.line_num - first + 1} lines (an unclosed quote?); its lines are lost")))
        elif fields:
            yield first, fields


def read_rows(csv_path: str, image_paths: dict[str, str]
              ) -> tuple[list[Row], list[Problem]]:
    """Parses the table, matches it against the files, and collects every problem."""
    problems: list[Problem] = []
    rows: dict[str, Row] = {}
    first_line: dict[str, int] = {}
    duplicated: set[str] = set()
    with labels_lib.open_text(csv_path) as f:  # the label module's gz/plain handling
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in DATA_ENTRY_COLUMNS if c not in header]
        if missing:
            raise PrepareError(f"{csv_path}: missing column(s) {missing}; is this a "
                               "Data_Entry_2017 CSV?")
        col = {c: header.index(c) for c in DATA_ENTRY_COLUMNS}
        for line_no, fields in csv_rows(reader, csv_path, problems):
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
                problems.append(Problem(name, f"{where}: {NOT_FOUND}"))
                continue
            rows[name] = row
    for name in duplicated:
        rows.pop(name, None)
    in_csv = set(first_line) | {p.image for p in problems}  # a broken row is a row
    problems += [Problem(n, "image file has no row in the label table")
                 for n in sorted(image_paths) if n not in in_csv]
    return [rows[n] for n in sorted(rows)], problems


def format_problems(problems: Sequence[Problem]) -> str:
    """One indented ``image: reason`` line per problem."""
    return "\n".join(f"  {p.image}: {p.reason}" for p in problems)


def write_problems(path: str, problems: Sequence[Problem]) -> None:
    """A TSV (``image``, ``reason``) of every problem: the full list behind a short message."""
    from cxrjax.io import fileio  # a gs:// data_dir too; imported here: workers stay light

    fileio.write_text(path, "image\treason\n" +
                      "".join(f"{p.image}\t{p.reason}\n" for p in problems))


# -------------------------------------------------------------- the folder ---

def scan(manual_dir: str) -> tuple[list[Row], list[Problem]]:
    """Every problem that is visible without decoding, and the rows that are fine so far."""
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
    csv_path = find_data_entry(manual_dir)
    paths, problems = find_images(manual_dir)
    if not paths:
        raise FileNotFoundError(f"no PNG images in {manual_dir}/{IMAGES_DIR}/ or "
                                f"{manual_dir}/images_*/{IMAGES_DIR}/")
    rows, row_problems = read_rows(csv_path, paths)
    return rows, problems + row_problems


def usable_rows(manual_dir: str, skip_bad: bool) -> tuple[list[Row], list[Problem]]:
    """``scan``, failing on any problem unless ``skip_bad`` (then they are returned to skip)."""
    rows, problems = scan(manual_dir)
    if problems and not skip_bad:
        missing = sum(p.reason.endswith(NOT_FOUND) for p in problems)
        where = (f" ({missing:,} of them images not found: are all the archives unpacked into "
                 f"{IMAGES_DIR}/ or images_NNN/{IMAGES_DIR}/?)" if missing else "")
        raise PrepareError(
            f"{len(problems):,} problem(s) in {manual_dir}{where}; nothing was written (pass "
            "--skip_bad to write the rest)", problems)
    if not rows:  # every row has a problem (--skip_bad): each is named, none is left silent
        raise PrepareError(f"no usable images in {manual_dir}", problems)
    return rows, problems
