"""Score X-ray images with a trained run: 14 probabilities per image and a Grad-CAM heatmap.

    python -m cxrjax.predict --workdir W [--out DIR] [--batch_size 16] IMAGE_OR_DIR ...

Each image (PNG or JPEG; 8- or 16-bit gray, RGB(A) or palette) becomes what training saw: gray
uint8, resized to the run's ``data.resolution`` by the prepare step's own decoder, centre-cropped
to ``data.crop``. Prints a table of the fused probabilities, writes ``DIR/predictions.csv``
(fused and per-head columns; ``cxrjax.evaluate --predictions`` reads it) and
``DIR/heatmaps/<name>_gradcam.png``: Grad-CAM of the fused top class on stream A's last feature
map, over the image at its own size. A directory argument means its files. A file that is not
an image, is empty, truncated or too large (checked from its header, before decoding) gets a
one-line error; the others still run, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import struct
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from cxrjax import models, runs
from cxrjax.data import prepare
from cxrjax.data.labels import CLASSES

MAX_PIXELS = 10_000 * 10_000  # ~40x a 1024-px NIH image; larger is refused before decoding
FORMATS = ("PNG", "JPEG")
CAM_STREAM = "trunk_a"  # the module whose output feature map Grad-CAM explains
SHORT = ("Atel", "Card", "Effu", "Infi", "Mass", "Nodu", "Pneu", "PnTx", "Cons", "Edem",
         "Emph", "Fibr", "PlTh", "Hern")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageError(ValueError):
    """An input file that cannot be scored; the message says why in one line."""


# ---------------------------------------------------------------------------------------------
# Inputs: arguments -> files, header checks, decoding exactly as the prepared dataset was.
# ---------------------------------------------------------------------------------------------


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(files to score, [(argument, error)], notes): a directory means its files, sorted."""
    files, errors, notes = [], [], []
    for arg in args:
        if os.path.isdir(arg):
            entries = sorted(os.listdir(arg))
            inside = [os.path.join(arg, e) for e in entries if os.path.isfile(os.path.join(arg, e))]
            subdirs = [e for e in entries if os.path.isdir(os.path.join(arg, e))]
            if subdirs:
                notes.append(f"{arg}: {len(subdirs)} subfolder(s) not searched (give them as "
                             f"arguments): {', '.join(subdirs[:5])}")
            if not inside:
                errors.append((arg, "directory holds no files"))
            files += inside
        elif os.path.isfile(arg):
            files.append(arg)
        elif os.path.exists(arg):
            errors.append((arg, "not a regular file"))
        else:
            errors.append((arg, "no such file or directory"))
    return files, errors, notes


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"image is {width}x{height} px, over the {MAX_PIXELS:,}-pixel limit "
                         "(a decompression bomb?); refused before decoding")
    if width < 1 or height < 1:
        raise ImageError(f"image header says {width}x{height} px")


