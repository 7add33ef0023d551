"""Export a trained run as a self-contained model folder that runs without this repository.

    python -m cxrjax.export --workdir W --out DIR [--platforms cpu,cuda,tpu] [--reference IMG ...]

The run's best checkpoint (as ``predict --workdir`` loads it) becomes the eval-mode forward,
serialised with ``jax.export`` (StableHLO, a symbolic batch size) for each platform it can be
lowered for here. Two entries take model-ready crops (B, crop, crop, 1): ``uint8``, and
``uint16`` (mapped onto 0..255 first, as a 16-bit image is); both return every head's
probabilities and the fused ones. DIR holds the entries, the weights, ``preprocessing.json``
(decode -> resize -> centre crop -> normalise, as the run's data were made), the run's
thresholds and calibration when recorded, ``reference/`` (three images and their expected
outputs, checked against the run's own model to 1e-5 before anything is kept) and the model
card. ``cxrjax.serving.load(DIR)`` runs it with jax, numpy and Pillow only. DIR is built in a
temporary folder beside it and renamed when complete; an existing non-empty DIR is refused.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL
from jax import export as jax_export

from cxrjax import export_reference, models
from cxrjax.evaluation import inference, limitations, model_card, operating_points
from cxrjax.evaluation.section import run_classes
from cxrjax.io import checkpoint, cli, compilation_cache, fileio, logs, run_layout
from cxrjax.models.common import IMAGENET_MEAN, IMAGENET_STD
from cxrjax.runfolder import loading as runs
from cxrjax.serving import files

PLATFORMS = ("cpu", "cuda", "tpu")
BFLOAT16_TOLERANCE = 1e-2  # probabilities from bfloat16 logits agree to ~2-3 digits
log = logging.getLogger("cxrjax")


# ---------------------------------------------------------------------------------------------
# The forward: weights and crops in, probabilities out; lowered per platform.
# ---------------------------------------------------------------------------------------------


def uint16_to_uint8(images: jnp.ndarray) -> jnp.ndarray:
    """uint16 -> uint8 by the float32 rule of a 16-bit image (``decode.sixteen_to_uint8``
    with hi = 65535), inside jit."""
    x = images.astype(jnp.float32) * jnp.float32(255.0 / 65535.0) + jnp.float32(0.5)
    return jnp.clip(x, 0, 255).astype(jnp.uint8)


def forward_fns(model: Any, fusion: tuple[str, ...]) -> dict[str, Callable]:
    """{"uint8": f, "uint16": f}: (variables, crops (B, crop, crop, 1)) -> {head: (B, C)
    probabilities, "fused"}, the model in eval mode; uint16 crops are mapped onto 0..255
    first (``uint16_to_uint8``)."""

    def forward_uint8(variables, images):
        return models.probabilities(model.apply(variables, images, train=False), fusion)

    def forward_uint16(variables, images):
        return forward_uint8(variables, uint16_to_uint8(images))

    return {"uint8": forward_uint8, "uint16": forward_uint16}


def lower(fn: Callable, args: Sequence[Any], platforms: Sequence[str],
          ) -> tuple[jax_export.Exported, dict[str, str]]:
    """``fn`` exported for all of ``platforms`` that lower here, and {platform: why not} for
    the others; a RuntimeError when none does."""
    try:
        return jax_export.export(jax.jit(fn), platforms=tuple(platforms))(*args), {}
    except Exception:  # noqa: BLE001 - find which platform failed, one by one
        pass
    good, failed = [], {}
    for p in platforms:
        try:
            jax_export.export(jax.jit(fn), platforms=(p,))(*args)
            good.append(p)
        except Exception as e:  # noqa: BLE001 - lowering raises many kinds
            failed[p] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    if not good:
        raise RuntimeError("the model could not be lowered for any platform: " +
                           "; ".join(f"{p}: {r}" for p, r in failed.items()))
    return jax_export.export(jax.jit(fn), platforms=tuple(good))(*args), failed


# ---------------------------------------------------------------------------------------------
# The folder's files.
# ---------------------------------------------------------------------------------------------


def preprocessing_contract(config: Any, dtype: Any) -> dict:
    """preprocessing.json: what turns a file into the exported function's input, step by step
    (``cxrjax.data.nih_layout.decode_image``, ``image_inputs.load_image``,
    ``models.preprocess``)."""
    res, crop = int(config.data.resolution), int(config.data.crop)
    return {
        "steps": [
            {"step": "decode", "library": "Pillow", "formats": ["PNG", "JPEG"],
             "gray": "8-bit gray ('L') as is; RGB, RGBA, LA, palette and other modes through "
                     "Pillow's Image.convert('L') (ITU-R 601-2 luma); no EXIF rotation",
             "bit_depth": "16-bit ('I;16*') and 32-bit int ('I') images: float32 "
                          "x * (255 / hi) + 0.5, clipped to [0, 255], truncated to uint8; "
                          "hi = 65535 for 'I;16*' or when the maximum is above 255, else 255",
             "dicom": "cxrjax.predict --model reads DICOM (cxrjax.data.dicom: rescale, VOI "
                      "LUT or window, MONOCHROME1 inverted) to uint8 gray, then the same steps"},
            {"step": "resize", "size": [res, res], "library": "Pillow",
             "method": "Image.resize(..., Image.Resampling.BILINEAR): antialiased bilinear "
                       "(the filter support widens with the scale factor)",
             "aspect_ratio": "not kept: the whole image is squeezed to a square",
             "skipped_when": f"the image is already {res}x{res}"},
            {"step": "centre_crop", "size": [crop, crop],
             "offset": [(res - crop) // 2, (res - crop) // 2],
             "rule": "rows and columns [o, o + crop), o = (resolution - crop) // 2"},
            {"step": "normalise", "where": "inside the exported function",
             "scale": "x / 255 in float32", "channels": "gray copied to 3 channels",
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
             "compute_dtype": jnp.dtype(dtype).name},
        ],
        "resolution": res, "crop": crop,
        "input": {"shape": ["batch", crop, crop, 1], "dtype": "uint8",
                  "uint16_entry": "forward_uint16 maps a uint16 crop onto uint8 by the "
                                  "bit_depth rule with hi = 65535, then runs forward_uint8 "
                                  "(the same as the file path when no resize is needed)"},
        "pillow_version_at_export": PIL.__version__,
    }


def calibration_of(workdir: str) -> dict | None:
    """The fused rescaling the run fitted on validation (test_metrics.json), or None."""
    path = run_layout.eval_path(workdir, run_layout.TEST_METRICS)
    if not fileio.exists(path):
        return None
    rescaling = (json.loads(fileio.read_text(path)).get("calibration") or {}).get("rescaling")
    return rescaling or None


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write_json(path: str, body: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=2, allow_nan=False)
        f.write("\n")


def _check_out(out: str) -> str:
    """The local output folder; it may not hold anything yet."""
    if fileio.is_remote(out):
        raise ValueError(f"--out {out}: export writes a local folder (copy it to a bucket "
                         "afterwards)")
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; remove it or "
                              "choose another")
    return out


# ---------------------------------------------------------------------------------------------
# The export: lower, write, check against the run's own model, rename into place.
# ---------------------------------------------------------------------------------------------


def _reference_outputs(run: tuple, mesh: Any, crops: np.ndarray) -> dict[str, np.ndarray]:
    """The run's model on ``crops`` through ``inference.make_predict_fn``, as predict does."""
    config, model, variables, _ = run
    predict_fn = inference.make_predict_fn(model, tuple(config.model.fusion), mesh)
    size = -(-len(crops) // mesh.size) * mesh.size
    batch = np.zeros((size, *crops.shape[1:]), np.uint8)
    batch[:len(crops)] = crops
    return {k: np.asarray(v)[:len(crops)]
            for k, v in jax.device_get(predict_fn(variables, batch)).items()}


def _run_entry(data: bytes, weights: list, crops: np.ndarray) -> dict[str, np.ndarray] | None:
    """The deserialised entry's outputs on ``crops`` here; None if not lowered for here."""
    exported = jax_export.deserialize(bytearray(data))
    if jax_export.default_export_platform() not in exported.platforms:
        return None
    (w, images), _ = jax.tree.unflatten(exported.in_tree, [*weights, crops])
    return {k: np.asarray(v) for k, v in jax.device_get(exported.call(w, images)).items()}


def check_against_run(got: dict[str, np.ndarray], run: dict[str, np.ndarray], dtype: Any,
                      what: str) -> float:
    """The largest |difference| between an entry's and the run's outputs; a RuntimeError above
    ``files.TOLERANCE`` (float32 compute) or ``BFLOAT16_TOLERANCE`` (bfloat16: the two
    compilations may round differently)."""
    bound = files.TOLERANCE if jnp.dtype(dtype) == jnp.float32 else BFLOAT16_TOLERANCE
    worst = max(float(np.max(np.abs(got[k].astype(np.float64) - run[k]))) for k in run)
    if not worst <= bound:
        raise RuntimeError(f"the exported {what} entry differs from the run's model by "
                           f"{worst:.2e} (> {bound:g}); nothing was written")
    return worst


def export_run(workdir: str, out: str, platforms: Sequence[str] = PLATFORMS,
               reference_images: Sequence[str] | None = None) -> dict:
    """Writes the export folder ``out`` for the run in ``workdir``; returns its manifest."""
    out = _check_out(out)
    run = runs.load_run(workdir, inference.create_mesh())
    config, model, variables, step = run
    leaves, _ = jax.tree.flatten(jax.device_get(variables))
    leaves = [np.asarray(x) for x in leaves]
    odd = {x.dtype.name for x in leaves if x.dtype.kind not in "fiub"}  # bfloat16: kind V
    if odd:
        raise RuntimeError(f"the run's variables hold {', '.join(sorted(odd))} leaves, which "
                           "weights.npz cannot store exactly")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        manifest = _write_folder(tmp, workdir, run, leaves, platforms, reference_images)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_entries(tmp: str, run: tuple, leaves: list, crops: np.ndarray,
                   platforms: Sequence[str]) -> tuple[dict, list[str], dict, list[float]]:
    """Lowers and writes each entry, runs it here and checks it against the run's model.
    Returns (the reference outputs, platforms every entry holds, {platform: why not lowered},
    the differences found)."""
    config, model, variables, _ = run
    crop = int(config.data.crop)
    expected = from_run = _reference_outputs(run, inference.create_mesh(), crops)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        jax.device_get(variables))
    batch, = jax_export.symbolic_shape("batch")
    by_entry, not_lowered, diffs = {}, {}, []
    for dtype, fn in forward_fns(model, tuple(config.model.fusion)).items():
        images = jax.ShapeDtypeStruct((batch, crop, crop, 1), np.dtype(dtype))
        exported, failed = lower(fn, (spec, images), platforms)
        data = exported.serialize()
        with open(os.path.join(tmp, files.ENTRIES[dtype]), "wb") as f:
            f.write(data)
        test_crops = crops if dtype == "uint8" else crops.astype(np.uint16) * np.uint16(257)
        got = _run_entry(data, leaves, test_crops)
        if got is not None:  # verify reruns the uint8 entry: its own outputs are the reference
            diffs.append(check_against_run(got, from_run, model.dtype, dtype))
            expected = got if dtype == "uint8" else expected
        by_entry[dtype] = exported.platforms
        not_lowered.update(failed)
    lowered = [p for p in platforms if all(p in v for v in by_entry.values())]
    return expected, lowered, not_lowered, diffs


