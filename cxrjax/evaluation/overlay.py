"""A class heatmap drawn over its X-ray, captioned, with its colour scale; a map that shows
nothing is said so.

``scaled`` brings a raw map (``cxrjax.evaluation.heatmaps``) to [0, 1]; ``overlay`` draws it
over the region of the image the model's centre crop saw, at the image's own size, with a colour bar
at the right; ``cam_problem`` says when a map points nowhere (zero or constant everywhere), and
then no heat is drawn and the caption says why.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxrjax.data.crop import centre_crop_offset


def cam_problem(cam: np.ndarray) -> str | None:
    """Why a Grad-CAM map shows nothing, or None when it points somewhere: zero everywhere
    (no part of the feature map raises the class's score: common on the 2x2 map of a 64-px
    crop) or the same value everywhere (a 1x1 map, or no spatial preference)."""
    cam = np.asarray(cam, np.float32)
    where = f"on its {cam.shape[0]}x{cam.shape[1]} feature map"
    if not np.isfinite(cam).all():
        return f"not finite {where}"
    if not cam.any():
        return f"empty (zero everywhere {where})"
    if cam.max() - cam.min() <= 1e-6 * np.abs(cam).max():
        return f"constant {where}: it points nowhere"
    return None


def scaled(raw: np.ndarray, signed: bool = False) -> np.ndarray:
    """A raw map in [0, 1] for drawing: a Grad-CAM (ReLU'd, so 0 means "no evidence") over its
    maximum; a ``signed`` map (a CAM: its values are logit contributions of either sign)
    min-max. A map that shows nothing (``cam_problem``) comes back as it is."""
    raw = np.asarray(raw, np.float32)
    if not np.isfinite(raw).all():
        return raw
    low = raw.min() if signed else 0.0
    span = raw.max() - low
    return (raw - low) / span if span > 1e-6 * max(abs(raw.max()), 1e-30) else raw


MIN_CAPTIONED_SIDE = 256  # a smaller image is enlarged (whole pixels) so its caption fits


def overlay(gray: np.ndarray, cam: np.ndarray, resolution: int, crop: int,
            caption: str = "", scale: tuple[str, str] | None = ("max", "0"),
            warning: str = "") -> Image.Image:
    """An RGB image of ``gray``'s size: the heatmap (jet, opacity rising with heat) over the
    region the centre crop saw; the rest of the X-ray is shown as it is. A map that shows
    nothing (``cam_problem``) is not drawn, and the caption says why. An image whose shorter
    side is under MIN_CAPTIONED_SIDE px is enlarged by a whole factor (each pixel a square)
    so that the caption, wrapped to the width, stays readable and whole. With ``scale`` (the
    labels of the top and bottom of the map's range), a colour bar is added at the right; a
    ``warning`` ends the caption."""
    from matplotlib import colormaps  # only the colour table

    problem = cam_problem(cam)
    if problem is not None:
        cam = np.zeros_like(np.asarray(cam, np.float32))
        caption = f"{caption}: map {problem}, no heatmap" if caption else \
            f"map {problem}, no heatmap"
    if warning:
        caption = f"{caption}. Warning: {warning}" if caption else f"Warning: {warning}"
    h, w = gray.shape
    o = centre_crop_offset(resolution, crop)
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
        factor = -(-MIN_CAPTIONED_SIDE // min(h, w))
        if factor > 1:
            img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
        _draw_caption(img, caption)
    return img if scale is None else _with_colour_bar(img, lut, scale)


def _font(img: Image.Image) -> ImageFont.ImageFont:
    try:  # readable on a 1024-px X-ray; PIL's fixed bitmap font without FreeType
        return ImageFont.load_default(size=max(10, min(img.size) // 40))
    except (ImportError, TypeError, ValueError):
        return ImageFont.load_default()


def _with_colour_bar(img: Image.Image, lut: np.ndarray, labels: tuple[str, str]) -> Image.Image:
    """``img`` with a black strip at its right holding the colour scale, top = ``labels[0]``
    (the map's maximum, drawn in the last colour) and bottom = ``labels[1]``."""
    font, (w, h) = _font(img), img.size
    draw = ImageDraw.Draw(img)
    pad, bar = max(4, h // 64), max(8, h // 32)
    text_w = int(max(draw.textlength(t, font=font) for t in labels)) + 1
    canvas = Image.new("RGB", (w + 3 * pad + bar + text_w, h), (0, 0, 0))
    canvas.paste(img, (0, 0))
    top, bottom = pad, h - pad
    column = lut[np.linspace(255, 0, bottom - top).round().astype(int)]  # (rows, 3), top first
    canvas.paste(Image.fromarray(np.ascontiguousarray(np.repeat(column[:, None], bar, axis=1))),
                 (w + pad, top))
    draw = ImageDraw.Draw(canvas)
    x = w + 2 * pad + bar
    draw.text((x, top), labels[0], fill=(255, 255, 255), font=font)
    low = draw.textbbox((x, 0), labels[1], font=font)
    draw.text((x, bottom - (low[3] - low[1]) - low[1]), labels[1], fill=(255, 255, 255),
              font=font)
    return canvas


def _draw_caption(img: Image.Image, caption: str) -> None:
    """White text on a black box at the top left, wrapped at spaces to the image's width."""
    draw, font = ImageDraw.Draw(img), _font(img)
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
