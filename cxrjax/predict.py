"""Score X-ray images with a trained run: 14 probabilities per image and a Grad-CAM heatmap.

    python -m cxrjax.predict --workdir W [--out DIR] [--batch_size 16] IMAGE_OR_DIR ...

Each image (PNG or JPEG; 8- or 16-bit gray, RGB(A) or palette) becomes what training saw: gray
uint8, resized to the run's ``data.resolution`` by the prepare step's own decoder, centre-cropped
to ``data.crop``. Prints a table of the fused probabilities, each marked ``+`` where it is a
positive call at the run's per-class thresholds (``W/eval/thresholds.json``, chosen on the
validation split when the run was tested; without it, probabilities only), writes
``DIR/predictions.csv`` (fused, calls and per-head columns; ``cxrjax.evaluate --predictions``
reads it) and
``DIR/heatmaps/<name>_gradcam.png``: Grad-CAM of the fused top class on stream A's last feature
map, over the image at its own size (under 256 px, enlarged by a whole factor so the caption
fits); a map that points nowhere (zero or constant) is not drawn, and the caption and a warning
on stderr say so. A directory argument means its files. A file that is not
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

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrjax import (
    compilation_cache,
    fileio,
    heatmaps,
    inference,
    logs,
    operating_points,
    runs,
    storage_checks,
)
from cxrjax.data import nih_layout
from cxrjax.data.labels import CLASSES
from cxrjax.overlay import cam_problem, overlay
from cxrjax.predictions import IMAGE_COLUMN, SCORE_PREFIX

MAX_PIXELS = 10_000 * 10_000  # ~40x a 1024-px NIH image; larger is refused before decoding
FORMATS = ("PNG", "JPEG")
SHORT = ("Atel", "Card", "Effu", "Infi", "Mass", "Nodu", "Pneu", "PnTx", "Cons", "Edem",
         "Emph", "Fibr", "PlTh", "Hern")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger("cxrjax")


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
    """The image as uint8 gray at its own size, converted as ``nih_layout.decode_image`` does."""
    with Image.open(path, formats=FORMATS) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            return np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)


def load_image(path: str, resolution: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(model input (crop, crop, 1) uint8, the gray image at its own size) for one file.

    The input is the prepared dataset's record (``nih_layout.decode_image``: gray, antialiased
    resize to ``resolution``) centre-cropped like the eval pipeline. ImageError if unusable.
    """
    check_header(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            record, _ = nih_layout.decode_image(path, resolution)
            gray = _gray(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e) or type(e).__name__
        raise ImageError(f"cannot decode (truncated or corrupt?): {reason}") from None
    o = (resolution - crop) // 2
    return np.ascontiguousarray(record[o:o + crop, o:o + crop])[..., None], gray


# ---------------------------------------------------------------------------------------------
# The explainer: Grad-CAM of a class per image (the scores are inference.make_predict_fn's).
# ---------------------------------------------------------------------------------------------


def make_gradcam_fn(model: Any, fusion: Sequence[str], mesh: Any) -> Callable:
    """(variables, uint8 images (B,H,W,1), classes (B,)) -> Grad-CAM (B,h,w) scaled to [0, 1]
    per image: ``heatmaps``' jitted "gradcam" (the fused probability's gradient w.r.t. stream
    A's last feature map, averaged over space, weighting that map's channels, then ReLU)."""
    heat = heatmaps.make_heatmap_fn(model, fusion, mesh, ("gradcam",))

    def run(variables, images, classes):
        cam = heat(variables, images, classes)["gradcam"]
        return cam / jnp.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)

    return run


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
    return fileio.join(out_dir, "heatmaps", name)