def check_header(path: str) -> tuple[str, int, int]:
    """(format, width, height) from the file's header alone; ImageError if it is no usable
    PNG/JPEG or is larger than MAX_PIXELS (nothing is decoded)."""
    if os.path.getsize(path) == 0:
        raise ImageError("empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(24)
    if head.startswith(_PNG_SIGNATURE):  # read IHDR ourselves: exact size, whatever PIL allows
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageError("truncated or corrupt PNG header")
        _check_size(*struct.unpack(">II", head[16:24]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused before decoding: {e}") from None
    except UnidentifiedImageError:
        if head.startswith(_PNG_SIGNATURE):
            raise ImageError("truncated or corrupt PNG (its chunks cannot be read)") from None
        raise ImageError("not a PNG or JPEG image") from None
    except (OSError, ValueError, SyntaxError, struct.error) as e:
        raise ImageError(f"unreadable {type(e).__name__}: {e}") from None
    _check_size(width, height)
    return fmt, width, height


def _gray(path: str) -> np.ndarray:
    """The image as uint8 gray at its own size, converted as ``prepare.decode_image`` does."""
    with Image.open(path, formats=FORMATS) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            return np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)


def load_image(path: str, resolution: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(model input (crop, crop, 1) uint8, the gray image at its own size) for one file.

    The input is the prepared dataset's record (``prepare.decode_image``: gray, antialiased
    resize to ``resolution``) centre-cropped like the eval pipeline. ImageError if unusable.
    """
    check_header(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            record, _ = prepare.decode_image(path, resolution)
            gray = _gray(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e) or type(e).__name__
        raise ImageError(f"cannot decode (truncated or corrupt?): {reason}") from None
    o = (resolution - crop) // 2
    return np.ascontiguousarray(record[o:o + crop, o:o + crop])[..., None], gray


# ---------------------------------------------------------------------------------------------
# The jitted step: probabilities of every head and Grad-CAM of the fused top class.
# ---------------------------------------------------------------------------------------------


def make_predict_fn(model: Any, fusion: Sequence[str]) -> Callable:
    """Jitted (variables, uint8 images (B,H,W,1)) -> (probs {head: (B,14)}, cam (B,h,w) in
    [0,1], top class (B,)). Grad-CAM: the gradient of the fused probability of each image's
    top class w.r.t. stream A's feature map, averaged over space, weights that map's channels.
    """

    def forward(variables, images, delta):
        # An interceptor adds `delta` to stream A's output: d(out)/d(delta) is the gradient
        # w.r.t. that feature map, without any hook in the model itself.
        box = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path == (CAM_STREAM,):
                box["map"] = out
                if delta is not None:
                    out = out + delta.astype(out.dtype)
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, images, train=False)
        if "map" not in box:
            raise ValueError(f"the model has no {CAM_STREAM!r} stream for Grad-CAM")
        return models.probabilities(logits, tuple(fusion)), box["map"]

    def run(variables, images):
        shape = jax.eval_shape(lambda: forward(variables, images, None)[1]).shape
        probs, vjp, fmap = jax.vjp(lambda d: forward(variables, images, d),
                                   jnp.zeros(shape, jnp.float32), has_aux=True)
        top = jnp.argmax(probs["fused"], axis=-1)
        cotangent = {k: jnp.zeros_like(v) for k, v in probs.items()}
        cotangent["fused"] = jax.nn.one_hot(top, probs["fused"].shape[-1], dtype=jnp.float32)
        (grads,) = vjp(cotangent)
        weights = grads.mean(axis=(1, 2))  # (B, C)
        cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", fmap.astype(jnp.float32), weights))
        cam = cam / jnp.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)
        return probs, cam, top

    return jax.jit(run)


def overlay(gray: np.ndarray, cam: np.ndarray, resolution: int, crop: int,
            caption: str = "") -> Image.Image:
    """An RGB image of ``gray``'s size: the heatmap (jet, opacity rising with heat) over the
    region the centre crop saw; the rest of the X-ray is shown as it is."""
    from matplotlib import colormaps  # only the colour table

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
        draw = ImageDraw.Draw(img)
        try:  # readable on a 1024-px X-ray; PIL's fixed bitmap font without FreeType
            font = ImageFont.load_default(size=max(10, min(h, w) // 40))
        except (ImportError, TypeError, ValueError):
            font = ImageFont.load_default()
        box = draw.textbbox((4, 4), caption, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 4), caption, fill=(255, 255, 255), font=font)
    return img


# ---------------------------------------------------------------------------------------------
# Files in, rows out: decode a batch, score it, write its heatmaps; bad files are reported.
# ---------------------------------------------------------------------------------------------


def _batches(files: Sequence[str], resolution: int, crop: int, size: int,
             errors: list[tuple[str, str]]) -> Iterator[list[tuple[str, np.ndarray, np.ndarray]]]:
    """Chunks of up to ``size`` decodable files; each bad file goes to ``errors``."""
    chunk = []
    for path in files:
        try:
            chunk.append((path, *load_image(path, resolution, crop)))
        except ImageError as e:
            errors.append((path, str(e)))
            continue
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _heatmap_path(out_dir: str, path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = f"{stem}_gradcam.png", 2
    while name in used:
        name, k = f"{stem}_{k}_gradcam.png", k + 1
    used.add(name)
    return os.path.join(out_dir, "heatmaps", name)


def predict_files(workdir: str, files: Sequence[str], out_dir: str, batch_size: int = 16,
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Scores ``files`` with a run's best checkpoint; writes a heatmap PNG per image.

    Returns (rows: {"path", "probs": {head: (14,)}, "top", "heatmap"}, [(path, error)]).
    """
    config, model, variables, _ = runs.load_run(workdir)
    resolution, crop = int(config.data.resolution), int(config.data.crop)
    size = min(batch_size, 1 << max(len(files) - 1, 0).bit_length())  # one shape, one compile
    predict_fn = make_predict_fn(model, tuple(config.model.fusion))
    os.makedirs(os.path.join(out_dir, "heatmaps"), exist_ok=True)
    rows, errors, used = [], [], set()
    for chunk in _batches(files, resolution, crop, size, errors):
        images = np.zeros((size, crop, crop, 1), np.uint8)
        images[:len(chunk)] = np.stack([c[1] for c in chunk])
        probs, cams, tops = jax.device_get(predict_fn(variables, images))
        for i, (path, _, gray) in enumerate(chunk):
            top = int(tops[i])
            heatmap = _heatmap_path(out_dir, path, used)
            caption = f"Grad-CAM: {CLASSES[top]} {probs['fused'][i, top]:.3f}"
            overlay(gray, cams[i], resolution, crop, caption).save(heatmap, compress_level=1)
            rows.append({"path": path, "probs": {h: p[i] for h, p in probs.items()},
                         "top": CLASSES[top], "heatmap": heatmap})
    return rows, errors


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """``Image Index`` (file name), path, top finding, ``prob_<Class>`` (fused), then
    ``<head>_<Class>`` per head, then the heatmap path; scores as round-trip float32 text."""
    heads = [h for h in rows[0]["probs"] if h != "fused"]
    header = ["Image Index", "path", "top_finding", *(f"prob_{c}" for c in CLASSES),
              *(f"{h}_{c}" for h in heads for c in CLASSES), "heatmap"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            scores = np.concatenate([r["probs"]["fused"], *(r["probs"][h] for h in heads)])
            writer.writerow([os.path.basename(r["path"]), r["path"], r["top"],
                             *np.asarray(scores, np.float32).astype(str), r["heatmap"]])


def format_rows(rows: Sequence[dict]) -> str:
    """The fused probabilities as a compact table, one image per line."""
    names = [os.path.basename(r["path"]) for r in rows]
    width = min(max(len("image"), *(len(n) for n in names)), 32)
    lines = [f"{'image':<{width}} " + " ".join(f"{s:>5}" for s in SHORT) + "  top finding"]
    for name, r in zip(names, rows, strict=True):
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        values = " ".join(f"{v:5.3f}" for v in r["probs"]["fused"])
        lines.append(f"{name:<{width}} {values}  {r['top']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI: 0 if every image was scored, 1 if any failed, 2 on bad arguments."""
    parser = argparse.ArgumentParser(prog="python -m cxrjax.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run (cxrjax.main)")
    parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/predict)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per jitted batch")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax chatter is not for users
    out_dir = args.out or os.path.join(args.workdir, "predict")
    files, errors, notes = expand_inputs(args.images)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        rows, bad = predict_files(args.workdir, files, out_dir, args.batch_size) if files \
            else ([], [])
        if rows:
            write_csv(os.path.join(out_dir, "predictions.csv"), rows)
    except (ValueError, OSError, RuntimeError) as e:  # workdir, checkpoint, out dir
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors += bad
    for path, reason in errors:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if rows:
        print(format_rows(rows))
        print(f"wrote {os.path.join(out_dir, 'predictions.csv')} and {len(rows)} heatmap(s) in "
              f"{os.path.join(out_dir, 'heatmaps')}")
    if errors:
        print(f"{len(errors)} input(s) failed, {len(rows)} image(s) scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
