"""A class heatmap drawn over its X-ray, captioned; a map that shows nothing is said so.

``overlay`` draws a map (Grad-CAM of ``predict``, in [0, 1]) over the region of the image the
model's centre crop saw, at the image's own size; ``cam_problem`` says when a map points
nowhere (zero or constant everywhere), and then no heat is drawn and the caption says why.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def cam_problem(cam: np.ndarray) -> str | None:
    """Why a Grad-CAM map shows nothing, or None when it points somewhere: zero everywhere
    (no part of the feature map raises the class's score: common on the 2x2 map of a 64-px
    crop) or the same value everywhere (a 1x1 map, or no spatial preference)."""
    cam = np.asarray(cam, np.float32)
    where = f"on its {cam.shape[0]}x{cam.shape[1]} feature map"
    if not np.isfinite(cam).all():
        return f"not finite {where}"
    if cam.max() <= 0:
        return f"empty (zero everywhere {where})"
    if cam.max() - cam.min() <= 1e-6 * cam.max():
        return f"constant {where}: it points nowhere"
    return None


MIN_CAPTIONED_SIDE = 256  # a smaller image is enlarged (whole pixels) so its caption fits


def overlay(gray: np.ndarray, cam: np.ndarray, resolution: int, crop: int,
            caption: str = "") -> Image.Image:
    """An RGB image of ``gray``'s size: the heatmap (jet, opacity rising with heat) over the
    region the centre crop saw; the rest of the X-ray is shown as it is. A map that shows
    nothing (``cam_problem``) is not drawn, and the caption says why. An image whose shorter
    side is under MIN_CAPTIONED_SIDE px is enlarged by a whole factor (each pixel a square)
    so that the caption, wrapped to the width, stays readable and whole."""
    from matplotlib import colormaps  # only the colour table

    problem = cam_problem(cam)
    if problem is not None:
        cam = np.zeros_like(np.asarray(cam, np.float32))
        caption = f"{caption}: map {problem}, no heatmap" if caption else \
            f"map {problem}, no heatmap"
    h, w = gray.shape
    o = (resolution - crop) // 2
    x0, x1 = round(o * w / resolution), round((o + crop) * w / resolution)
    y0, y1 = round(o * h / resolution), round((o + crop) * h / resolution)
    heat = np.zeros((h, w), np.float32)
    if x1 > x0 and y1 > y0:
        region = Image.fromarray(np.asarray(cam, np.float32), mode="F").resize(
            (x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        heat[y0:y1, x0:x1] = np.clip(np.asarray(region), 0.0, 1.0)
    lut = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    color = lut[(heat * 255).astype(np.uint8)].astype(np.float32)
    alpha = (0.5 * heat)[..., None]
    rgb = gray[..., None].astype(np.float32) * (1 - alpha) + color * alpha
    img = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    if caption:
        scale = -(-MIN_CAPTIONED_SIDE // min(h, w))
        if scale > 1:
            img = img.resize((w * scale, h * scale), Image.Resampling.NEAREST)
        _draw_caption(img, caption)
    return img


def _draw_caption(img: Image.Image, caption: str) -> None:
    """White text on a black box at the top left, wrapped at spaces to the image's width."""
    draw = ImageDraw.Draw(img)
    try:  # readable on a 1024-px X-ray; PIL's fixed bitmap font without FreeType
        font = ImageFont.load_default(size=max(10, min(img.size) // 40))
    except (ImportError, TypeError, ValueError):
        font = ImageFont.load_default()
    lines, line = [], ""
    for word in caption.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > img.width - 8:
            lines.append(line)
            candidate = word
        line = candidate
    text = "\n".join([*lines, line])
    box = draw.multiline_textbbox((4, 4), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.multiline_text((4, 4), text, fill=(255, 255, 255), font=font)
