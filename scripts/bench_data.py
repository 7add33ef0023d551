"""Data benchmarks: the prepare builder against a bare PIL loop, and grain images/s per worker.

    python scripts/benchmark.py data-prepare  [--manual_dir D] [--workers 1,2] [--resolution 256]
        [--formats nih,chexpert,mimic_cxr,padchest] [--synthetic_n 200] [--synthetic_size 1024]
    python scripts/benchmark.py data-pipeline [--manual_dir D] [--workers 0,1,2] [--batch 64]
    python scripts/bench_data.py data-prepare|data-pipeline ...    (the same, standalone)

The default input is the 207 real NIH images of ``../shared/data/nih_sample`` (a Data_Entry CSV
of their rows is written next to a link to them). ``data-prepare`` also times the other
releases' formats, CheXpert's and MIMIC-CXR-JPG's JPEGs and PadChest's 16-bit PNGs: synthetic
sets in those layouts (``cxrjax.data.synthetic``, drawn once under ``--data_root`` and reused),
prepared through the real builders, each against a bare decode loop of the same files.
Each function returns one dict per figure;
``scripts/benchmark.py`` prints them as JSON lines (the standalone ``main`` prints them too).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import json
import os
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(os.path.dirname(ROOT), "shared", "data", "nih_sample")
SYNTHETIC_FORMATS = ("chexpert", "mimic_cxr", "padchest")  # JPEG, JPEG, 16-bit PNG


def _options(args) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_data")
    p.add_argument("--manual_dir", default=SAMPLE, help="NIH layout; a bare image folder works")
    p.add_argument("--workers", default=None, help="comma-separated worker counts")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    # benchmark.py has its own --batch (default 256); standalone the default is 64.
    p.add_argument("--batch", type=int, default=getattr(args, "batch", None) or 64)
    p.add_argument("--batches", type=int, default=40, help="timed batches per worker count")
    p.add_argument("--data_dir", default=None, help="a prepared dataset (data-pipeline)")
    p.add_argument("--repeat", type=int, default=5,
                   help="link each sample image this many times (amortises start-up; gives "
                        "the pipeline a train split larger than one batch)")
    p.add_argument("--formats", default="nih," + ",".join(SYNTHETIC_FORMATS),
                   help="data-prepare: nih (the sample's PNGs) and synthetic sets in these "
                        f"releases' layouts: {', '.join(SYNTHETIC_FORMATS)}")
    p.add_argument("--synthetic_n", type=int, default=200, help="images per synthetic format")
    p.add_argument("--synthetic_size", type=int, default=1024, help="their side in pixels")
    p.add_argument("--data_root", default=os.path.join(ROOT, ".bench"),
                   help="where the synthetic sets are drawn once and reused")
    return p.parse_args(getattr(args, "extra", []) or [])


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _with_table(manual_dir: str, tmp: str, repeat: int = 1) -> str:
    """``manual_dir`` itself if it has a Data_Entry CSV, else a linked copy with one.

    ``repeat`` > 1 links every image that many times under new names (``r{k}_NAME``) with
    copies of its row, so that fixed start-up costs do not dominate a 207-image timing.
    """
    if repeat == 1 and glob.glob(os.path.join(manual_dir, "Data_Entry_2017*.csv*")):
        return manual_dir
    from cxrjax.data import labels

    images = os.path.join(manual_dir, "images")
    names = set(os.listdir(images))
    out = os.path.join(tmp, "nih")
    os.makedirs(os.path.join(out, "images"))
    with gzip.open(labels.resource_path("Data_Entry_2017_v2020.csv.gz"), "rt") as f:
        lines = f.read().splitlines()
    rows = [x for x in lines[1:] if x.split(",")[0] in names]
    out_rows = []
    for k in range(repeat):
        for row in rows:
            name = row.split(",")[0]
            new = name if k == 0 else f"r{k}_{name}"
            os.symlink(os.path.abspath(os.path.join(images, name)),
                       os.path.join(out, "images", new))
            out_rows.append(new + row[len(name):])
    with open(os.path.join(out, "Data_Entry_2017_v2020.csv"), "w") as f:
        f.write("\n".join([lines[0]] + out_rows) + "\n")
    return out


def _bare_loop(paths: list[str], resolution: int) -> float:
    """Images/s of the simplest single-core PIL decode + grayscale + resize loop (a 16-bit
    image: its top 8 bits)."""
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            if img.mode.startswith("I;16"):
                img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
            img.convert("L").resize((resolution, resolution), Image.Resampling.BILINEAR)
    return len(paths) / (time.perf_counter() - t)


def _bare_parallel(paths: list[str], resolution: int, workers: int) -> float:
    """Images/s of ``workers`` bare loops on disjoint slices at once: what W cores give now."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(_bare_loop, [paths[:2]] * workers, [resolution] * workers))  # start-up
        t = time.perf_counter()
        list(pool.map(_bare_loop, [paths[i::workers] for i in range(workers)],
                      [resolution] * workers))
        return len(paths) / (time.perf_counter() - t)