def _write_folder(tmp: str, workdir: str, run: tuple, leaves: list,
                  platforms: Sequence[str], reference_images: Sequence[str] | None) -> dict:
    config, model, _, step = run
    names, crops = export_reference.reference_crops(tmp, config, reference_images)
    np.savez(os.path.join(tmp, files.WEIGHTS), **{f"leaf_{i:05d}": x
                                                  for i, x in enumerate(leaves)})
    expected, lowered, not_lowered, diffs = _write_entries(tmp, run, leaves, crops, platforms)
    np.savez(os.path.join(tmp, files.EXPECTED), crops=crops, **expected)
    _write_json(os.path.join(tmp, files.PREPROCESSING),
                preprocessing_contract(config, model.dtype))
    points = operating_points.OperatingPoints.of_run(workdir, run_classes(config))
    if points is not None:
        points.save(os.path.join(tmp, files.THRESHOLDS))
    here = jax_export.default_export_platform()  # "cuda", not jax's backend name "gpu"
    worst = max(diffs) if diffs else None  # none: the entries do not run on this machine
    rescaling = calibration_of(workdir)
    if rescaling is not None:
        _write_json(os.path.join(tmp, files.CALIBRATION), rescaling)
    fileio.write_text(os.path.join(tmp, files.MODEL_CARD), model_card.render(workdir))
    manifest = {
        "format": files.FORMAT, "version": files.VERSION, "classes": list(run_classes(config)),
        "heads": ["fused", *sorted(h for h in expected if h != "fused")],
        "fusion": list(config.model.fusion), "resolution": int(config.data.resolution),
        "crop": int(config.data.crop), "entries": files.ENTRIES, "platforms": lowered,
        "platforms_not_lowered": not_lowered, "compute_dtype": jnp.dtype(model.dtype).name,
        "weights": {"file": files.WEIGHTS, "leaves": len(leaves),
                    "parameters": int(sum(x.size for x in leaves))},
        "reference": {"inputs": names, "platform": here,
                      "tolerance": files.TOLERANCE, "exported_vs_run_max_abs_diff": worst},
        "thresholds": points is not None, "calibration": rescaling is not None,
        "limitations": [{"short": x.short, "text": x.text}
                        for x in limitations.run_limitations(config)],
        "source": {"workdir": workdir, "step": int(step), "row": config.get("row"),
                   "jax": jax.__version__, "exported_at": datetime.datetime.now(
                       datetime.UTC).isoformat(timespec="seconds")},
        "sha256": {name: _sha256(os.path.join(tmp, name)) for name in files.HASHED},
    }
    _write_json(os.path.join(tmp, files.MANIFEST), manifest)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags: the run, the folder to write, the platforms and reference images."""
    parser = cli.parser("python -m cxrjax.export", __doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run (cxrjax.main)")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help="platforms to lower for (default: cpu,cuda,tpu)")
    parser.add_argument("--reference", nargs="+", metavar="IMAGE", default=None,
                        help="PNG/JPEG reference images (default: three made-up pictures: "
                             "8-bit gray, RGB and 16-bit gray)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Runs the parsed command: 0 when the folder is written, 2 on bad input (one line)."""
    logs.setup(logging.WARNING, libraries=logging.ERROR)
    compilation_cache.enable()
    try:
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = [p for p in platforms if p not in PLATFORMS]
        if unknown or not platforms:
            raise ValueError(f"--platforms {args.platforms!r}: choose from "
                             f"{', '.join(PLATFORMS)}")
        manifest = export_run(args.workdir, args.out, platforms, args.reference)
    except (ValueError, OSError, RuntimeError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for platform, reason in manifest["platforms_not_lowered"].items():
        print(f"warning: not lowered for {platform} here ({reason}); the folder runs on "
              f"{', '.join(manifest['platforms'])} only", file=sys.stderr)
    for x in manifest["limitations"]:
        print(f"warning: {args.workdir}: {x['text']}", file=sys.stderr)
    diff = manifest["reference"]["exported_vs_run_max_abs_diff"]
    here = jax_export.default_export_platform()  # "cuda", not jax's backend name "gpu"
    checked = (f"the exported entries match the run's model to {diff:.1e} on {here}"
               if diff is not None else f"not checked: the entries do not run on {here}")
    print(f"exported {args.workdir} (step {manifest['source']['step']}, "
          f"{manifest['weights']['parameters']:,} parameters) for "
          f"{', '.join(manifest['platforms'])} to {os.path.abspath(args.out)}; {checked}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, run_cli)
