"""An exported model's images/s beside ``predict --workdir``'s, on the same images in one call.

    python scripts/benchmark.py export --workdir W [--images 64] [--predict_batch 16]

The run in ``W`` is exported to a temporary folder (``export_s``), ``--images`` gray PNGs at
1.5x the run's resolution are written, and three paths score them, each timed on its second
pass (the first compiles; the persistent compilation cache is on, as for a user):

- ``workdir_images_per_s``: ``predict.predict_files``, what ``predict --workdir`` runs: load
  the checkpoint, decode, score, and draw and write a heatmap per image;
- ``model_images_per_s``: ``predict.predict_files_exported``, what ``predict --model`` runs:
  load the export, decode, score (no heatmaps);
- ``serving_images_per_s``: ``cxrjax.serving``'s ``predict`` on a model loaded once: decode
  and score only, the steady rate of a serving process;
- ``run_scoring_images_per_s``: the same for the run itself, loaded once: ``predict``'s decoding
  and ``inference.make_predict_fn`` (the flax model, no heatmaps), the rate that the exported
  forward should match. These two are timed in turn, best of three passes each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence


def _options(extra: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmark.py export")
    p.add_argument("--workdir", required=True, help="a trained run (cxrjax.main)")
    p.add_argument("--images", type=int, default=64, help="images to score")
    p.add_argument("--predict_batch", type=int, default=16, help="images per jitted batch "
                   "(predict's --batch_size)")
    return p.parse_args(extra)


def _second_pass(fn: Callable[[], object]) -> float:
    """Seconds of ``fn``'s second call (the first one compiles)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternating(fns: Sequence[Callable[[], object]], rounds: int = 3) -> list[float]:
    """Each function's fastest of ``rounds`` timed calls, taken in turn (after one untimed
    call each), so that a load change on a shared machine hits them alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _write_images(folder: str, count: int, resolution: int) -> list[str]:
    import numpy as np
    from PIL import Image

    from cxrjax.export_reference import reference_picture

    side = resolution * 3 // 2
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i:04d}.png")
        Image.fromarray((reference_picture(side, side, i) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _run_scorer(workdir: str, batch: int) -> Callable[[Sequence[str]], dict]:
    """Files -> the run's probabilities: predict's decoding and jitted scoring, loaded once."""
    import numpy as np

    from cxrjax.data import image_inputs
    from cxrjax.evaluation import inference
    from cxrjax.runfolder import loading as runs

    mesh = inference.create_mesh()
    config, model, variables, _ = runs.load_run(workdir, mesh)
    predict_fn = inference.make_predict_fn(model, tuple(config.model.fusion), mesh)
    res, crop = int(config.data.resolution), int(config.data.crop)

    def score(files: Sequence[str]) -> list:
        outs = []
        for start in range(0, len(files), batch):
            images = np.zeros((batch, crop, crop, 1), np.uint8)
            chunk = files[start:start + batch]
            images[:len(chunk)] = [image_inputs.load_image(f, res, crop).image for f in chunk]
            outs.append(np.asarray(predict_fn(variables, images)["fused"]))
        return outs

    return score


def run_export(args) -> list[dict]:
    """One record: the three rates and the export's time (see the module docstring)."""
    from cxrjax import export, predict, serving
    from cxrjax.io import compilation_cache
    from cxrjax.runfolder import loading as runs

    opts = _options(args.extra)
    batch = opts.predict_batch
    compilation_cache.enable()
    config = runs.load_config(opts.workdir)
    scratch = tempfile.mkdtemp(prefix="cxrjax_bench_export_")
    try:
        out = os.path.join(scratch, "export")
        t0 = time.perf_counter()
        export.export_run(opts.workdir, out)
        export_s = time.perf_counter() - t0
        os.makedirs(os.path.join(scratch, "images"))
        files = _write_images(os.path.join(scratch, "images"), opts.images,
                              int(config.data.resolution))
        heat = os.path.join(scratch, "predict")
        workdir_s = _second_pass(lambda: predict.predict_files(opts.workdir, files, heat, batch))
        model_s = _second_pass(lambda: predict.predict_files_exported(out, files, batch))
        model = serving.load(out, warn=False)
        platforms = model.manifest["platforms"]
        scorer = _run_scorer(opts.workdir, batch)
        serving_s, run_s = _alternating([lambda: model.predict(files, batch),
                                         lambda: scorer(files)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    n = len(files)
    return [{"bench": "export", "workdir": opts.workdir, "images": n, "batch": batch,
             "resolution": int(config.data.resolution), "crop": int(config.data.crop),
             "export_s": round(export_s, 2), "platforms": platforms,
             "workdir_images_per_s": round(n / workdir_s, 2),
             "model_images_per_s": round(n / model_s, 2),
             "serving_images_per_s": round(n / serving_s, 2),
             "run_scoring_images_per_s": round(n / run_s, 2)}]
