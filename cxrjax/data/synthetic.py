"""A synthetic ChestX-ray14 in the exact NIH layout, for demos and tests without the 42 GB.

    python -m cxrjax.data.synthetic --out DIR --n N --size S --seed K

Labels, patients and follow-ups are whole patients drawn from the REAL label table, so the
imbalance (Hernia 0.2%, No Finding 54%) and the co-occurrences are the real ones; image names
are the real names, so every split scheme applies unchanged. Each image is a procedural chest
(body, lungs, heart, ribs, spine, diaphragm, noise; anatomy fixed per patient) with a drawn
sign per finding, at a random position, size and contrast. The three "patchy opacity" classes
(Infiltration, Pneumonia, Consolidation) are drawn alike and differ only in extent and
texture: the fine-grained confusion the paper is about.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrjax.data import labels as labels_lib
from cxrjax.data import prepare
from cxrjax.data import splits as splits_lib

CSV_NAME = "Data_Entry_2017_v2020.csv"
_DONE = ".synthetic_complete.json"
_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
           "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
           "OriginalImagePixelSpacing[x", "y]"]


# ------------------------------------------------------------------ drawing ---

def _ellipse(X, Y, cx, cy, rx, ry, edge=0.04, angle=0.0):
    """Soft mask of a (rotated) ellipse: 1 inside, 0 outside, a sigmoid edge."""
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


def render(labels: np.ndarray, size: int, patient_seed: int, image_seed: int) -> np.ndarray:
    """One (size, size) uint8 chest with the findings of the 14-vector ``labels``."""
    pr = np.random.default_rng(patient_seed)  # anatomy: the same for a patient's follow-ups
    rng = np.random.default_rng(image_seed)  # findings, pose, exposure: per image
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    X, Y = np.meshgrid(lin, lin)
    X = X - rng.normal(0, 0.03) - pr.normal(0, 0.02)
    Y = Y - rng.normal(0, 0.03)
    has = {c: bool(labels[i]) for i, c in enumerate(labels_lib.CLASSES)}

    scale = pr.uniform(0.92, 1.05) * (1.08 if has["Emphysema"] else 1.0)
    lung_rx, lung_ry = 0.30 * scale, 0.58 * scale
    lung_cy = -0.08
    dome = 0.52 * scale - (0.1 if has["Emphysema"] else 0.0)  # flattened by hyperinflation
    body = _ellipse(X, Y, 0, 0.1, pr.uniform(0.82, 0.92), 1.3, edge=0.03)
    A = 0.95 * body + 0.25 * _ellipse(X, Y, 0, 0.1, 0.09, 1.2, edge=0.2)  # soft tissue, spine

    sides = {}
    for side, sx in (("R", -1.0), ("L", 1.0)):  # image left is the patient's right
        cx = sx * 0.36 * scale
        lung = _ellipse(X, Y, cx, lung_cy, lung_rx, lung_ry, edge=0.05)
        lung *= 1.0 / (1.0 + np.exp(np.clip((Y - (dome + 0.12 * (X - cx) ** 2 * 4 - 0.05 *
                                                  (sx > 0))) / 0.02, -30, 30)))
        sides[side] = (cx, lung)
    lungs = np.maximum(sides["R"][1], sides["L"][1])
    darkness = 0.75 if has["Emphysema"] else 0.6
    markings = 0.05 if has["Emphysema"] else 0.12
    texture = _noise(pr, size, size / 40)
    A -= lungs * (darkness - markings * texture)
    ribs = 0.5 + 0.5 * np.sin((Y + 0.15 * X ** 2) * (2 * np.pi * pr.uniform(5.5, 6.5)))
    A += 0.12 * lungs * ribs ** 3

    heart_rx = 0.27 * pr.uniform(0.92, 1.08)
    if has["Cardiomegaly"]:
        heart_rx *= rng.uniform(1.35, 1.6)
    heart = _ellipse(X, Y, 0.1 + 0.25 * (heart_rx - 0.27), 0.33, heart_rx, 0.21, edge=0.04,
                     angle=-0.3)
    A += 0.4 * heart

    side = "R" if rng.random() < 0.5 else "L"
    cx, lung = sides[side]
    sx = np.sign(cx)
    if has["Effusion"]:  # basal fluid with a meniscus, one or both sides
        for s in ("R", "L") if rng.random() < 0.3 else (side,):
            level = dome - rng.uniform(0.12, 0.3)
            meniscus = level - 0.25 * np.abs(X - sides[s][0] * 0.6) ** 1.5
            fluid = 1.0 / (1.0 + np.exp(np.clip((meniscus - Y) / 0.02, -30, 30)))
            A += rng.uniform(0.45, 0.6) * fluid * sides[s][1]
    if has["Pneumothorax"]:  # collapsed edge: lucent rim without markings at apex / side
        collapsed = _ellipse(X, Y, cx - sx * 0.06, lung_cy + 0.12,
                             lung_rx * rng.uniform(0.6, 0.75), lung_ry * rng.uniform(0.65, 0.8))
        rim = np.clip(sides[side][1] - collapsed, 0, 1)
        edge_line = np.clip(collapsed - _ellipse(X, Y, cx - sx * 0.06, lung_cy + 0.12,
                                                 lung_rx * 0.58, lung_ry * 0.62), 0, 1)
        A -= rim * (rng.uniform(0.2, 0.3) + markings * texture)  # darker, and no markings
        A += 0.15 * edge_line * (rim.max() > 0)  # the visceral pleural line
    if has["Atelectasis"]:  # plate-like band at a base, and a raised hemidiaphragm
        y0 = dome - rng.uniform(0.15, 0.35)
        band = _ellipse(X, Y, cx, y0, lung_rx * rng.uniform(0.5, 0.9), 0.025,
                        angle=rng.uniform(-0.3, 0.3), edge=0.2)
        A += rng.uniform(0.4, 0.6) * band * lung + 0.35 * lung * (Y > dome - 0.12)
    if has["Mass"]:
        mx, my = cx + rng.uniform(-0.15, 0.15), rng.uniform(-0.35, 0.3)
        A += rng.uniform(0.5, 0.8) * _ellipse(X, Y, mx, my, *(rng.uniform(0.09, 0.14, 2)),
                                              edge=0.08)
    if has["Nodule"]:
        for _ in range(rng.integers(1, 4)):
            s_ = sides["R" if rng.random() < 0.5 else "L"]
            nx, ny = s_[0] + rng.uniform(-0.18, 0.18), rng.uniform(-0.45, 0.35)
            r = rng.uniform(0.03, 0.05)
            A += rng.uniform(0.6, 0.9) * _ellipse(X, Y, nx, ny, r, r, edge=0.1)
    patchy = {"Infiltration": (rng.integers(4, 8), 0.12, 0.05, 0.35),
              "Pneumonia": (rng.integers(6, 10), 0.09, 0.06, 0.5),
              "Consolidation": (rng.integers(10, 16), 0.06, 0.06, 0.7)}
    for name, (k, spread, radius, strength) in patchy.items():
        if has[name]:
            s_ = sides["R" if rng.random() < 0.5 else "L"]
            py = rng.uniform(-0.2, 0.35)
            blobs = _blobs(X, Y, rng, k, s_[0], py, spread, radius)
            if name == "Consolidation":  # confluent, sharp-edged: clipped by a fissure
                blobs = np.clip(blobs * 2, 0, 1) * (Y > py - 0.12)
            A += strength * rng.uniform(0.8, 1.2) * blobs * s_[1]
    if has["Edema"]:  # bilateral perihilar haze (bat wing)
        haze = (_ellipse(X, Y, -0.2, 0.05, 0.25, 0.3, edge=0.5) +
                _ellipse(X, Y, 0.2, 0.05, 0.25, 0.3, edge=0.5))
        A += rng.uniform(0.35, 0.5) * haze * lungs
    if has["Fibrosis"]:  # reticular net in the periphery
        # A coarse net (cells of ~1/25 of the image) so it survives 64-px training crops.
        net = np.abs(_noise(rng, size, size / 50))
        periphery = np.clip(np.abs(X) - 0.15, 0, 1) * 2.5 * (Y > rng.uniform(-0.3, 0.1))
        A += rng.uniform(0.25, 0.35) * (net < 0.35) * lungs * np.clip(periphery, 0, 1)
    if has["Pleural_Thickening"]:  # bright band along the lateral wall or an apical cap
        wall = _ellipse(X, Y, cx, lung_cy, lung_rx, lung_ry) - _ellipse(
            X, Y, cx - sx * 0.03, lung_cy + 0.03, lung_rx * 0.82, lung_ry * 0.92)
        A += rng.uniform(0.6, 0.8) * np.clip(wall, 0, 1) * (Y < rng.uniform(0.0, 0.4))
    if has["Hernia"]:  # retrocardiac round density with a dark gas bubble
        hx, hy = rng.uniform(-0.05, 0.1), dome - rng.uniform(0.05, 0.15)
        r = rng.uniform(0.1, 0.14)
        A += 0.4 * _ellipse(X, Y, hx, hy, r, r * 0.8)
        A -= 0.5 * _ellipse(X, Y, hx, hy - r * 0.35, r * 0.6, r * 0.3)

    A = ndimage.gaussian_filter(A, size / 400)
    A += rng.normal(0, 0.03) + 0.025 * rng.standard_normal(A.shape)
    gain, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.2)
    img = np.clip(A * gain, 0, 1.6) / 1.6
    return (255 * img ** gamma).astype(np.uint8)


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
    Image.fromarray(render(labels, size, patient_seed, image_seed)).save(path, optimize=False)


def generate(out_dir: str, n: int, size: int = 256, seed: int = 0,
             workers: int | None = None) -> str:
    """Writes (or reuses, if complete with the same parameters) the NIH-layout set."""
    if not 32 <= size <= 1024:
        raise ValueError(f"size must be in [32, 1024], got {size}")
    params = {"n": n, "size": size, "seed": seed, "version": 2}
    done = os.path.join(out_dir, _DONE)
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f) == params:
                return out_dir
        raise ValueError(f"{out_dir} holds a synthetic set with other parameters "
                         f"({done}); delete it or choose another folder")
    table = labels_lib.load_label_table()
    rows = sample_rows(n, seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    tasks = [(os.path.join(out_dir, "images", table.image_ids[i]), table.labels[i], size,
              _stable_seed(seed, int(table.patient_ids[i])), seed * 1_000_003 + i)
             for i in rows]
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    for _ in prepare.ordered_map(_render_task, tasks, workers if n > 64 else 0, chunk=16):
        pass
    _write_tables(out_dir, table, rows, size, seed)
    with open(done, "w") as f:
        json.dump(params, f)
    return out_dir


def _stable_seed(seed: int, patient: int) -> int:
    return (seed * 2_654_435_761 + patient * 40_503) % 2**63


def _write_tables(out_dir: str, table: labels_lib.LabelTable, rows: list[int], size: int,
                  seed: int) -> None:
    """The Data_Entry CSV and NIH-style official lists (a seeded patient-level 77/23 cut)."""
    with open(os.path.join(out_dir, CSV_NAME), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_HEADER)
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
    args = parser.parse_args(argv)
    try:
        generate(args.out, args.n, args.size, args.seed, args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.n} synthetic images ({args.size}px) in NIH layout to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
