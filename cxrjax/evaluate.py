"""Evaluate predictions or trained runs: the paper's AUC family as a table and JSON.

    python -m cxrjax.evaluate --predictions FILE [--labels DATA_ENTRY_CSV] [--json OUT.json]
                              [--thresholds thresholds.json] [--subgroups]
    python -m cxrjax.evaluate --workdir W [W2 ...] [--split test|val] [--json OUT.json]

FILE is a predictions file (``cxrjax.evaluation.prediction_files``: ``Image Index`` plus
``<Class>`` or ``prob_<Class>`` columns). ``--workdir`` scores the best checkpoint of each run's
last stage on the split of the run's own data config, through ``evaluator.evaluate_run`` as ``main
--mode eval`` does; several workdirs are an ensemble: the mean of their fused probabilities (the
paper's R18 + D121 row), refused unless the runs' split holds the same images. Every bad input
is a one-line error and exit code 2. ``--thresholds`` (a run's ``W/eval/thresholds.json``)
adds the operating-point table: per class, sensitivity, specificity, PPV, NPV and F1 at those
thresholds, with bootstrap 95% CIs; a file for other classes is refused. ``--subgroups`` adds
the subgroup report (``cxrjax.evaluation.subgroups``) by the file's ``sex``, ``age`` and ``view``
columns (else the label table's). ``--dataset NAME`` (external validation) and ``--labels
google2019[=PATH]`` (NIH's adjudicated labels) are run by ``cxrjax.evaluation.external``;
``--dataset NAME --recalibrate val [--calibrator temperature|platt]`` (thresholds and calibrator
refitted for a new site) by ``cxrjax.evaluation.recalibration``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from cxrjax.data.labels import load_label_table
from cxrjax.evaluation import (
    evaluator,
    metrics,
    operating_points,
    operating_points_tables,
    recalibration,
)
from cxrjax.evaluation import external as external_cli
from cxrjax.evaluation.prediction_files import (
    format_table,
    format_value,
    load_predictions,
    write_json,
)
from cxrjax.io import checkpoint, cli, compilation_cache, fileio, logs


def evaluate_predictions(predictions: str | os.PathLike,
                         labels: str | os.PathLike | None = None, *, n_boot: int = 1000,
                         seed: int = 0, thresholds: str | os.PathLike | None = None,
                         subgroups: bool = False) -> dict:
    """Scores from a predictions file against the label table -> ``metrics.summary`` dict.

    W-AUC weights are the class shares of the whole label table used (the shipped NIH table by
    default); every predicted image must be in that table. With ``thresholds`` (a
    ``thresholds.json``), ``operating_points`` holds the measures at them. With
    ``subgroups``, ``subgroups`` holds ``subgroups.subgroup_report`` by the file's metadata
    columns, or by the label table's metadata when it has none.
    """
    points = operating_points.OperatingPoints.load(thresholds) if thresholds else None
    ids, scores = load_predictions(predictions)
    table = load_label_table(labels)
    truth = table.labels[table.rows(ids)]
    out = metrics.summary(scores, truth, weights=table.prevalence(), n_boot=n_boot, seed=seed)
    out["predictions"] = os.fspath(predictions)
    if points is not None:
        out["operating_points"] = {
            "rule": points.rule, "target_sensitivity": points.target_sensitivity,
            "thresholds_file": os.fspath(thresholds), "test_images": len(ids),
            **operating_points.operating_point_metrics(scores, truth, points.thresholds,
                                                       n_boot=n_boot, seed=seed)}
    if subgroups:
        from cxrjax.data import patient_metadata as metadata
        from cxrjax.evaluation import subgroups as subgroups_lib  # matplotlib: only when asked
        from cxrjax.evaluation.prediction_files import load_metadata_columns

        columns = load_metadata_columns(predictions)
        meta = (metadata.from_columns(columns, len(ids)) if columns
                else metadata.from_table(table, ids, "the label table"))
        out["subgroups"] = subgroups_lib.subgroup_report(
            scores, truth, meta, points.thresholds if points else None, n_boot=n_boot,
            seed=seed)
    return out


# ---------------------------------------------------------------------------------------------
# Trained runs: the best checkpoint of each workdir on a split, and ensembles of runs.
# ---------------------------------------------------------------------------------------------


def predict_workdir(workdir: str, split: str = "test"
                    ) -> tuple[list[str], dict[str, np.ndarray], np.ndarray, int]:
    """(image ids, {head: (N, 14) probabilities, "fused": ...}, labels, step) of a trained run
    on ``split`` of the run's own data config, jitted and batch-sharded over every device."""
    evaluator.check_split(split)
    run = evaluator.open_run(workdir)
    scores = run.evaluator.predict(run.variables, split)
    return scores.image_ids, scores.probs, scores.labels, run.step