def predict_files(workdir: str, files: Sequence[str], out_dir: str, batch_size: int = 16,
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Scores ``files`` with a run's best checkpoint; writes a heatmap PNG per image.

    Returns (rows: {"path", "probs": {head: (14,)}, "top", "heatmap"}, [(path, error)]).
    """
    mesh = inference.create_mesh()
    config, model, variables, _ = runs.load_run(workdir, mesh)
    resolution, crop = int(config.data.resolution), int(config.data.crop)
    size = min(batch_size, 1 << max(len(files) - 1, 0).bit_length())  # one shape, one compile
    size = -(-size // mesh.size) * mesh.size  # a batch splits evenly over the devices
    predict_fn = inference.make_predict_fn(model, tuple(config.model.fusion), mesh)
    gradcam_fn = make_gradcam_fn(model, tuple(config.model.fusion), mesh)
    fileio.makedirs(fileio.join(out_dir, "heatmaps"))
    rows, errors, used = [], [], set()
    for chunk in _batches(files, resolution, crop, size, errors):
        images = np.zeros((size, crop, crop, 1), np.uint8)
        images[:len(chunk)] = np.stack([c[1] for c in chunk])
        probs = jax.device_get(predict_fn(variables, images))
        tops = np.argmax(probs["fused"], axis=-1)
        cams = jax.device_get(gradcam_fn(variables, images, tops))
        for i, (path, _, gray) in enumerate(chunk):
            top = int(tops[i])
            heatmap = _heatmap_path(out_dir, path, used)
            caption = f"Grad-CAM: {CLASSES[top]} {probs['fused'][i, top]:.3f}"
            problem = cam_problem(cams[i])
            if problem is not None:
                log.warning("%s: the Grad-CAM map of %s is %s; %s shows the image without a "
                            "heatmap", path, CLASSES[top], problem, heatmap)
            with fileio.open(heatmap, "wb") as f:  # local or gs://
                overlay(gray, cams[i], resolution, crop, caption).save(f, format="PNG",
                                                                       compress_level=1)
            rows.append({"path": path, "probs": {h: p[i] for h, p in probs.items()},
                         "top": CLASSES[top], "heatmap": heatmap})
    return rows, errors


# ---------------------------------------------------------------------------------------------
# Positive/negative calls at the run's thresholds, the CSV and the printed table.
# ---------------------------------------------------------------------------------------------

def mark_calls(rows: Sequence[dict], points: operating_points.OperatingPoints | None) -> None:
    """Adds ``calls`` to each row: per class True (positive), False, or None (no threshold)."""
    for r in rows:
        r["calls"] = None if points is None else points.calls(r["probs"]["fused"])


def _call_text(call: bool | None) -> str:
    return "" if call is None else ("positive" if call else "negative")


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """``Image Index`` (file name), path, top finding, ``prob_<Class>`` (fused); with the run's
    thresholds ``positive_findings`` (``|``-joined) and ``call_<Class>`` (positive, negative,
    or empty without a threshold); then ``<head>_<Class>`` per head and the heatmap path.
    Scores as round-trip float32 text."""
    heads = [h for h in rows[0]["probs"] if h != "fused"]
    calls = rows[0].get("calls") is not None
    header = [IMAGE_COLUMN, "path", "top_finding", *(f"{SCORE_PREFIX}{c}" for c in CLASSES),
              *(["positive_findings", *(f"call_{c}" for c in CLASSES)] if calls else []),
              *(f"{h}_{c}" for h in heads for c in CLASSES), "heatmap"]
    with fileio.open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            fused = np.asarray(r["probs"]["fused"], np.float32).astype(str)
            marks = ["|".join(c for c, k in zip(CLASSES, r["calls"], strict=True) if k),
                     *map(_call_text, r["calls"])] if calls else []
            others = np.concatenate([np.zeros(0), *(r["probs"][h] for h in heads)])
            writer.writerow([os.path.basename(r["path"]), r["path"], r["top"], *fused, *marks,
                             *np.asarray(others, np.float32).astype(str), r["heatmap"]])


def format_rows(rows: Sequence[dict]) -> str:
    """The fused probabilities as a compact table, one image per line; with the run's
    thresholds each positive call is marked ``+`` and listed at the end of its line."""
    names = [os.path.basename(r["path"]) for r in rows]
    width = min(max(len("image"), *(len(n) for n in names)), 32)
    calls = rows[0].get("calls") is not None
    last = "positive calls" if calls else "top finding"
    lines = [f"{'image':<{width}} " + " ".join(f"{s:>5}" + " " * calls for s in SHORT)
             + f"  {last}"]
    for name, r in zip(names, rows, strict=True):
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        marks = [("+" if k else " ") for k in r["calls"]] if calls else [""] * len(CLASSES)
        values = " ".join(f"{v:5.3f}{m}" for v, m in zip(r["probs"]["fused"], marks,
                                                          strict=True))
        end = (", ".join(c for c, k in zip(CLASSES, r["calls"], strict=True) if k) or "none"
               if calls else r["top"])
        lines.append(f"{name:<{width}} {values}  {end}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI: 0 if every image was scored, 1 if any failed, 2 on bad arguments."""
    parser = argparse.ArgumentParser(prog="python -m cxrjax.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run (cxrjax.main)")
    parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/predict)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="images per jitted batch (rounded up to a multiple of the devices)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    args = parser.parse_args(argv)
    logs.setup(logging.WARNING, libraries=logging.ERROR)  # our format; warnings only
    compilation_cache.enable()  # warm starts: the scoring and Grad-CAM functions from disk
    out_dir = args.out or fileio.join(args.workdir, "predict")
    files, errors, notes = expand_inputs(args.images)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        out_dir = storage_checks.check_writable(out_dir)  # a wrong bucket: one line, at once
        rows, bad = predict_files(args.workdir, files, out_dir, args.batch_size) if files \
            else ([], [])
        points = operating_points.OperatingPoints.of_run(args.workdir) if rows else None
        mark_calls(rows, points)
        if rows:
            write_csv(fileio.join(out_dir, "predictions.csv"), rows)
    except (ValueError, OSError, RuntimeError) as e:  # workdir, checkpoint, out dir
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors += bad
    for path, reason in errors:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if rows:
        print(format_rows(rows))
        if points is None:
            print(f"note: {args.workdir} has no {operating_points.RUN_FILE} (written when a run "
                  "is tested): probabilities only, no positive/negative calls", file=sys.stderr)
        else:
            target = (f" {points.target_sensitivity:g}" if points.rule == "sensitivity" else "")
            print(f"+ = positive at the run's per-class thresholds ({points.rule}{target}, "
                  f"chosen on validation: {fileio.join(args.workdir, operating_points.RUN_FILE)})")
        print(f"wrote {fileio.join(out_dir, 'predictions.csv')} and {len(rows)} heatmap(s) in "
              f"{fileio.join(out_dir, 'heatmaps')}")
    if errors:
        print(f"{len(errors)} input(s) failed, {len(rows)} image(s) scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
