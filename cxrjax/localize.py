"""Box localization of a trained run, scored as Wang et al. (CVPR 2017).

    python -m cxrjax.localize --workdir W [--boxes CSV] [--split test|val|train|all]
                              [--json OUT.json] [--out DIR] [--methods gradcam,cam_a,cam_b]
                              [--per box|image]

For every image of the run's split (default: test) that has boxes in CSV (NIH's
``BBox_List_2017.csv`` format, 1024² frame; default: the run's data folder's own list, as the
NIH download and the synthetic set have one, else NIH's list shipped in the package), the
heatmap of each boxed class becomes boxes (``cxrjax.evaluation.localization``), mapped back to
the 1024² frame and scored: accuracy at T(IoU) and T(IoBB) for T in 0.1 ... 0.9 and false-positive
boxes per image, per class and overall, beside random boxes of the same sizes. Prints the
tables; writes DIR/localization.json (or OUT.json), DIR/localization.md and
DIR/localization.png (default DIR: W/eval). The methods: Grad-CAM of the fused prediction on
stream A, and the CAM of each stream's own pooled head (``cxrjax.evaluation.heatmaps``). A bad
input is a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from cxrjax.evaluation import boxes as loc
from cxrjax.evaluation import evaluator, heatmaps
from cxrjax.evaluation import localization as localizer
from cxrjax.io import checkpoint, cli, compilation_cache, fileio, logs, run_layout
from cxrjax.runfolder import lock as run_lock


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    parser = cli.parser("python -m cxrjax.localize", __doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run (cxrjax.main)")
    parser.add_argument("--boxes", metavar="CSV", default=None,
                        help="BBox_List_2017-format boxes (default: the run's data folder's "
                             "own, else NIH's list shipped in the package)")
    parser.add_argument("--split", choices=localizer.SPLITS, default="test",
                        help="which images of the run's dataset to score (default: test)")
    parser.add_argument("--json", metavar="OUT.json", default=None,
                        help="the numbers (default: DIR/localization.json)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="folder for localization.md and .png (default: WORKDIR/eval)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated heatmaps, the first leading the tables and the "
                             "picture (default: all the model offers, led by the run's "
                             "eval.localization_heatmap)")
    parser.add_argument("--per", choices=loc.ACCURACY_PER, default=None,
                        help="what accuracy counts: each ground-truth box, or each (image, "
                             "class) pair once (default: the run's eval.localization_per, "
                             "box unless set)")

    parser.add_argument("--grid", type=int, default=8, help="images in the PNG grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-box baseline")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Runs the parsed command; returns the exit code (2 on bad input, with a one-line
    message)."""
    logs.setup(logging.WARNING, libraries=logging.ERROR)  # our format; warnings only
    compilation_cache.enable()
    try:
        if args.grid < 1:
            raise ValueError(f"--grid must be >= 1, got {args.grid}")
        if not args.out and fileio.isdir(args.workdir):  # (a file: open_run names it)
            # The run's own eval/: never beside a live run's writes.
            run_lock.refuse_if_locked(args.workdir, "localization files")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = evaluator.open_run(args.workdir)
            path = args.boxes or localizer.default_boxes_path(run.config, run.workdir)
            if not fileio.exists(path):
                raise FileNotFoundError(f"boxes file not found: {path}")
            boxes = loc.read_boxes(path)
            methods = (heatmaps.check_methods(args.methods.split(","), run.evaluator.model)
                       if args.methods else None)
            primary = methods[0] if methods else run.config.eval.localization_heatmap
            per = args.per or run.config.eval.localization_per
            localized = run.evaluator.localize(run.variables, boxes, args.split,
                                               methods=methods, boxes_file=path, seed=args.seed,
                                               primary=primary, per=per)
            out_dir = args.out or run_layout.path(run.workdir, run_layout.EVAL)
            paths = localizer.write_outputs(localized, run.evaluator.datasets, out_dir,
                                            args.json, count=args.grid)
    except (ValueError, OSError, checkpoint.CheckpointError) as e:  # BoxError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)
    r = localized.result
    print(f"{args.workdir} (step {run.step}): {r['boxes']} boxes on {r['images']} images of "
          f"the {r['split']} split, from {path}\n")
    print(localizer.markdown_tables(r))
    print(f"\nwrote {paths['json']}, {paths['md']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, run_cli)