def check_same_images(workdirs: Sequence[str], ids: Sequence[Sequence[str]],
                      split: str = "test") -> None:
    """Refuses (ValueError naming both workdirs) runs whose ``split`` holds other images: other
    split scheme, split seed or dataset. The same images in another order are fine."""
    first = set(ids[0])
    for w, other in zip(workdirs[1:], ids[1:], strict=True):
        differ = len(first.symmetric_difference(other))
        if differ or len(other) != len(ids[0]):
            raise ValueError(
                f"refusing to ensemble {workdirs[0]} and {w}: their {split} splits differ in "
                f"{differ} image id(s) ({len(ids[0])} vs {len(other)} images); train both on "
                "the same data and split")


def align_runs(workdirs: Sequence[str], ids: Sequence[Sequence[str]],
               labels: Sequence[np.ndarray], split: str = "test") -> list[np.ndarray]:
    """Row order that puts each run's images in the first run's order, after
    ``check_same_images``; runs with other labels for the same images are refused too."""
    check_same_images(workdirs, ids, split)
    orders = [np.arange(len(ids[0]))]
    for w, other, lab in zip(workdirs[1:], ids[1:], labels[1:], strict=True):
        position = {name: i for i, name in enumerate(other)}
        order = np.asarray([position[name] for name in ids[0]])
        wrong = int(np.any(lab[order] != labels[0], axis=1).sum())
        if wrong:
            raise ValueError(f"refusing to ensemble {workdirs[0]} and {w}: {wrong} image(s) of "
                             f"the {split} split have different labels in the two runs")
        orders.append(order)
    return orders


