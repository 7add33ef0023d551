"""Prepares a release once: decode every image, resize, write ArrayRecord shards through TFDS.

    python -m cxrjax.data.prepare [--dataset nih|chexpert|mimic_cxr|padchest]
        --manual_dir DIR --data_dir OUT [--resolution 256] [--workers N] [--skip_bad]
        [--views PA,AP] [--labeler chexpert|negbio]

``--dataset nih`` (the default) is described below; the other releases are read by their
layout modules (``chexpert_layout``, ``mimic_layout``, ``padchest_layout``) and written by
``release_builder`` with the same contract, keeping only ``--views`` (default PA,AP) and
counting every image left out (view, bad file, missing label).

NIH_DIR is the download as users have it: ``Data_Entry_2017*.csv``, images in ``images/`` or
``images_001/images/ … images_012/images/`` (read by ``nih_layout``). Bad input fails before
any dataset appears: the message counts the problems and shows the first few, and
``OUT/prepare_problems.tsv`` lists them all. ``--skip_bad`` writes the rest plus a manifest of
what was skipped and why. The work is done by the TFDS builder (``builder.build``).

OUT may be ``gs://BUCKET/...``: array_record cannot write to a bucket, so the dataset is built
on this disk (under ``$CXRJAX_CACHE_DIR``, default ~/.cache/cxrjax, in ``prepare/BUCKET/...``)
and then copied up, every file verified by CRC32C (``mirror.copy_tree``; a rerun copies only
what is missing).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cxrjax.data import builder, mimic_layout, release_builder
from cxrjax.data import release_rows as rr
from cxrjax.io import cli, fileio, logs, mirror, storage_checks

PROG = "python -m cxrjax.data.prepare"


def build_parser() -> argparse.ArgumentParser:
    """The command line: what it makes, from what, and every option's default."""
    parser = cli.parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="nih", choices=["nih", *release_builder.BUILDERS],
                        help="which release (default: %(default)s)")
    parser.add_argument("--manual_dir", required=True,
                        help="the download: for NIH, Data_Entry_2017*.csv and its PNGs in "
                             "images/ (or images_001/images/ ... images_012/images/); for the "
                             "others, see README's datasets table")
    parser.add_argument("--data_dir", required=True,
                        help="where the dataset is written; give training this folder as "
                             "data.data_dir")
    parser.add_argument("--resolution", type=int, default=builder.DEFAULT_RESOLUTION,
                        help="side in pixels of the stored square images, 8 to 1024 (default: "
                             "%(default)s); train with the same data.resolution and a "
                             "data.crop no larger")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per core; 0: this process)")
    parser.add_argument("--skip_bad", action="store_true",
                        help="write the good images and list the bad ones, with the reason, in "
                             f"{builder.MANIFEST_NAME} beside the records (default: refuse)")
    parser.add_argument("--views", default=",".join(rr.DEFAULT_VIEWS),
                        help="views to keep, comma-separated (not NIH; default: %(default)s; "
                             "laterals are LATERAL)")
    parser.add_argument("--labeler", default="chexpert", choices=mimic_layout.LABELERS,
                        help="MIMIC-CXR's label table (default: %(default)s)")
    return parser


def _build(args, data_dir: str):
    """The dataset's builder, prepared (or reused)."""
    if args.dataset == "nih":
        return builder.build(args.manual_dir, data_dir, resolution=args.resolution,
                             workers=args.workers, skip_bad=args.skip_bad)
    return release_builder.build(args.dataset, args.manual_dir, data_dir,
                                 resolution=args.resolution, views=args.views.split(","),
                                 labeler=args.labeler, workers=args.workers,
                                 skip_bad=args.skip_bad)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def _run_logged(args: argparse.Namespace) -> int:
    """``run_cli`` with our "preparing ..." line in the format of the other programs."""
    logs.setup()
    return run_cli(args)


def run_cli(args: argparse.Namespace) -> int:
    """Builds (or reuses) the dataset; 1 and the reason on bad input."""
    try:
        data_dir = args.data_dir
        if fileio.is_remote(data_dir):  # built here, then copied up (see the docstring)
            storage_checks.check_writable(data_dir)
            data_dir = os.path.join(mirror.cache_root(), "prepare",
                                    *fileio.split_bucket(fileio.expand(data_dir)))
        b = _build(args, data_dir)
        if data_dir != args.data_dir:
            copied = mirror.copy_tree(data_dir, args.data_dir)
            print(f"copied {copied} new file(s) of {data_dir} to {args.data_dir}, verified")
    except (ValueError, FileNotFoundError, fileio.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = b.info.metadata
    print(f"prepared {meta['num_images']} images at {args.resolution}px in {b.data_dir}; "
          f"converted to grayscale: {meta['converted'] or 'none'}")
    if meta["skipped"]:
        print(f"skipped {len(meta['skipped'])} image(s), listed with reasons in "
              f"{os.path.join(os.fspath(b.data_dir), builder.MANIFEST_NAME)}")
    if args.dataset != "nih":
        counts = meta["excluded"]
        print(f"left out {sum(counts.values())}: "
              f"{', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}"
              + (f"; listed in {os.path.join(os.fspath(b.data_dir), release_builder.EXCLUDED_NAME)}"
                 if counts else ""))
    return 0


if __name__ == "__main__":
    cli.run(build_parser, _run_logged)
