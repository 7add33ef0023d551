"""Drawing one synthetic chest X-ray: anatomy from the patient, pose and look-alikes from the
image, and each finding from its own generator, with the boxes of what was drawn.

Every finding draws from its own generator (seeded by the image and the class), and the
anatomy, pose, look-alikes and noise from generators that never depend on the labels: adding
or removing one finding changes only that finding's pixels. That is what makes its box exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from cxrjax.data import labels as labels_lib

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


class _Canvas:
    """The chest being drawn: its attenuation ``A``, the grid, the lungs, and the boxes of what
    was drawn. Every layer is added in the order the drawing always used (float32 sums)."""

    def __init__(self, X, Y, A, sides, lungs, lung_rx, lung_ry, lung_cy, dome):
        self.X, self.Y, self.A, self.sides, self.lungs = X, Y, A, sides, lungs
        self.lung_rx, self.lung_ry, self.lung_cy, self.dome = lung_rx, lung_ry, lung_cy, dome
        self.boxes: list[tuple[str, tuple[float, float, float, float]]] = []

    def add(self, name: str, layer: np.ndarray) -> None:
        self.A = self.A + layer
        box = _half_peak_box(layer) if name in labels_lib.BOX_CLASSES else None
        if box is not None:
            self.boxes.append((name, box))

    def side(self, f):
        return self.sides["R" if f.random() < 0.5 else "L"]


def _anatomy(X, Y, pr, size: int, emph: float) -> _Canvas:
    """Body, spine, lungs (hyperinflated, darker, flatter by ``emph``), texture and ribs."""
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
    return _Canvas(X, Y, A, sides, lungs, lung_rx, lung_ry, lung_cy, dome)


def _heart(c: _Canvas, pr, growth: float) -> None:
    """Cardiomegaly: a wider heart, overlapping the healthy range; its box is the whole heart."""
    heart_rx = 0.27 * pr.uniform(0.86, 1.12) * (1.0 + growth)
    heart = 0.4 * _ellipse(c.X, c.Y, 0.1 + 0.25 * (heart_rx - 0.27), 0.33, heart_rx, 0.21,
                           edge=0.04, angle=-0.3)
    c.A += heart
    if growth > 0:
        c.boxes.append(("Cardiomegaly", _half_peak_box(heart)))


def _look_alikes(c: _Canvas, rng, size: int) -> None:
    """In healthy and sick chests alike: calcified granulomas (nodule-like dots), a patch of
    haze (an opacity-like cloud), a low soft-tissue shadow (effusion-like), mottled exposure."""
    X, Y = c.X, c.Y
    for _ in range(rng.poisson(0.6)):
        s_ = c.sides["R" if rng.random() < 0.5 else "L"]
        gx, gy = s_[0] + rng.uniform(-0.2, 0.2), rng.uniform(-0.5, 0.4)
        r = rng.uniform(0.015, 0.035)
        c.A += rng.uniform(0.1, 0.4) * _ellipse(X, Y, gx, gy, r, r, edge=0.12) * s_[1]
    haze_at = (rng.choice([-0.36, 0.36]), rng.uniform(-0.3, 0.35), rng.uniform(0.08, 0.16))
    if rng.random() < 0.3:
        c.A += rng.uniform(0.05, 0.22) * _ellipse(X, Y, haze_at[0], haze_at[1], haze_at[2],
                                                  haze_at[2], edge=0.4) * c.lungs
    shadow = rng.uniform(0.0, 0.15) if rng.random() < 0.35 else 0.0
    c.A += shadow * c.lungs * 1.0 / (1.0 + np.exp(np.clip((c.dome - 0.2 - Y) / 0.06, -30, 30)))
    c.A += rng.uniform(0.0, 0.06) * _noise(rng, size, size / 25) * c.lungs


def _focal_findings(c: _Canvas, has: dict, fr: dict) -> None:
    """Effusion, pneumothorax, atelectasis, mass and nodules: each its own generator."""
    X, Y = c.X, c.Y
    if has["Effusion"]:  # basal fluid with a meniscus, one or both sides: one box per side
        f = fr["Effusion"]
        first = "R" if f.random() < 0.5 else "L"
        for s in ("R", "L") if f.random() < 0.3 else (first,):
            level = c.dome - f.uniform(0.05, 0.3)
            meniscus = level - 0.25 * np.abs(X - c.sides[s][0] * 0.6) ** 1.5
            fluid = 1.0 / (1.0 + np.exp(np.clip((meniscus - Y) / 0.03, -30, 30)))
            c.add("Effusion", _strength(f, 0.25, 0.9) * fluid * c.sides[s][1])
    if has["Pneumothorax"]:  # collapsed edge: a lucent rim, and the visceral pleural line
        f = fr["Pneumothorax"]
        cx, lung = c.side(f)
        sx = np.sign(cx)
        collapsed = _ellipse(X, Y, cx - sx * 0.06, c.lung_cy + 0.12,
                             c.lung_rx * f.uniform(0.65, 0.85), c.lung_ry * f.uniform(0.7, 0.88))
        rim = np.clip(lung - collapsed, 0, 1)
        edge_line = np.clip(collapsed - _ellipse(X, Y, cx - sx * 0.06, c.lung_cy + 0.12,
                                                 c.lung_rx * 0.6, c.lung_ry * 0.66), 0, 1)
        amp = _strength(f, 0.13, 0.48)
        c.add("Pneumothorax", -amp * rim + 0.3 * amp * edge_line * (rim.max() > 0))
    if has["Atelectasis"]:  # plate-like band at a base, and a raised hemidiaphragm
        f = fr["Atelectasis"]
        cx, lung = c.side(f)
        y0 = c.dome - f.uniform(0.15, 0.35)
        band = _ellipse(X, Y, cx, y0, c.lung_rx * f.uniform(0.5, 0.9), 0.025,
                        angle=f.uniform(-0.3, 0.3), edge=0.2)
        amp = _strength(f, 0.18, 0.68)
        raised = 1.0 / (1.0 + np.exp(np.clip((c.dome - f.uniform(0.06, 0.15) - Y) / 0.02, -30,
                                             30)))
        c.add("Atelectasis", amp * lung * (band + f.uniform(0.2, 0.4) * raised))
    if has["Mass"]:
        f = fr["Mass"]
        cx, lung = c.side(f)
        mx, my = cx + f.uniform(-0.15, 0.15), f.uniform(-0.35, 0.3)
        c.add("Mass", _strength(f, 0.24, 0.88) * _ellipse(X, Y, mx, my,
                                                          *f.uniform(0.07, 0.14, 2), edge=0.08))
    if has["Nodule"]:  # one to three: one box each
        f = fr["Nodule"]
        for _ in range(f.integers(1, 4)):
            s_ = c.side(f)
            nx, ny = s_[0] + f.uniform(-0.18, 0.18), f.uniform(-0.45, 0.35)
            r = f.uniform(0.025, 0.05)
            c.add("Nodule", _strength(f, 0.21, 0.77) * _ellipse(X, Y, nx, ny, r, r, edge=0.1))


_PATCHY = {"Infiltration": ((4, 8), 0.12, 0.05, 0.77),
           "Pneumonia": ((6, 10), 0.09, 0.06, 0.66),
           "Consolidation": ((10, 16), 0.06, 0.06, 0.65)}


def _diffuse_findings(c: _Canvas, has: dict, fr: dict, size: int) -> None:
    """Patchy opacities, edema, fibrosis, pleural thickening and hernia."""
    X, Y = c.X, c.Y
    for name, (k, spread, radius, strength) in _PATCHY.items():
        if has[name]:
            f = fr[name]
            s_ = c.side(f)
            py = f.uniform(-0.2, 0.35)
            blobs = _blobs(X, Y, f, f.integers(*k), s_[0], py, spread, radius)
            if name == "Consolidation":  # confluent, sharp-edged: clipped by a fissure
                blobs = np.clip(blobs * 2, 0, 1) * (Y > py - 0.12)
            c.add(name, _strength(f, 0.25, 1.0) * strength * blobs * s_[1])
    if has["Edema"]:  # bilateral perihilar haze (bat wing)
        haze = (_ellipse(X, Y, -0.2, 0.05, 0.25, 0.3, edge=0.5) +
                _ellipse(X, Y, 0.2, 0.05, 0.25, 0.3, edge=0.5))
        c.add("Edema", _strength(fr["Edema"], 0.13, 0.56) * haze * c.lungs)
    if has["Fibrosis"]:  # reticular net in the periphery
        f = fr["Fibrosis"]
        # A coarse net (cells of ~1/25 of the image) so it survives 64-px training crops.
        net = np.abs(_noise(f, size, size / 50))
        periphery = np.clip(np.abs(X) - 0.15, 0, 1) * 2.5 * (Y > f.uniform(-0.3, 0.1))
        c.add("Fibrosis", _strength(f, 0.24, 0.8) * (net < 0.35) * c.lungs *
              np.clip(periphery, 0, 1))
    if has["Pleural_Thickening"]:  # bright band along the lateral wall or an apical cap
        f = fr["Pleural_Thickening"]
        cx, _ = c.side(f)
        sx = np.sign(cx)
        wall = _ellipse(X, Y, cx, c.lung_cy, c.lung_rx, c.lung_ry) - _ellipse(
            X, Y, cx - sx * 0.03, c.lung_cy + 0.03, c.lung_rx * 0.82, c.lung_ry * 0.92)
        c.add("Pleural_Thickening", _strength(f, 0.3, 1.25) * np.clip(wall, 0, 1) *
              (Y < f.uniform(0.0, 0.4)))
    if has["Hernia"]:  # retrocardiac round density with a dark gas bubble
        f = fr["Hernia"]
        hx, hy, r = f.uniform(-0.05, 0.1), c.dome - f.uniform(0.05, 0.15), f.uniform(0.08, 0.14)
        amp = _strength(f, 0.5, 1.2)
        c.add("Hernia", amp * (_ellipse(X, Y, hx, hy, r, r * 0.8)
                               - 1.2 * _ellipse(X, Y, hx, hy - r * 0.35, r * 0.6, r * 0.3)))


def render(labels: np.ndarray, size: int, patient_seed: int, image_seed: int) -> Rendering:
    """One (size, size) uint8 chest with the findings of the 14-vector ``labels``, and the
    boxes of what was drawn for the 8 NIH box classes."""
    pr = np.random.default_rng(patient_seed)  # anatomy: the same for a patient's follow-ups
    rng = np.random.default_rng(image_seed)  # pose, look-alikes, exposure, noise: per image
    has = {c: bool(labels[i]) for i, c in enumerate(labels_lib.CLASSES)}
    fr = {c: np.random.default_rng([image_seed, i]) for i, c in enumerate(labels_lib.CLASSES)}
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    X, Y = np.meshgrid(lin, lin)
    X = X - rng.normal(0, 0.03) - pr.normal(0, 0.02)
    Y = Y - rng.normal(0, 0.03)
    # Emphysema: hyperinflated, darker lungs with fewer markings and flat domes, by degree;
    # healthy patients vary as much in each of these alone.
    emph = _strength(fr["Emphysema"], 0.45, 1.7) if has["Emphysema"] else 0.0
    canvas = _anatomy(X, Y, pr, size, emph)
    _heart(canvas, pr, _strength(fr["Cardiomegaly"], 0.18, 0.65) if has["Cardiomegaly"]
           else 0.0)
    _look_alikes(canvas, rng, size)
    _focal_findings(canvas, has, fr)
    _diffuse_findings(canvas, has, fr, size)
    A = ndimage.gaussian_filter(canvas.A, size / 400)
    A = A + rng.normal(0, 0.03) + rng.uniform(0.03, 0.05) * rng.standard_normal(A.shape)
    gain, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.2)
    img = np.clip(A * gain, 0, 2.0) / 2.0
    return Rendering((255 * img ** gamma).astype(np.uint8), canvas.boxes)
