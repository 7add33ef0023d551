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
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrjax.data import labels as labels_lib
from cxrjax.data import nih_layout, synthetic_formats
from cxrjax.data import splits as splits_lib

log = logging.getLogger("cxrjax")

DONE_NAME = ".synthetic_complete.json"
VERSION = 3  # of the drawing: part of the cache folder name and of the complete marker


# ------------------------------------------------------------------ drawing ---
# Every finding draws from its own generator (seeded by the image and the class), and the
# anatomy, pose, look-alikes and noise from generators that never depend on the labels: adding
# or removing one finding changes only that finding's pixels. That is what makes its box exact.

INVISIBLE = 0.05  # share of positives drawn without a visible sign (as readers miss some)


class Rendering(NamedTuple):
    """A rendered chest and the boxes of what was drawn for the 8 NIH box classes.

    ``boxes`` holds ``(class name, (x, y, w, h))`` in the image's own pixels (continuous
    pixel edges, x, y = top-left corner): the bounding rectangle of each drawn part where its
    contribution is at least half its peak (see ``_half_peak_box``).
    """

    image: np.ndarray  # (size, size) uint8
    boxes: list[tuple[str, tuple[float, float, float, float]]]


def _ellipse(X, Y, cx, cy, rx, ry, edge=0.04, angle=0.0):
    """Soft mask of a (rotated) ellipse: 1 inside, 0 outside, a sigmoid edge (0.5 on it)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (X - cx) * c + (Y - cy) * s, -(X - cx) * s + (Y - cy) * c
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -30, 30)))


def _blobs(X, Y, rng, k, cx, cy, spread, radius):
    """``k`` soft gaussian blobs scattered around (cx, cy)."""
    out = np.zeros_like(X)
    for _ in range(k):
        bx, by = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
        r = radius * rng.uniform(0.6, 1.4)
        out += np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * r * r))
    return np.clip(out, 0, 1.2)


def _noise(rng, size, sigma):
    """Smooth random texture, zero mean, unit-ish std."""
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _strength(rng, low, high):
    """A finding's contrast: uniform in [low, high], or 0 for the INVISIBLE share."""
    hidden = rng.random() < INVISIBLE
    value = rng.uniform(low, high)
    return 0.0 if hidden else value


def _half_peak_box(layer):
    """(x, y, w, h) in pixel edges of where ``|layer|`` >= half its peak; None if empty."""
    magnitude = np.abs(layer)
    peak = magnitude.max()
    if peak < 1e-3:
        return None
    mask = magnitude >= 0.5 * peak
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1))