def run_data_prepare(args) -> list[dict]:
    """Per-core builder throughput vs the bare loop (same run) for each of ``--formats``, and
    raw vs PNG records."""
    from cxrjax.data import nih_layout

    opt = _options(args)
    workers = [int(w) for w in (opt.workers or f"1,{_cores()}").split(",")]
    formats = [f for f in opt.formats.split(",") if f]
    unknown = sorted(set(formats) - {"nih", *SYNTHETIC_FORMATS})
    if unknown:
        raise SystemExit(f"error: --formats: unknown {', '.join(unknown)}")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            if fmt == "nih":
                manual = _with_table(opt.manual_dir, tmp, opt.repeat)
                rows = sorted(nih_layout.scan(manual)[0], key=lambda r: r.image_id)
            else:
                manual, rows = _synthetic_release(fmt, opt)
            paths = [r.path for r in rows]
            records += _builder_vs_bare(fmt, manual, paths, workers, opt.resolution, tmp)
            if fmt == "nih":
                records.append(_storage(paths[:50], opt.resolution, nih_layout))
    return records


def _synthetic_release(fmt: str, opt: argparse.Namespace) -> tuple[str, list]:
    """A synthetic set in release ``fmt``'s layout (drawn once under ``--data_root``) and the
    rows its builder decodes (the default views)."""
    from cxrjax.data import chexpert_layout, mimic_layout, padchest_layout, synthetic

    manual = os.path.join(opt.data_root, "prepare_formats",
                          f"{fmt}_n{opt.synthetic_n}_s{opt.synthetic_size}")
    synthetic.generate_format(manual, fmt, opt.synthetic_n, opt.synthetic_size, seed=0)
    layout = {"chexpert": chexpert_layout, "mimic_cxr": mimic_layout,
              "padchest": padchest_layout}[fmt]
    return manual, layout.scan(manual).rows


_BUILDERS = {"nih": "chest_xray14", "chexpert": "chexpert", "mimic_cxr": "mimic_cxr",
             "padchest": "padchest"}


def _builder_vs_bare(fmt: str, manual: str, paths: list[str], workers: list[int],
                     resolution: int, tmp: str) -> list[dict]:
    """The bare loop's line, then one line per worker count: the release's builder preparing
    the same files, and its ratio to as many bare loops run at the same moment."""
    from cxrjax.data import builder, release_builder

    with Image.open(paths[0]) as first:
        kind = {"PNG": "PNG", "JPEG": "JPEG"}.get(first.format, first.format) + (
            " 16-bit" if first.mode.startswith("I;16") else "")
    _bare_loop(paths[:5], resolution)  # warm the page cache
    bare = _bare_loop(paths, resolution)
    records = [{"bench": "data-prepare", "format": fmt, "files": kind,
                "what": "bare PIL decode+resize loop", "images": len(paths),
                "resolution": resolution, "images_per_s_per_core": round(bare, 1)}]
    for w in workers:
        bare_w = bare if w <= 1 else _bare_parallel(paths, resolution, w)
        out = os.path.join(tmp, f"{fmt}_out{w}")
        t = time.perf_counter()
        if fmt == "nih":
            builder.build(manual, out, resolution=resolution, workers=w)
        else:
            release_builder.build(fmt, manual, out, resolution=resolution, workers=w)
        ips = len(paths) / (time.perf_counter() - t)
        n = max(min(w, _cores()), 1)
        records.append({"bench": "data-prepare", "format": fmt, "files": kind,
                        "what": f"{_BUILDERS[fmt]} builder", "workers": w, "cores": _cores(),
                        "images": len(paths), "resolution": resolution,
                        "images_per_s": round(ips, 1),
                        "images_per_s_per_core": round(ips / n, 1),
                        "bare_loops_in_parallel_images_per_s": round(bare_w, 1),
                        "vs_bare_loop": round(ips / bare_w, 3),
                        "load_average_1min": round(os.getloadavg()[0], 2)})
    return records


