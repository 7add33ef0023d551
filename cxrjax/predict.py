"""Score X-ray images with a trained run: 14 probabilities per image and a class heatmap.

    python -m cxrjax.predict --workdir W [--out DIR] [--batch_size 16] [--thresholds FILE]
                             IMAGE_OR_DIR ...

Each image (PNG or JPEG: 8- or 16-bit gray, RGB(A) or palette; or DICOM: see ``cxrjax.data.dicom``;
local or ``gs://``) becomes what training saw: gray uint8, resized to the run's ``data.resolution``
by the prepare step's own decoder, centre-cropped to ``data.crop``. Prints a table of the fused
probabilities, each marked ``+`` where it is a positive call at the run's per-class thresholds
(``W/eval/thresholds.json``, chosen on the validation split when the run was tested; without it,
probabilities only; ``--thresholds FILE``, a file of the same format and classes such as ``evaluate
--recalibrate``'s for a new site, replaces them), writes ``DIR/predictions.csv`` (fused, calls and
per-head columns; ``cxrjax.evaluate --predictions`` reads it; a ``warning`` column; a DICOM's view,
sex and age) and ``DIR/heatmaps/<name>_<method>.png``: the run's own heatmap
(``eval.localization_heatmap``, the one its localization led with) of the fused top class over the
image at its own size (under 256 px, enlarged by a whole factor so the caption fits), with a colour
bar; a map that points nowhere (zero or constant) is not drawn, and the caption and a warning on
stderr say so. A run whose recorded config implies a limitation (trained on synthetic images, ...:
``cxrjax.evaluation.limitations``) says so on stderr, in the CSV's ``warning`` column and in every
caption; so does an image with a DICOM warning (a lateral view, a child, a modality other than
CR/DX). A directory argument means its files. A file that is not an image, is empty, truncated or
too large (checked from its header, before decoding), or a DICOM that is multi-frame or in colour
gets a one-line error; the others still run, and the exit code is 1.
Nothing is written, not even a folder, when no image could be scored.

``--model DIR`` scores with an exported model (``cxrjax.export``) through ``cxrjax.serving``
instead of a workdir: the same decoding, probabilities and calls at the thresholds exported with
it, no heatmaps (an export holds the forward pass only).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from cxrjax.data.image_inputs import TAGS, ImageError, LoadedImage, expand_inputs, load_image
from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import heatmaps, inference, limitations, operating_points
from cxrjax.evaluation.overlay import cam_problem, overlay, scaled
from cxrjax.evaluation.prediction_files import IMAGE_COLUMN, SCORE_PREFIX
from cxrjax.evaluation.section import run_classes
from cxrjax.io import cli, compilation_cache, fileio, logs, storage_checks
from cxrjax.runfolder import loading as runs
from cxrjax.serving import files as export_files

SHORT = ("Atel", "Card", "Effu", "Infi", "Mass", "Nodu", "Pneu", "PnTx", "Cons", "Edem",
         "Emph", "Fibr", "PlTh", "Hern")
log = logging.getLogger("cxrjax")


# ---------------------------------------------------------------------------------------------
# The explainer: the run's heatmap of a class per image (the scores are inference's).
# ---------------------------------------------------------------------------------------------


def heatmap_method(config: Any, model: Any) -> str:
    """The run's own heatmap, ``eval.localization_heatmap``: the one its localization tables
    and picture led with (a ValueError if this model does not offer it)."""
    return heatmaps.check_methods((config.eval.localization_heatmap,), model)[0]


def make_heatmap_fn(model: Any, fusion: Sequence[str], mesh: Any,
                    method: str = "gradcam") -> Callable:
    """(variables, uint8 images (B,H,W,1), classes (B,)) -> the ``method`` heatmap (B,h,w),
    raw (``heatmaps``' jitted maps: a Grad-CAM is the fused probability's gradient w.r.t. a
    stream A feature map, averaged over space, weighting that map's channels, then ReLU)."""
    heat = heatmaps.make_heatmap_fn(model, fusion, mesh, (method,))
    return lambda variables, images, classes: heat(variables, images, classes)[method]


# ---------------------------------------------------------------------------------------------
# Files in, rows out: decode a batch, score it, write its heatmaps; bad files are reported.
# ---------------------------------------------------------------------------------------------


def _batches(files: Sequence[str], resolution: int, crop: int, size: int,
             errors: list[tuple[str, str]]) -> Iterator[list[tuple[str, LoadedImage]]]:
    """Chunks of up to ``size`` decodable files; each bad file goes to ``errors``."""
    chunk = []
    for path in files:
        try:
            chunk.append((path, load_image(path, resolution, crop)))
        except ImageError as e:
            errors.append((path, str(e)))
            continue
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _heatmap_path(out_dir: str, path: str, method: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = f"{stem}_{method}.png", 2
    while name in used:
        name, k = f"{stem}_{k}_{method}.png", k + 1
    used.add(name)
    return fileio.join(out_dir, "heatmaps", name)


def _write_heatmap(target: str, source: str, loaded: LoadedImage, raw: np.ndarray, method: str,
                   finding: str, caption: str, geometry: tuple[int, int],
                   warning: str = "") -> None:
    """The overlay PNG of one image (its folder made on the first one: no empty folder)."""
    signed = heatmaps.STREAMS[method][1] is not None  # a CAM: logit contributions of any sign
    problem = cam_problem(raw)
    if problem is not None:
        log.warning("%s: the %s map of %s is %s; %s shows the image without a heatmap",
                    source, heatmaps.TITLES[method], finding, problem, target)
    fileio.makedirs(os.path.dirname(target))
    picture = overlay(loaded.gray, scaled(raw, signed), *geometry, caption,
                      scale=("max", "min" if signed else "0"), warning=warning)
    with fileio.open(target, "wb") as f:  # local or gs://
        picture.save(f, format="PNG", compress_level=1)


def predict_files(workdir: str, files: Sequence[str], out_dir: str, batch_size: int = 16,
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Scores ``files`` with a run's best checkpoint; writes a heatmap PNG per image.

    Returns (rows: {"path", "probs": {head: (14,)}, "top", "heatmap", "tags", "warnings"},
    [(path, error)]). The workdir is checked before ``out_dir`` (its default is inside it).
    """
    mesh = inference.create_mesh()
    config, model, variables, _ = runs.load_run(workdir, mesh)
    out_dir = storage_checks.check_writable(out_dir)  # a wrong bucket: one line, at once
    method = heatmap_method(config, model)
    run_warnings = tuple(x.short for x in limitations.run_limitations(config))
    resolution, crop = int(config.data.resolution), int(config.data.crop)
    classes = run_classes(config)
    size = min(batch_size, 1 << max(len(files) - 1, 0).bit_length())  # one shape, one compile
    size = -(-size // mesh.size) * mesh.size  # a batch splits evenly over the devices
    predict_fn = inference.make_predict_fn(model, tuple(config.model.fusion), mesh)
    heatmap_fn = make_heatmap_fn(model, tuple(config.model.fusion), mesh, method)
    rows, errors, used = [], [], set()
    for chunk in _batches(files, resolution, crop, size, errors):
        images = np.zeros((size, crop, crop, 1), np.uint8)
        images[:len(chunk)] = np.stack([c[1].image for c in chunk])
        probs = jax.device_get(predict_fn(variables, images))
        tops = np.argmax(probs["fused"], axis=-1)
        maps = jax.device_get(heatmap_fn(variables, images, tops))
        for i, (path, loaded) in enumerate(chunk):
            top, notes = int(tops[i]), (*run_warnings, *loaded.warnings)
            caption = f"{heatmaps.TITLES[method]}: {classes[top]} {probs['fused'][i, top]:.3f}"
            heatmap = _heatmap_path(out_dir, path, method, used)
            _write_heatmap(heatmap, path, loaded, maps[i], method, classes[top], caption,
                           (resolution, crop), "; ".join(notes))
            rows.append({"path": path, "probs": {h: p[i] for h, p in probs.items()},
                         "top": classes[top], "heatmap": heatmap, "tags": loaded.tags,
                         "warnings": notes, "classes": classes})
    return rows, errors


def predict_files_exported(model_dir: str, files: Sequence[str], batch_size: int = 16,
                           ) -> tuple[list[dict], list[tuple[str, str]], Any]:
    """Scores ``files`` with an export folder (``cxrjax.serving``), decoded as
    ``predict_files`` decodes them (DICOM too). Returns (rows as ``predict_files``' without
    heatmaps, [(path, error)], the loaded model)."""
    from cxrjax import serving

    model = serving.load(model_dir, warn=False)
    run_warnings = tuple(short for short, _ in model.limitations)
    rows, errors = [], []
    for chunk in _batches(files, model.resolution, model.crop, batch_size, errors):
        scores = model.predict_crops(np.stack([c[1].image for c in chunk]), batch_size)
        for i, (path, loaded) in enumerate(chunk):
            top = int(np.argmax(scores.probs["fused"][i]))
            rows.append({"path": path, "probs": {h: p[i] for h, p in scores.probs.items()},
                         "top": model.classes[top], "heatmap": "", "tags": loaded.tags,
                         "warnings": (*run_warnings, *loaded.warnings),
                         "classes": model.classes})
    return rows, errors, model


# ---------------------------------------------------------------------------------------------
# Positive/negative calls at the run's thresholds, the CSV and the printed table.
# ---------------------------------------------------------------------------------------------

def mark_calls(rows: Sequence[dict], points: operating_points.OperatingPoints | None) -> None:
    """Adds ``calls`` to each row: per class True (positive), False, or None (no threshold)."""
    for r in rows:
        r["calls"] = None if points is None else points.calls(r["probs"]["fused"])


def _call_text(call: bool | None) -> str:
    return "" if call is None else ("positive" if call else "negative")


def row_classes(rows: Sequence[dict]) -> tuple[str, ...]:
    """The scored model's classes, in its output order (NIH's 14 for rows that name none)."""
    return tuple(rows[0].get("classes") or CLASSES)


def _model_classes(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The classes the model scores, read cheaply before any image is (the export's manifest
    or the run's config); None where that cannot be read (scoring then says why in one line)."""
    try:
        if args.model:
            manifest = json.loads(fileio.read_text(fileio.join(args.model,
                                                               export_files.MANIFEST)))
            return tuple(manifest["classes"])
        return tuple(run_classes(runs.load_config(args.workdir)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """``Image Index`` (file name), path, ``warning`` (the run's limitations and the image's
    warnings, ``; ``-joined; empty when none), top finding, ``prob_<Class>`` (fused); with the
    run's thresholds ``positive_findings`` (``|``-joined) and ``call_<Class>`` (positive,
    negative, or empty without a threshold); then ``<head>_<Class>`` per head, the heatmap
    path and a DICOM's view, sex and age (empty for PNG/JPEG). Scores as round-trip float32
    text."""
    heads = [h for h in rows[0]["probs"] if h != "fused"]
    calls, classes = rows[0].get("calls") is not None, row_classes(rows)
    header = [IMAGE_COLUMN, "path", "warning", "top_finding",
              *(f"{SCORE_PREFIX}{c}" for c in classes),
              *(["positive_findings", *(f"call_{c}" for c in classes)] if calls else []),
              *(f"{h}_{c}" for h in heads for c in classes), "heatmap", *TAGS]
    with fileio.open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            fused = np.asarray(r["probs"]["fused"], np.float32).astype(str)
            marks = ["|".join(c for c, k in zip(classes, r["calls"], strict=True) if k),
                     *map(_call_text, r["calls"])] if calls else []
            others = np.concatenate([np.zeros(0), *(r["probs"][h] for h in heads)])
            writer.writerow([os.path.basename(r["path"]), r["path"],
                             "; ".join(r.get("warnings", ())), r["top"], *fused, *marks,
                             *np.asarray(others, np.float32).astype(str), r["heatmap"],
                             *(r.get("tags", {}).get(t, "") for t in TAGS)])


def format_rows(rows: Sequence[dict]) -> str:
    """The fused probabilities as a compact table, one image per line; with the run's
    thresholds each positive call is marked ``+`` and listed at the end of its line."""
    names = [os.path.basename(r["path"]) for r in rows]
    width = min(max(len("image"), *(len(n) for n in names)), 32)
    calls, classes = rows[0].get("calls") is not None, row_classes(rows)
    last = "positive calls" if calls else "top finding"
    short = SHORT if classes == tuple(CLASSES) else tuple(c[:5] for c in classes)
    lines = [f"{'image':<{width}} " + " ".join(f"{s:>5}" + " " * calls for s in short)
             + f"  {last}"]
    for name, r in zip(names, rows, strict=True):
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        marks = [("+" if k else " ") for k in r["calls"]] if calls else [""] * len(classes)
        values = " ".join(f"{v:5.3f}{m}" for v, m in zip(r["probs"]["fused"], marks,
                                                          strict=True))
        end = (", ".join(c for c, k in zip(classes, r["calls"], strict=True) if k) or "none"
               if calls else r["top"])
        lines.append(f"{name:<{width}} {values}  {end}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags: the model (a run or an export), the images and where results go."""
    parser = cli.parser("python -m cxrjax.predict", __doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a trained run (cxrjax.main)")
    source.add_argument("--model", metavar="DIR", help="an exported model (cxrjax.export)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: WORKDIR/predict or DIR/predict)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="images per jitted batch (rounded up to a multiple of the devices)")
    parser.add_argument("--thresholds", metavar="FILE", default=None,
                        help="per-class thresholds for the calls instead of the run's (a "
                             "thresholds.json, e.g. evaluate --recalibrate's for a new site)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    return parser


def _print_results(args: argparse.Namespace, rows: list[dict], limits, points,
                   thresholds: str, out_dir: str) -> None:
    """The run's limitations and each image's warnings (stderr), the table, where files went."""
    origin = args.workdir or args.model
    for limit in limits:
        print(f"warning: {origin}: {limit.text}", file=sys.stderr)
    run_notes = {x.short for x in limits}
    for r in rows:
        for note in r["warnings"]:
            if note not in run_notes:
                print(f"warning: {r['path']}: {note}", file=sys.stderr)
    print(format_rows(rows))
    if points is None:
        name = operating_points.RUN_FILE if args.workdir else export_files.THRESHOLDS
        print(f"note: {origin} has no {name} (written when a run "
              "is tested): probabilities only, no positive/negative calls", file=sys.stderr)
    else:
        target = (f" {points.target_sensitivity:g}" if points.rule == "sensitivity" else "")
        whose = "the" if args.thresholds else "the run's"
        print(f"+ = positive at {whose} per-class thresholds ({points.rule}{target}, "
              f"chosen on {points.chosen_on}: {thresholds})")
    csv_path = fileio.join(out_dir, "predictions.csv")
    print(f"wrote {csv_path} (no heatmaps: an export holds the forward pass only)"
          if args.model else f"wrote {csv_path} and {len(rows)} heatmap(s) in "
          f"{fileio.join(out_dir, 'heatmaps')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Runs the parsed command: 0 if every image was scored, 1 if any failed, 2 on bad
    arguments."""
    logs.setup(logging.WARNING, libraries=logging.ERROR)  # our format; warnings only
    compilation_cache.enable()  # warm starts: the scoring and heatmap functions from disk
    files, errors, notes = expand_inputs(args.images)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        out_dir = fileio.expand(args.out or fileio.join(args.workdir or args.model, "predict"))
        given = operating_points.OperatingPoints.load(args.thresholds, _model_classes(args)) \
            if args.thresholds else None  # a bad file: one line, before any image is scored
        if args.model:
            rows, bad, model = predict_files_exported(args.model, files, args.batch_size) \
                if files else ([], [], None)
            thresholds = fileio.join(args.model, export_files.THRESHOLDS)
        else:
            rows, bad = predict_files(args.workdir, files, out_dir, args.batch_size) if files \
                else ([], [])
            thresholds = fileio.join(args.workdir, operating_points.RUN_FILE)
        if given is not None:
            if rows and given.classes != row_classes(rows):  # classes unknown until scored
                given = operating_points.OperatingPoints.load(args.thresholds, row_classes(rows))
            points, thresholds = given, args.thresholds
        else:
            points = (operating_points.OperatingPoints.load(thresholds, row_classes(rows))
                      if rows and fileio.exists(thresholds) else None)
        mark_calls(rows, points)
        if rows:
            if args.model:
                out_dir = storage_checks.check_writable(out_dir)  # a wrong bucket: one line
                fileio.makedirs(out_dir)  # no heatmap made it
            write_csv(fileio.join(out_dir, "predictions.csv"), rows)
            limits = (tuple(limitations.Limitation(*x) for x in model.limitations) if args.model
                      else limitations.run_limitations(runs.load_config(args.workdir)))
    except (ValueError, OSError, RuntimeError) as e:  # workdir, model, checkpoint, out dir
        print(f"error: {e}", file=sys.stderr)
        return 2
    errors += bad
    for path, reason in errors:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if rows:
        _print_results(args, rows, limits, points, thresholds, out_dir)
    if errors:
        print(f"{len(errors)} input(s) failed, {len(rows)} image(s) scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(build_parser, run_cli)