def render(labels: np.ndarray, size: int, patient_seed: int, image_seed: int) -> Rendering:
    """One (size, size) uint8 chest with the findings of the 14-vector ``labels``, and the
    boxes of what was drawn for the 8 NIH box classes."""
    pr = np.random.default_rng(patient_seed)  # anatomy: the same for a patient's follow-ups
    rng = np.random.default_rng(image_seed)  # pose, look-alikes, exposure, noise: per image
    has = {c: bool(labels[i]) for i, c in enumerate(labels_lib.CLASSES)}
    fr = {c: np.random.default_rng([image_seed, i]) for i, c in enumerate(labels_lib.CLASSES)}
    boxes: list[tuple[str, tuple[float, float, float, float]]] = []
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    X, Y = np.meshgrid(lin, lin)
    X = X - rng.normal(0, 0.03) - pr.normal(0, 0.02)
    Y = Y - rng.normal(0, 0.03)

    # Emphysema: hyperinflated, darker lungs with fewer markings and flat domes, by degree;
    # healthy patients vary as much in each of these alone.
    emph = _strength(fr["Emphysema"], 0.45, 1.7) if has["Emphysema"] else 0.0
    scale = pr.uniform(0.9, 1.06) * (1.0 + 0.06 * emph)
    lung_rx, lung_ry = 0.30 * scale, 0.58 * scale
    lung_cy = -0.08
    dome = 0.52 * scale + pr.uniform(-0.05, 0.05) - 0.08 * emph
    body = _ellipse(X, Y, 0, 0.1, pr.uniform(0.8, 0.94), 1.3, edge=0.03)
    A = 0.95 * body + 0.25 * _ellipse(X, Y, 0, 0.1, 0.09, 1.2, edge=0.2)  # soft tissue, spine

    sides = {}
    for side, sx in (("R", -1.0), ("L", 1.0)):  # image left is the patient's right
        cx = sx * 0.36 * scale
        lung = _ellipse(X, Y, cx, lung_cy, lung_rx, lung_ry, edge=0.05)
        lung *= 1.0 / (1.0 + np.exp(np.clip((Y - (dome + 0.12 * (X - cx) ** 2 * 4 - 0.05 *
                                                  (sx > 0))) / 0.02, -30, 30)))
        sides[side] = (cx, lung)
    lungs = np.maximum(sides["R"][1], sides["L"][1])
    darkness = pr.uniform(0.5, 0.66) + 0.1 * emph
    markings = pr.uniform(0.08, 0.15) * (1.0 - 0.45 * emph)
    texture = _noise(pr, size, size / 40)
    A -= lungs * (darkness - markings * texture)
    ribs = 0.5 + 0.5 * np.sin((Y + 0.15 * X ** 2) * (2 * np.pi * pr.uniform(5.5, 6.5)))
    A += pr.uniform(0.08, 0.14) * lungs * ribs ** 3

    # Cardiomegaly: a wider heart, overlapping the healthy range; its box is the whole heart.
    growth = _strength(fr["Cardiomegaly"], 0.18, 0.65) if has["Cardiomegaly"] else 0.0
    heart_rx = 0.27 * pr.uniform(0.86, 1.12) * (1.0 + growth)
    heart = 0.4 * _ellipse(X, Y, 0.1 + 0.25 * (heart_rx - 0.27), 0.33, heart_rx, 0.21,
                           edge=0.04, angle=-0.3)
    A += heart
    if growth > 0:
        boxes.append(("Cardiomegaly", _half_peak_box(heart)))

    def add(name: str, layer: np.ndarray) -> None:
        nonlocal A
        A = A + layer
        box = _half_peak_box(layer) if name in labels_lib.BOX_CLASSES else None
        if box is not None:
            boxes.append((name, box))

    def pick_side(f):
        return sides["R" if f.random() < 0.5 else "L"]

    # Look-alikes in healthy and sick chests alike: calcified granulomas (nodule-like dots),
    # a patch of haze (an opacity-like cloud), a low soft-tissue shadow (effusion-like).
    for _ in range(rng.poisson(0.6)):
        s_ = sides["R" if rng.random() < 0.5 else "L"]
        gx, gy = s_[0] + rng.uniform(-0.2, 0.2), rng.uniform(-0.5, 0.4)
        r = rng.uniform(0.015, 0.035)
        A += rng.uniform(0.1, 0.4) * _ellipse(X, Y, gx, gy, r, r, edge=0.12) * s_[1]
    haze_at = (rng.choice([-0.36, 0.36]), rng.uniform(-0.3, 0.35), rng.uniform(0.08, 0.16))
    if rng.random() < 0.3:
        A += rng.uniform(0.05, 0.22) * _ellipse(X, Y, haze_at[0], haze_at[1], haze_at[2],
                                                haze_at[2], edge=0.4) * lungs
    shadow = rng.uniform(0.0, 0.15) if rng.random() < 0.35 else 0.0
    A += shadow * lungs * 1.0 / (1.0 + np.exp(np.clip((dome - 0.2 - Y) / 0.06, -30, 30)))
    A += rng.uniform(0.0, 0.06) * _noise(rng, size, size / 25) * lungs  # mottled exposure

    if has["Effusion"]:  # basal fluid with a meniscus, one or both sides: one box per side
        f = fr["Effusion"]
        first = "R" if f.random() < 0.5 else "L"
        for s in ("R", "L") if f.random() < 0.3 else (first,):
            level = dome - f.uniform(0.05, 0.3)
            meniscus = level - 0.25 * np.abs(X - sides[s][0] * 0.6) ** 1.5
            fluid = 1.0 / (1.0 + np.exp(np.clip((meniscus - Y) / 0.03, -30, 30)))
            add("Effusion", _strength(f, 0.25, 0.9) * fluid * sides[s][1])
    if has["Pneumothorax"]:  # collapsed edge: a lucent rim, and the visceral pleural line
        f = fr["Pneumothorax"]
        cx, lung = pick_side(f)
        sx = np.sign(cx)
        collapsed = _ellipse(X, Y, cx - sx * 0.06, lung_cy + 0.12,
                             lung_rx * f.uniform(0.65, 0.85), lung_ry * f.uniform(0.7, 0.88))
        rim = np.clip(lung - collapsed, 0, 1)
        edge_line = np.clip(collapsed - _ellipse(X, Y, cx - sx * 0.06, lung_cy + 0.12,
                                                 lung_rx * 0.6, lung_ry * 0.66), 0, 1)
        amp = _strength(f, 0.13, 0.48)
        add("Pneumothorax", -amp * rim + 0.3 * amp * edge_line * (rim.max() > 0))
    if has["Atelectasis"]:  # plate-like band at a base, and a raised hemidiaphragm
        f = fr["Atelectasis"]
        cx, lung = pick_side(f)
        y0 = dome - f.uniform(0.15, 0.35)
        band = _ellipse(X, Y, cx, y0, lung_rx * f.uniform(0.5, 0.9), 0.025,
                        angle=f.uniform(-0.3, 0.3), edge=0.2)
        amp = _strength(f, 0.18, 0.68)
        raised = 1.0 / (1.0 + np.exp(np.clip((dome - f.uniform(0.06, 0.15) - Y) / 0.02, -30,
                                             30)))
        add("Atelectasis", amp * lung * (band + f.uniform(0.2, 0.4) * raised))
    if has["Mass"]:
        f = fr["Mass"]
        cx, lung = pick_side(f)
        mx, my = cx + f.uniform(-0.15, 0.15), f.uniform(-0.35, 0.3)
        add("Mass", _strength(f, 0.24, 0.88) * _ellipse(X, Y, mx, my, *f.uniform(0.07, 0.14, 2),
                                                       edge=0.08))
    if has["Nodule"]:  # one to three: one box each
        f = fr["Nodule"]
        for _ in range(f.integers(1, 4)):
            s_ = pick_side(f)
            nx, ny = s_[0] + f.uniform(-0.18, 0.18), f.uniform(-0.45, 0.35)
            r = f.uniform(0.025, 0.05)
            add("Nodule", _strength(f, 0.21, 0.77) * _ellipse(X, Y, nx, ny, r, r, edge=0.1))
    patchy = {"Infiltration": ((4, 8), 0.12, 0.05, 0.77),
              "Pneumonia": ((6, 10), 0.09, 0.06, 0.66),
              "Consolidation": ((10, 16), 0.06, 0.06, 0.65)}
    for name, (k, spread, radius, strength) in patchy.items():
        if has[name]:
            f = fr[name]
            s_ = pick_side(f)
            py = f.uniform(-0.2, 0.35)
            blobs = _blobs(X, Y, f, f.integers(*k), s_[0], py, spread, radius)
            if name == "Consolidation":  # confluent, sharp-edged: clipped by a fissure
                blobs = np.clip(blobs * 2, 0, 1) * (Y > py - 0.12)
            add(name, _strength(f, 0.25, 1.0) * strength * blobs * s_[1])
    if has["Edema"]:  # bilateral perihilar haze (bat wing)
        haze = (_ellipse(X, Y, -0.2, 0.05, 0.25, 0.3, edge=0.5) +
                _ellipse(X, Y, 0.2, 0.05, 0.25, 0.3, edge=0.5))
        add("Edema", _strength(fr["Edema"], 0.13, 0.56) * haze * lungs)
    if has["Fibrosis"]:  # reticular net in the periphery
        f = fr["Fibrosis"]
        # A coarse net (cells of ~1/25 of the image) so it survives 64-px training crops.
        net = np.abs(_noise(f, size, size / 50))
        periphery = np.clip(np.abs(X) - 0.15, 0, 1) * 2.5 * (Y > f.uniform(-0.3, 0.1))
        add("Fibrosis", _strength(f, 0.24, 0.8) * (net < 0.35) * lungs *
            np.clip(periphery, 0, 1))
    if has["Pleural_Thickening"]:  # bright band along the lateral wall or an apical cap
        f = fr["Pleural_Thickening"]
        cx, _ = pick_side(f)
        sx = np.sign(cx)
        wall = _ellipse(X, Y, cx, lung_cy, lung_rx, lung_ry) - _ellipse(
            X, Y, cx - sx * 0.03, lung_cy + 0.03, lung_rx * 0.82, lung_ry * 0.92)
        add("Pleural_Thickening", _strength(f, 0.3, 1.25) * np.clip(wall, 0, 1) *
            (Y < f.uniform(0.0, 0.4)))
    if has["Hernia"]:  # retrocardiac round density with a dark gas bubble
        f = fr["Hernia"]
        hx, hy, r = f.uniform(-0.05, 0.1), dome - f.uniform(0.05, 0.15), f.uniform(0.08, 0.14)
        amp = _strength(f, 0.5, 1.2)
        add("Hernia", amp * (_ellipse(X, Y, hx, hy, r, r * 0.8)
                             - 1.2 * _ellipse(X, Y, hx, hy - r * 0.35, r * 0.6, r * 0.3)))

    A = ndimage.gaussian_filter(A, size / 400)
    A = A + rng.normal(0, 0.03) + rng.uniform(0.03, 0.05) * rng.standard_normal(A.shape)
    gain, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.2)
    img = np.clip(A * gain, 0, 2.0) / 2.0
    return Rendering((255 * img ** gamma).astype(np.uint8), boxes)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--format", default="nih", choices=["nih", *synthetic_formats.FORMATS])
    parser.add_argument("--site", default="same", choices=list(synthetic_formats.SITES),
                        help="'other': another hospital's exposure, noise, marker, prevalence")
    args = parser.parse_args(argv)
    try:
        synthetic_formats.generate_format(args.out, args.format, args.n, args.size, args.seed,
                                          args.workers, args.site)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    layout = "NIH" if args.format == "nih" else args.format
    print(f"wrote {args.n} synthetic images ({args.size}px) in {layout} layout to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
