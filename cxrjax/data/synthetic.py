"""A synthetic ChestX-ray14 in the exact NIH layout, for demos and tests without the 42 GB.

    python -m cxrjax.data.synthetic --out DIR --n N --size S --seed K [--format FORMAT]
        [--site same|other]

``--format`` (default ``nih``) writes the same chests in another release's layout instead:
``chexpert``, ``mimic_cxr`` or ``padchest``; ``--site other`` acquires them as another
hospital would (exposure, noise, a marker, prevalence). Both live in ``synthetic_formats``.

Labels, patients and follow-ups are whole patients drawn from the REAL label table, so the
imbalance (Hernia 0.2%, No Finding 54%) and the co-occurrences are the real ones; image names
are the real names, so every split scheme applies unchanged. Each image is a procedural chest
(body, lungs, heart, ribs, spine, diaphragm, noise; anatomy fixed per patient) with a drawn
sign per finding, at a random position, size and contrast. The three "patchy opacity" classes
(Infiltration, Pneumonia, Consolidation) are drawn alike and differ only in extent and
texture: the fine-grained confusion the paper is about.

Not saturated (version 3): each sign's contrast is drawn from a wide range that starts near
invisible, and 5% of positives get no sign at all; healthy anatomy varies as much as the mild
global findings (heart width for Cardiomegaly; lung size, darkness, markings and dome height
for Emphysema); look-alikes (calcified dots, a patch of haze, a low soft-tissue shadow) appear
in healthy and sick chests alike. Tuned so the demo (configs/demo.py) scores a mean test AUC
in the range of real ChestX-ray14 models, with no class near 1.

Boxes: the generator knows where it drew each finding and writes ``BBox_List_2017.csv`` (NIH
format) for the 8 NIH box classes: the bounding rectangle of each drawn part where its own
contribution is at least half its peak, in NIH's 1024² frame. Cardiomegaly's box is the
whole (enlarged) heart, as NIH's readers drew it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cxrjax.data import labels as labels_lib
from cxrjax.data import nih_layout, synthetic_formats
from cxrjax.data import splits as splits_lib
from cxrjax.data.synthetic_chests import render
from cxrjax.io import cli

log = logging.getLogger("cxrjax")

DONE_NAME = ".synthetic_complete.json"
VERSION = 3  # of the drawing: part of the cache folder name and of the complete marker


# ----------------------------------------------------------------- the set ---

def sample_rows(n: int, seed: int) -> list[int]:
    """Rows of the real table: whole patients in a seeded order until there are n images."""
    table = labels_lib.load_label_table()
    if not 1 <= n <= len(table):
        raise ValueError(f"n must be in [1, {len(table)}], got {n}")
    order = splits_lib.patient_order(table.patient_ids, seed)
    by_patient: dict[int, list[int]] = {}
    for i, p in enumerate(table.patient_ids.tolist()):
        by_patient.setdefault(p, []).append(i)
    rows: list[int] = []
    for p in order.tolist():
        rows += sorted(by_patient[p], key=lambda i: table.follow_up[i])[: n - len(rows)]
        if len(rows) == n:
            break
    return sorted(rows)


def _render_task(args):
    path, labels, size, patient_seed, image_seed = args
    image, boxes = render(labels, size, patient_seed, image_seed)
    Image.fromarray(image).save(path, optimize=False)
    return boxes


def generate(out_dir: str, n: int, size: int = 256, seed: int = 0,
             workers: int | None = None) -> str:
    """Writes (or reuses, if complete with the same parameters) the NIH-layout set: the
    images, the Data_Entry table, the official lists, and ``BBox_List_2017.csv`` with the box
    of every drawn finding of the 8 box classes in NIH's 1024² frame (the image scaled to
    1024², as NIH's boxes are in its 1024² PNGs)."""
    if not 32 <= size <= 1024:
        raise ValueError(f"size must be in [32, 1024], got {size}")
    params = {"n": n, "size": size, "seed": seed, "version": VERSION}
    done = os.path.join(out_dir, DONE_NAME)
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f) == params:
                return out_dir
        raise ValueError(f"{out_dir} holds a synthetic set with other parameters "
                         f"({done}); delete it or choose another folder")
    # Tens of seconds for the demo's 3000 images on 2 cores: say so before the work starts.
    log.info("drawing a synthetic chest X-ray set: %d images of %d px in %s (once)", n, size,
             out_dir)
    table = labels_lib.load_label_table()
    rows = sample_rows(n, seed)
    images = os.path.join(out_dir, nih_layout.IMAGES_DIR)
    os.makedirs(images, exist_ok=True)
    tasks = [(os.path.join(images, table.image_ids[i]), table.labels[i], size,
              stable_seed(seed, int(table.patient_ids[i])), seed * 1_000_003 + i)
             for i in rows]
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    drawn = nih_layout.ordered_map(_render_task, tasks, workers if n > 64 else 0, chunk=16)
    names, classes, xywh = [], [], []
    for i, boxes in zip(rows, drawn, strict=True):
        for name, box in boxes:
            names.append(table.image_ids[i])
            classes.append(name)
            xywh.append(box)
    frame = np.array(labels_lib.BOX_FRAME * 2, np.float64) / size  # pixels -> NIH's 1024²
    boxes = labels_lib.Boxes.create(names, classes, np.reshape(xywh, (-1, 4)) * frame)
    labels_lib.write_boxes(os.path.join(out_dir, labels_lib.BBOX_LIST_NAME), boxes)
    _write_tables(out_dir, table, rows, size, seed)
    with open(done, "w") as f:
        json.dump(params, f)
    return out_dir