def _storage(paths: list[str], resolution: int, nih_layout) -> dict:
    """Bytes per record and decode cost: raw uint8 vs PNG-encoded, at ``resolution``."""
    images = [nih_layout.decode_image(p, resolution)[0] for p in paths]
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    t = time.perf_counter()
    for _ in range(5):
        for b in pngs:
            np.asarray(Image.open(io.BytesIO(b)))
    png_ms = (time.perf_counter() - t) / (5 * len(pngs)) * 1e3
    t = time.perf_counter()
    for _ in range(5):
        for im in images:
            np.frombuffer(im.tobytes(), np.uint8).reshape(im.shape).copy()
    raw_ms = (time.perf_counter() - t) / (5 * len(images)) * 1e3
    zipped = [zlib.compress(im.tobytes()) for im in images]
    t = time.perf_counter()
    for b in zipped:
        np.frombuffer(zlib.decompress(b), np.uint8)
    zlib_ms = (time.perf_counter() - t) / len(zipped) * 1e3
    return {"bench": "data-prepare", "what": "record storage raw vs PNG vs zlib",
            "zlib_bytes_mean": int(np.mean([len(b) for b in zipped])),
            "zlib_decode_ms": round(zlib_ms, 3),
            "resolution": resolution, "raw_bytes": resolution * resolution,
            "png_bytes_mean": int(np.mean([len(b) for b in pngs])),
            "png_decode_ms": round(png_ms, 3), "raw_copy_ms": round(raw_ms, 4)}


def run_data_pipeline(args) -> list[dict]:
    """Train-pipeline images/s (ArrayRecord, resolution -> crop) per grain worker count."""
    import ml_collections as mlc

    from cxrjax.data import builder, pipeline

    opt = _options(args)
    workers = [int(w) for w in (opt.workers or ",".join(
        str(w) for w in sorted({0, 1, _cores()}))).split(",")]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        manual = _with_table(opt.manual_dir, tmp, opt.repeat)
        data_dir = opt.data_dir
        if data_dir is None:
            data_dir = os.path.join(tmp, "tfds")
            builder.build(manual, data_dir, resolution=opt.resolution)
        src = pipeline.TfdsRecords(data_dir, opt.resolution)
        t = time.perf_counter()
        for i in range(len(src)):
            src[i]
        read = len(src) / (time.perf_counter() - t)
        records.append({"bench": "data-pipeline", "what": "TFDS ArrayRecord random read",
                        "images_per_s": round(read, 1), "resolution": opt.resolution})
        for w in workers:
            cfg = mlc.ConfigDict(dict(
                source="nih", data_dir=data_dir, manual_dir=manual, split_scheme="paper",
                split_seed=0, resolution=opt.resolution, crop=opt.crop, flip=False, workers=w,
                prefetch=4, chestmnist_path="", synthetic_n=0, synthetic_size=0))
            prepared = pipeline.PreparedData(data_dir=data_dir, manual_dir=manual)
            ds = pipeline.create_datasets(cfg, prepared, global_batch_size=opt.batch,
                                          eval_batch_size=opt.batch, seed=0, process_index=0,
                                          process_count=1)
            it = ds.train_iter()
            for _ in range(3):  # start the workers, fill the buffers
                next(it)
            t = time.perf_counter()
            for _ in range(opt.batches):
                next(it)
            ips = opt.batches * opt.batch / (time.perf_counter() - t)
            records.append({"bench": "data-pipeline", "what": "grain train batches",
                            "workers": w, "cores": _cores(), "batch": opt.batch,
                            "resolution": opt.resolution, "crop": opt.crop,
                            "images_per_s": round(ips, 1),
                            "images_per_s_per_core": round(ips / max(min(w, _cores()), 1), 1)})
    return records


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("data-prepare", "data-pipeline"):
        sys.exit("usage: bench_data.py data-prepare|data-pipeline [options]")
    sys.path.insert(0, ROOT)
    run = run_data_prepare if argv[0] == "data-prepare" else run_data_pipeline
    for record in run(argparse.Namespace(extra=argv[1:])):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
