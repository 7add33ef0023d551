"""Rerun an export folder's reference images and check every output against the recorded one.

    python -m cxrjax.serving.verify DIR [--tolerance 1e-5]

Checks the sha256 of the model files against the manifest, decodes each reference image by the
preprocessing contract (the crop must equal the recorded one, pixel for pixel), scores it and
compares every head's probabilities with the recorded outputs. One line per failure on stderr;
exit 0 when all pass, 1 when any fails, 2 when the folder cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from jax import export as jax_export

from cxrjax.io import cli
from cxrjax.serving import decode, files
from cxrjax.serving.model import ExportedModel, ServingError, load, sha256


def check_hashes(model: ExportedModel) -> list[str]:
    """One line per model file whose sha256 is not the manifest's."""
    failures = []
    for name, digest in model.manifest.get("sha256", {}).items():
        path = os.path.join(model.directory, name)
        if not os.path.exists(path):
            failures.append(f"{name}: missing")
        elif sha256(path) != digest:
            failures.append(f"{name}: sha256 differs from the manifest's (the file changed)")
    return failures


def check_outputs(model: ExportedModel, tolerance: float) -> tuple[list[str], int]:
    """(one line per failing (image, head), outputs compared): the reference images rerun."""
    names = model.manifest["reference"]["inputs"]
    try:
        with np.load(os.path.join(model.directory, files.EXPECTED)) as saved:
            expected = {k: saved[k] for k in saved.files}
    except (OSError, ValueError) as e:
        raise ServingError(f"{files.EXPECTED} is unreadable: {e}") from None
    failures, crops = [], []
    for i, name in enumerate(names):
        try:
            crop = model.decode(os.path.join(model.directory, files.REFERENCE, name))
        except decode.DecodeError as e:
            failures.append(f"{name}: {e}")
            crop = expected["crops"][i]
        differ = int(np.sum(crop != expected["crops"][i]))
        if differ:
            failures.append(f"{name}: decoded crop differs from the recorded one at {differ} "
                            "pixels (another Pillow resize?)")
        crops.append(crop)
    scores = model.predict_crops(np.stack(crops))
    compared = 0
    for head in model.heads:
        if head not in expected:
            failures.append(f"{files.EXPECTED}: no recorded {head!r} outputs")
            continue
        diff = np.abs(scores.probs[head].astype(np.float64) - expected[head].astype(np.float64))
        compared += diff.size
        for i, name in enumerate(names):
            if not diff[i].max() <= tolerance:  # NaN fails too
                k = int(np.nanargmax(diff[i])) if np.any(np.isfinite(diff[i])) else 0
                failures.append(
                    f"{name}: {head} {model.classes[k]} {scores.probs[head][i, k]:.7f}, recorded "
                    f"{expected[head][i, k]:.7f} (|diff| {diff[i, k]:.2e} > {tolerance:g})")
    return failures, compared


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags: the export folder and the tolerance."""
    parser = cli.parser("python -m cxrjax.serving.verify", __doc__.split("\n\n")[0])
    parser.add_argument("directory", metavar="DIR", help="an export folder (cxrjax.export)")
    parser.add_argument("--tolerance", type=float, default=files.TOLERANCE,
                        help="largest allowed |difference| of a probability (default 1e-5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Runs the parsed command: 0 if every check passes, 1 if any fails, 2 if DIR is
    unusable."""
    try:
        model = load(args.directory, warn=False)
        failures = check_hashes(model)
        output_failures, compared = check_outputs(model, args.tolerance)
    except (ServingError, OSError, KeyError) as e:
        detail = f"no {e} in the manifest" if isinstance(e, KeyError) else str(e)
        print(f"error: {detail}", file=sys.stderr)
        return 2
    failures += output_failures
    recorded_on = model.manifest["reference"].get("platform", "?")
    here = jax_export.default_export_platform()  # "cuda", not "gpu": the lowering names
    for line in failures:
        print(f"FAIL {line}", file=sys.stderr)
    if failures:
        note = (f"; the outputs were recorded on {recorded_on}, this is {here}"
                if recorded_on != here else "")
        print(f"{len(failures)} check(s) failed in {args.directory}{note}", file=sys.stderr)
        return 1
    print(f"ok: {len(model.manifest['reference']['inputs'])} reference images, {compared} "
          f"outputs within {args.tolerance:g} on {here} (recorded on {recorded_on}); "
          "model files match their sha256")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, run_cli)