def stable_seed(seed: int, patient: int) -> int:
    return (seed * 2_654_435_761 + patient * 40_503) % 2**63


def _write_tables(out_dir: str, table: labels_lib.LabelTable, rows: list[int], size: int,
                  seed: int) -> None:
    """The Data_Entry CSV and NIH-style official lists (a seeded patient-level 77/23 cut)."""
    with open(os.path.join(out_dir, nih_layout.DATA_ENTRY_NAME), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(nih_layout.DATA_ENTRY_HEADER)
        for i in rows:
            w.writerow([table.image_ids[i], labels_lib.format_finding_labels(table.labels[i]),
                        table.follow_up[i], table.patient_ids[i], table.age[i], table.sex[i],
                        table.view[i], size, size, 0.143, 0.143])
    part = splits_lib.patient_split(table.patient_ids[rows], (0.77, 0.23), seed + 1)
    names = [table.image_ids[i] for i in rows]
    for k, name in enumerate(splits_lib.OFFICIAL_LISTS):
        with open(os.path.join(out_dir, name), "w") as f:
            f.writelines(f"{n}\n" for n, p in zip(names, part, strict=True) if p == k)


def _render_image(args) -> np.ndarray:
    return render(*args).image


def generate_format(out_dir: str, fmt: str, n: int, size: int = 256, seed: int = 0,
                    workers: int | None = None, site: str = "same") -> str:
    """``generate``'s chests in the layout of release ``fmt`` (``nih`` is ``generate``
    itself), as acquired at ``site`` (``synthetic_formats.SITES``: ``same`` changes nothing)."""
    if site not in synthetic_formats.SITES:
        raise ValueError(f"unknown site {site!r}; expected {', '.join(synthetic_formats.SITES)}")
    if fmt == "nih":
        if site != "same":
            raise ValueError("--site applies to the chexpert, mimic_cxr and padchest formats")
        return generate(out_dir, n, size, seed, workers)
    if not 32 <= size <= 1024:
        raise ValueError(f"size must be in [32, 1024], got {size}")
    params = {"n": n, "size": size, "seed": seed, "version": VERSION, "format": fmt,
              "site": site}
    done = os.path.join(out_dir, DONE_NAME)
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f) == params:
                return out_dir
        raise ValueError(f"{out_dir} holds a synthetic set with other parameters ({done})")
    at = synthetic_formats.SITES[site]
    table = labels_lib.load_label_table()
    pool = sample_rows(
        n if at.no_finding_share is None else min(4 * n, len(table)), seed)
    rows = synthetic_formats.pick_rows(table, pool, n, at)
    tasks = [(table.labels[i], size, stable_seed(seed, int(table.patient_ids[i])),
              seed * 1_000_003 + i) for i in rows]
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    images = [synthetic_formats.apply_site(image, at, seed * 7_919 + i) for i, image in zip(
        rows, nih_layout.ordered_map(_render_image, tasks, workers if n > 64 else 0, 16),
        strict=True)]
    synthetic_formats.write(out_dir, fmt, table, rows, images, seed)
    with open(done, "w") as f:
        json.dump(params, f)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags: where, how many, how large, which seed, layout and site."""
    parser = cli.parser("python -m cxrjax.data.synthetic", __doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--format", default="nih", choices=["nih", *synthetic_formats.FORMATS])
    parser.add_argument("--site", default="same", choices=list(synthetic_formats.SITES),
                        help="'other': another hospital's exposure, noise, marker, prevalence")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Writes the set; 1 and the reason on bad input."""
    try:
        generate_format(args.out, args.format, args.n, args.size, args.seed,
                                          args.workers, args.site)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    layout = "NIH" if args.format == "nih" else args.format
    print(f"wrote {args.n} synthetic images ({args.size}px) in {layout} layout to {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, run_cli)
