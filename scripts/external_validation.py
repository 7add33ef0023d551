"""The train-source x test-dataset matrix of external validation, as markdown and a heat map.

    python scripts/external_validation.py --runs W [W2 ...] --datasets NAME[:FIELD=VALUE...] ...
        [--data FIELD=VALUE ...] [--split test] [--n_boot 1000] [--out DIR]

Each run is scored on each dataset by ``cxrjax.evaluation.external.score_run`` (the run's files
under ``W/eval/external_*`` are written as by ``python -m cxrjax.evaluate --workdir W
--dataset``).
A dataset is a ``data.source`` with optional ``:FIELD=VALUE`` overrides of its own, e.g.
``synthetic_chexpert:synthetic_site=other``; ``--data`` overrides apply to every dataset.
A cell gives the mean AUC over the shared classes with its 95% CI, the number of classes, and
the difference from the run's own test mean AUC over those classes with its CI. Writes
``DIR/external_validation.{md,png,json}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from cxrjax.evaluation import external
from cxrjax.evaluation.prediction_files import format_value, write_json
from cxrjax.io import fileio, logs


def parse_dataset(spec: str, common: Sequence[str]) -> tuple[str, list[str]]:
    """``NAME:F=V:F=V`` -> (NAME, the common overrides then its own)."""
    name, *own = spec.split(":")
    if not name:
        raise ValueError(f"--datasets {spec!r}: no dataset name")
    return name, [*common, *own]


def cell_text(result: dict) -> str:
    """``0.712 [0.650, 0.770], 7 classes; Δ -0.101 [-0.160, -0.040]``."""
    ext = result["external"]
    lo, hi = ext["mean_auc_ci95"]
    dlo, dhi = result["mean_auc_difference_ci95"]
    f = format_value
    return (f"{f(ext['mean_auc'], 3)} [{f(lo, 3)}, {f(hi, 3)}], "
            f"{len(result['classes_compared'])} classes; Δ {f(result['mean_auc_difference'], 3)}"
            f" [{f(dlo, 3)}, {f(dhi, 3)}]")


def row_name(result: dict) -> str:
    return f"{result['train_source']} ({os.path.basename(result['workdir'].rstrip('/'))})"


def markdown(results: list[list[dict]], labels: Sequence[str], common: Sequence[str] = ()
             ) -> str:
    """The matrix: per run (its train source) a row of cells and a row of its own test mean
    AUC over each column's classes; one column per dataset."""
    f = format_value
    lines = ["| trained on \\ scored on | " + " | ".join(labels) + " |",
             "| --- |" + " --- |" * len(labels)]
    for row in results:
        lines.append(f"| {row_name(row[0])} | " + " | ".join(cell_text(r) for r in row) + " |")
        lines.append("| own test, same classes | " + " | ".join(
            f"{f(r['own_test']['mean_auc'], 3)} [{f(r['own_test']['mean_auc_ci95'][0], 3)}, "
            f"{f(r['own_test']['mean_auc_ci95'][1], 3)}]" for r in row) + " |")
    n_boot = results[0][0]["external"]["n_boot"]
    lines += ["", "Each cell: mean AUC over the classes the model and the dataset share (each "
              "class over its images with a known label) with its 95% CI, the number of those "
              "classes, and Δ = that mean minus the run's own test mean AUC over the same "
              f"classes, with its 95% CI ({n_boot} bootstrap resamples)."
              + (f" Every dataset read with {', '.join(common)}." if common else "")]
    return "\n".join(lines) + "\n"


def heat_map(results: list[list[dict]], labels: Sequence[str], path: str) -> None:
    """A PNG of the mean AUCs, each cell annotated with its CI and class count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array([[r["external"]["mean_auc"] for r in row] for row in results])
    fig, ax = plt.subplots(figsize=(2.6 * len(labels) + 2, 1.2 * len(results) + 1.5))
    image = ax.imshow(values, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
    for i, row in enumerate(results):
        for j, r in enumerate(row):
            lo, hi = r["external"]["mean_auc_ci95"]
            ax.text(j, i, f"{r['external']['mean_auc']:.3f}\n[{lo:.3f}, {hi:.3f}]\n"
                          f"{len(r['classes_compared'])} cls, Δ {r['mean_auc_difference']:+.3f}",
                    ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < 0.75 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(results)), [row_name(row[0]) for row in results], fontsize=8)
    ax.set_xlabel("scored on")
    ax.set_ylabel("trained on")
    fig.colorbar(image, ax=ax, label="mean AUC")
    fig.tight_layout()
    fileio.makedirs(os.path.dirname(path) or ".")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="W", help="trained runs")
    parser.add_argument("--datasets", nargs="+", required=True, metavar="NAME[:F=V...]",
                        help="data sources to score each run on, each with its own overrides")
    parser.add_argument("--data", action="append", default=[], metavar="FIELD=VALUE",
                        help="a data field for every dataset (e.g. synthetic_seed=1, data_dir=D)")
    parser.add_argument("--split", default="test", help="the datasets' split (default: test)")
    parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default="external_validation", help="output folder")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        specs = [parse_dataset(s, args.data) for s in args.datasets]
        labels = [external.dataset_label(name, over[len(args.data):]) for name, over in specs]
        results = [[external.score_run(w, name, split=args.split, overrides=over,
                                       n_boot=args.n_boot, seed=args.seed)
                    for name, over in specs] for w in args.runs]
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(results, labels, args.data)
    fileio.makedirs(args.out)
    fileio.write_text(os.path.join(args.out, "external_validation.md"), text)
    heat_map(results, labels, os.path.join(args.out, "external_validation.png"))
    write_json({"runs": args.runs, "datasets": labels, "cells": results},
               os.path.join(args.out, "external_validation.json"))
    print(text, end="")
    print(f"wrote {os.path.join(args.out, 'external_validation')}.{{md,png,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