def evaluate_workdirs(workdirs: Sequence[str], split: str = "test", *, n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """``metrics.summary`` of one run's fused prediction (with ``heads``), or of the mean of
    several runs' fused probabilities (with each member's mean AUC under ``members``).

    An ensemble's splits are compared before any image is scored."""
    if len(set(map(fileio.expand, workdirs))) != len(workdirs):
        raise ValueError(f"a workdir is given twice: {' '.join(workdirs)}")
    evaluator.check_split(split)
    if len(workdirs) == 1:
        step, scores = evaluator.evaluate_run(workdirs[0], split, n_boot=n_boot, seed=seed)
        out = {**scores.results["fused"],
               "heads": {h: r for h, r in scores.results.items() if h != "fused"}}
        out.update(workdirs=[os.fspath(workdirs[0])], split=split, steps=[step])
        return out
    opened = [evaluator.open_run(w) for w in workdirs]
    classes = [tuple(r.config.data.classes) for r in opened]
    other = next((w for w, c in zip(workdirs, classes, strict=True) if c != classes[0]), None)
    if other is not None:
        raise ValueError(f"refusing to ensemble {workdirs[0]} and {other}: they predict other "
                         "classes (data.classes)")
    check_same_images(workdirs, [r.evaluator.datasets.image_ids(split) for r in opened], split)
    results = [r.evaluator.predict(r.variables, split) for r in opened]
    ids, labels = [r.image_ids for r in results], [r.labels for r in results]
    orders = align_runs(workdirs, ids, labels, split)
    fused = [r.probs["fused"][order] for r, order in zip(results, orders, strict=True)]
    # The first run's labels, mask and class names (masked data: known labels only).
    out = evaluator.summarize(np.mean(fused, axis=0), results[0], n_boot=n_boot, seed=seed)
    out["members"] = {os.fspath(w): evaluator.summarize(f, results[0], n_boot=0)["mean_auc"]
                      for w, f in zip(workdirs, fused, strict=True)}
    out.update(workdirs=[os.fspath(w) for w in workdirs], split=split,
               steps=[r.step for r in opened])
    return out


def _describe(summary: dict) -> str:
    """The header line above a workdir evaluation's table."""
    runs_text = ", ".join(f"{w} (step {s})" for w, s in
                          zip(summary["workdirs"], summary["steps"], strict=True))
    if len(summary["workdirs"]) == 1:
        heads = ", ".join(f"{h} {format_value(r['mean_auc'], 4)}"
                          for h, r in summary["heads"].items())
        return (f"{runs_text}: {summary['split']} split, fused prediction (mean AUC per head: "
                f"{heads})")
    members = ", ".join(f"{format_value(a, 4)}" for a in summary["members"].values())
    return (f"ensemble of {runs_text}: {summary['split']} split, mean of the fused "
            f"probabilities (members' mean AUC: {members})")


def build_parser() -> argparse.ArgumentParser:
    """The CLI; each mode is one argument of the required ``mode`` group."""
    parser = cli.parser("python -m cxrjax.evaluate", __doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--predictions", metavar="FILE",
                      help="CSV(.gz): 'Image Index' + one '<Class>' or 'prob_<Class>' column each")
    mode.add_argument("--workdir", metavar="W", nargs="+",
                      help="trained run(s); several: average their fused probabilities")
    parser.add_argument("--split", choices=evaluator.SPLITS, default=None,
                        help="with --workdir: the split to score (default: test)")
    parser.add_argument("--labels", metavar="DATA_ENTRY_CSV", default=None,
                        help="NIH Data_Entry table (default: the copy shipped in the package); "
                             "or google2019[=PATH]: NIH's radiologist-adjudicated labels "
                             "(also with --workdir)")
    parser.add_argument("--json", metavar="OUT.json", default=None, help="also write the numbers")
    parser.add_argument("--n_boot", type=int, default=1000,
                        help="bootstrap resamples for the CI of the mean AUC (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--thresholds", metavar="FILE", default=None,
                        help="with --predictions: per-class thresholds (a run's "
                             "W/eval/thresholds.json); adds the operating-point table")
    parser.add_argument("--subgroups", action="store_true",
                        help="with --predictions: AUCs, ECE and calls by sex, age band and "
                             "view (the file's sex/age/view columns, else the label table's)")
    external_cli.add_flags(parser)
    recalibration.add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the command line) in this process."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Runs the parsed command; returns the exit code (2 on bad input, with a one-line
    message)."""
    logs.setup(logging.WARNING, libraries=logging.ERROR)  # our format; warnings only
    compilation_cache.enable()  # a run's scoring function loads from disk after its training
    try:
        if args.n_boot < 0:
            raise ValueError(f"--n_boot must be >= 0, got {args.n_boot}")
        if args.recalibrate or args.calibrator:  # --dataset NAME --recalibrate val
            return recalibration.run_cli(args)
        if external_cli.handles(args):  # --dataset, --labels google2019
            return external_cli.run_cli(args)
        if args.workdir and args.labels:
            raise ValueError("--labels applies to --predictions only; a run's labels come from "
                             "its own dataset")
        if args.predictions and args.split:
            raise ValueError("--split applies to --workdir only")
        if args.workdir and args.thresholds:
            raise ValueError("--thresholds applies to --predictions only; a run's operating "
                             "points are in its eval/test_metrics.json and report.md")
        if args.workdir and args.subgroups:
            raise ValueError("--subgroups applies to --predictions only; a run's subgroups are "
                             "in its eval/subgroups.md")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.workdir:
                summary = evaluate_workdirs(args.workdir, args.split or "test",
                                            n_boot=args.n_boot, seed=args.seed)
            else:
                summary = evaluate_predictions(args.predictions, args.labels,
                                               n_boot=args.n_boot, seed=args.seed,
                                               thresholds=args.thresholds,
                                               subgroups=args.subgroups)
        for message in dict.fromkeys(str(w.message) for w in caught):  # once each, one line
            print(f"warning: {message}", file=sys.stderr)
        if args.workdir:
            print(_describe(summary))
        print(format_table(summary))
        if "operating_points" in summary:
            points = summary["operating_points"]
            ci = (f"95% CI in brackets: {points['n_boot']} bootstrap resamples of the images"
                  if points["n_boot"] else "no bootstrap CI")
            print(f"\nOperating points at the thresholds of {points['thresholds_file']} (rule "
                  f"{points['rule']}; {ci}):")
            print(operating_points_tables.format_text(points))
        if "subgroups" in summary:
            from cxrjax.evaluation import subgroups_report

            print("\n" + subgroups_report.markdown(summary["subgroups"], "#", per_class=False))
        if args.json:
            write_json(summary, args.json)
    except (ValueError, OSError, checkpoint.CheckpointError) as e:  # LabelError: a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    cli.run(build_parser, run_cli)
