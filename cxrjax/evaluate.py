"""Evaluate predictions or trained runs: the paper's AUC family as a table and JSON.

    python -m cxrjax.evaluate --predictions FILE [--labels DATA_ENTRY_CSV] [--json OUT.json]
    python -m cxrjax.evaluate --workdir W [W2 ...] [--split test|val] [--json OUT.json]

FILE is ``.csv`` or ``.csv.gz`` with an ``Image Index`` column and one score column per class,
named ``<Class>`` or ``prob_<Class>`` (the CheXNet-reproduction format); other columns are
ignored. ``--workdir`` scores the best checkpoint of each run's last stage on the split of the
run's own data config (jitted, padded + masked batches); several workdirs are an ensemble: the
mean of their fused probabilities (the paper's R18 + D121 row), refused unless the runs' split
holds the same images. Every bad input is a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax import checkpoint, metrics, models, runs
from cxrjax.data.labels import CLASSES, load_label_table

IMAGE_COLUMN = "Image Index"
_PREFIX = "prob_"


def _class_key(name: str) -> str:
    """Column name -> comparable class key: 'prob_Pleural Thickening' -> 'pleural_thickening'."""
    name = name.strip()
    if name.lower().startswith(_PREFIX):
        name = name[len(_PREFIX):]
    return name.strip().lower().replace(" ", "_")


_CLASS_BY_KEY = {_class_key(c): i for i, c in enumerate(CLASSES)}


def _open_csv(path: str) -> io.TextIOBase:
    if not os.path.exists(path):
        raise FileNotFoundError(f"predictions file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"predictions path is a directory, not a CSV file: {path}")
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _class_columns(header: list[str], path: str) -> list[int]:
    """Header -> the column index of each class in NIH order; missing/duplicate/unknown: error."""
    if IMAGE_COLUMN not in header:
        raise ValueError(f"{path}: no {IMAGE_COLUMN!r} column (header: {', '.join(header)})")
    if header.count(IMAGE_COLUMN) > 1:
        raise ValueError(f"{path}: column {IMAGE_COLUMN!r} appears more than once")
    found: dict[int, list[str]] = {}
    for name in header:
        key = _class_key(name)
        if key in _CLASS_BY_KEY:
            found.setdefault(_CLASS_BY_KEY[key], []).append(name)
        elif name.lower().startswith(_PREFIX):
            raise ValueError(f"{path}: column {name!r} names no ChestX-ray14 class; expected "
                             f"one of {', '.join(CLASSES)}")
    duplicated = {CLASSES[c]: names for c, names in found.items() if len(names) > 1}
    if duplicated:
        raise ValueError(f"{path}: duplicated class column(s): " + "; ".join(
            f"{c} ({', '.join(map(repr, names))})" for c, names in duplicated.items()))
    missing = [c for i, c in enumerate(CLASSES) if i not in found]
    if missing:
        raise ValueError(f"{path}: missing class column(s) {', '.join(missing)}; expected "
                         f"'<Class>' or '{_PREFIX}<Class>' for each of the 14 classes")
    return [header.index(found[c][0]) for c in range(len(CLASSES))]


def _score(text: str, line: int, column: str, path: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} line {line}, column {column!r}: non-numeric score "
                         f"{text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path} line {line}, column {column!r}: score is {text.strip()!r}; "
                         "scores must be finite")
    return value


def load_predictions(path: str | os.PathLike) -> tuple[tuple[str, ...], np.ndarray]:
    """A predictions CSV -> (image ids, (N, 14) float64 scores in NIH class order)."""
    path = os.fspath(path)
    with _open_csv(path) as f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file (expected a header with {IMAGE_COLUMN!r} "
                                 "and 14 class columns)")
            header = [h.strip() for h in header]
            columns = _class_columns(header, path)
            image_col = header.index(IMAGE_COLUMN)
            ids: list[str] = []
            rows: list[list[float]] = []
            first_line: dict[str, int] = {}
            duplicates: list[str] = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue  # a blank line holds no prediction
                if len(row) != len(header):
                    raise ValueError(f"{path} line {line}: {len(row)} fields, header has "
                                     f"{len(header)}")
                name = row[image_col].strip()
                if not name:
                    raise ValueError(f"{path} line {line}: empty {IMAGE_COLUMN!r}")
                if name in first_line:
                    duplicates.append(f"{name} (lines {first_line[name]} and {line})")
                    continue
                first_line[name] = line
                ids.append(name)
                rows.append([_score(row[c], line, header[c], path) for c in columns])
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{path}: not a readable CSV ({e})") from None
    if duplicates:
        raise ValueError(f"{path}: {len(duplicates)} duplicate row(s), e.g. "
                         f"{', '.join(duplicates[:3])}")
    if not ids:
        raise ValueError(f"{path}: no prediction rows after the header")
    return tuple(ids), np.asarray(rows, np.float64)


def write_predictions(path: str | os.PathLike, image_ids: Sequence[str],
                      scores: np.ndarray) -> None:
    """Writes ``Image Index,prob_<Class>...`` (``.csv`` or ``.csv.gz``) that ``load_predictions``
    reads back; each score is the shortest text that round-trips its float32/float64 value, so
    ranks (and AUCs) computed from the file equal those computed from ``scores``.
    """
    path = os.fspath(path)
    scores = np.asarray(scores)
    if scores.dtype != np.float64:
        scores = scores.astype(np.float32)  # bfloat16/float16 are exact in float32
    if scores.ndim != 2 or scores.shape != (len(image_ids), len(CLASSES)):
        raise ValueError(f"scores must be ({len(image_ids)}, {len(CLASSES)}) for "
                         f"{len(image_ids)} image ids, got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"refusing to write non-finite scores to {path}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = scores.astype(str)  # numpy's shortest round-trip repr for the dtype
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([IMAGE_COLUMN, *(f"{_PREFIX}{c}" for c in CLASSES)])
        writer.writerows([name, *row] for name, row in zip(image_ids, text, strict=True))


def evaluate_predictions(predictions: str | os.PathLike,
                         labels: str | os.PathLike | None = None, *, n_boot: int = 1000,
                         seed: int = 0) -> dict:
    """Scores from a predictions file against the label table -> ``metrics.summary`` dict.

    W-AUC weights are the class shares of the whole label table used (the shipped NIH table by
    default); every predicted image must be in that table.
    """
    ids, scores = load_predictions(predictions)
    table = load_label_table(labels)
    truth = table.labels[table.rows(ids)]
    out = metrics.summary(scores, truth, weights=table.prevalence(), n_boot=n_boot, seed=seed)
    out["predictions"] = os.fspath(predictions)
    return out


def _fmt(value: float, digits: int = 6) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(summary: dict) -> str:
    """A ``metrics.summary`` dict -> per-class table plus summary rows, as plain text."""
    names = list(summary["per_class"])
    d, n = summary.get("per_class_d_auc", {}), summary.get("per_class_n_auc", {})
    pos, w = summary.get("n_positive", {}), summary.get("w_auc_weights", {})
    width = max(len("class"), *(len(c) for c in names))
    lines = [f"{'class':<{width}}  {'AUC':>8}  {'D-AUC':>8}  {'N-AUC':>8}  {'positives':>9}  "
             f"{'weight':>7}"]
    for c in names:
        lines.append(
            f"{c:<{width}}  {_fmt(summary['per_class'][c]):>8}  {_fmt(d.get(c, math.nan)):>8}  "
            f"{_fmt(n.get(c, math.nan)):>8}  {pos.get(c, ''):>9}  "
            f"{_fmt(w.get(c, math.nan), 4):>7}")
    lines.append("-" * len(lines[0]))
    excluded = summary.get("excluded_classes", [])
    n_used = len(names) - len(excluded)
    lo, hi = summary["mean_auc_ci95"]
    boot = summary.get("n_boot", 0)
    ci = (f"95% CI [{_fmt(lo)}, {_fmt(hi)}] ({boot} bootstrap resamples of the images)"
          if boot else "no bootstrap CI")
    rows = [
        (f"AUC (mean of {n_used})", summary["mean_auc"], ci),
        ("W-AUC", summary["w_auc"],
         f"weights: class share of all labelled images, sum {sum(w.values()):.4f}" if w else ""),
        ("W-AUC normalized", summary["w_auc_normalized"], "weights: positives here, sum 1"),
        ("D-AUC", summary["d_auc"], "images with >= 1 finding"),
        ("N-AUC", summary["n_auc"], "each class vs 'No Finding'"),
    ]
    label_width = max(len(r[0]) for r in rows)
    lines += [f"{name:<{label_width}}  {_fmt(v)}  {note}".rstrip() for name, v, note in rows]
    lines.append(f"{'images':<{label_width}}  {summary['n_images']}")
    for key, what in (("excluded_classes", "AUC, W-AUC"), ("d_auc_excluded_classes", "D-AUC"),
                      ("n_auc_excluded_classes", "N-AUC")):
        if summary.get(key):
            lines.append(f"left out of {what} (one label value): {', '.join(summary[key])}")
    return "\n".join(lines)


def _json_ready(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def write_json(summary: dict, path: str | os.PathLike) -> None:
    """Writes a summary as strict JSON (NaN as null); creates the parent folder."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_ready(summary), f, indent=2, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Jitted prediction over a split: padded + masked batches, every image scored exactly once.
# ---------------------------------------------------------------------------------------------


def make_predict_fn(model: Any, fusion: tuple[str, ...], mesh: Mesh) -> Callable:
    """Jitted (variables, images) -> {head: probabilities, "fused": ...}, batch-sharded."""
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def predict(variables, images):
        logits = model.apply(variables, images, train=False)
        return models.networks.probabilities(logits, fusion)

    return jax.jit(predict, in_shardings=(repl, data), out_shardings=data)


def predict_split(predict_fn: Callable, variables: dict, ds: Any, split: str, mesh: Mesh,
                  ) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """(image ids, {head: (N, 14) probabilities}, labels (N, 14)) for one split."""
    data = NamedSharding(mesh, P("data"))
    n = ds.num_examples(split)
    probs: dict[str, np.ndarray] = {}
    labels = np.zeros((n, len(CLASSES)), np.uint8)
    seen = np.zeros(n, np.int64)
    for host_batch in ds.eval_batches(split):
        images = jax.make_array_from_process_local_data(data, np.asarray(host_batch["image"]))
        out = predict_fn(variables, images)
        gathered = _gather({**out, "labels": host_batch["labels"], "mask": host_batch["mask"],
                            "index": host_batch["index"]}, data)
        keep = gathered["mask"].astype(bool)
        index = gathered["index"][keep]
        np.add.at(seen, index, 1)
        labels[index] = gathered["labels"][keep]
        for head in out:
            probs.setdefault(head, np.zeros((n, len(CLASSES)), np.float32))
            probs[head][index] = gathered[head][keep]
    if not np.all(seen == 1):
        raise RuntimeError(f"evaluation of {split!r} scored {int((seen == 0).sum())} images "
                           f"never and {int((seen > 1).sum())} more than once")
    return ds.image_ids(split), probs, labels


def _gather(tree: dict, data: NamedSharding) -> dict:
    """Every process's rows of a batch-sharded tree, as NumPy on every process."""
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in tree.items()}
    from jax.experimental import multihost_utils
    global_tree = {k: v if isinstance(v, jax.Array) else
                   jax.make_array_from_process_local_data(data, np.asarray(v))
                   for k, v in tree.items()}
    return {k: np.asarray(v) for k, v in
            multihost_utils.process_allgather(global_tree, tiled=True).items()}


# ---------------------------------------------------------------------------------------------
# Trained runs: the best checkpoint of each workdir on a split, and ensembles of runs.
# ---------------------------------------------------------------------------------------------

SPLITS = ("test", "val")


def _open_split(workdir: str, split: str) -> tuple[Any, Any, dict, int, Any]:
    """(config, model, variables, step, datasets) of a trained run; its data prepared."""
    from cxrjax.data import pipeline

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    config, model, variables, step = runs.load_run(workdir)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    data_cfg = pipeline.ensure_prepared(config.data, workdir)
    ds = pipeline.create_datasets(data_cfg, global_batch_size=config.train.batch_size,
                                  eval_batch_size=config.train.eval_batch_size, seed=config.seed)
    return config, model, variables, step, ds


def _predict(config: Any, model: Any, variables: dict, ds: Any, split: str
             ) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    predict_fn = make_predict_fn(model, tuple(config.model.fusion), mesh)
    ids, probs, labels = predict_split(predict_fn, variables, ds, split, mesh)
    return list(ids), probs, labels


def predict_workdir(workdir: str, split: str = "test"
                    ) -> tuple[list[str], dict[str, np.ndarray], np.ndarray, int]:
    """(image ids, {head: (N, 14) probabilities, "fused": ...}, labels, step) of a trained run
    on ``split`` of the run's own data config, jitted and batch-sharded over every device."""
    config, model, variables, step, ds = _open_split(workdir, split)
    return (*_predict(config, model, variables, ds, split), step)


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
    if len(set(map(os.path.abspath, workdirs))) != len(workdirs):
        raise ValueError(f"a workdir is given twice: {' '.join(workdirs)}")
    opened = [_open_split(w, split) for w in workdirs]
    check_same_images(workdirs, [o[4].image_ids(split) for o in opened], split)
    results = [_predict(config, model, variables, ds, split)
               for config, model, variables, _, ds in opened]
    steps = [o[3] for o in opened]
    ids, labels = [r[0] for r in results], [r[2] for r in results]
    if len(workdirs) == 1:
        _, probs, truth = results[0]
        out = metrics.summary(probs["fused"], truth, n_boot=n_boot, seed=seed)
        out["heads"] = {h: metrics.summary(p, truth, n_boot=n_boot, seed=seed)
                        for h, p in probs.items() if h != "fused"}
        out.update(workdirs=[os.fspath(workdirs[0])], split=split, steps=steps)
        return out
    orders = align_runs(workdirs, ids, labels, split)
    fused = [r[1]["fused"][order] for r, order in zip(results, orders, strict=True)]
    out = metrics.summary(np.mean(fused, axis=0), labels[0], n_boot=n_boot, seed=seed)
    out["members"] = {os.fspath(w): metrics.summary(f, labels[0], n_boot=0)["mean_auc"]
                      for w, f in zip(workdirs, fused, strict=True)}
    out.update(workdirs=[os.fspath(w) for w in workdirs], split=split, steps=steps)
    return out


def _describe(summary: dict) -> str:
    """The header line above a workdir evaluation's table."""
    runs_text = ", ".join(f"{w} (step {s})" for w, s in
                          zip(summary["workdirs"], summary["steps"], strict=True))
    if len(summary["workdirs"]) == 1:
        heads = ", ".join(f"{h} {_fmt(r['mean_auc'], 4)}" for h, r in summary["heads"].items())
        return (f"{runs_text}: {summary['split']} split, fused prediction (mean AUC per head: "
                f"{heads})")
    members = ", ".join(f"{_fmt(a, 4)}" for a in summary["members"].values())
    return (f"ensemble of {runs_text}: {summary['split']} split, mean of the fused "
            f"probabilities (members' mean AUC: {members})")


def build_parser() -> argparse.ArgumentParser:
    """The CLI; each mode is one argument of the required ``mode`` group."""
    parser = argparse.ArgumentParser(
        prog="python -m cxrjax.evaluate", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--predictions", metavar="FILE",
                      help="CSV(.gz): 'Image Index' + one '<Class>' or 'prob_<Class>' column each")
    mode.add_argument("--workdir", metavar="W", nargs="+",
                      help="trained run(s); several: average their fused probabilities")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="with --workdir: the split to score (default: test)")
    parser.add_argument("--labels", metavar="DATA_ENTRY_CSV", default=None,
                        help="NIH Data_Entry table (default: the copy shipped in the package)")
    parser.add_argument("--json", metavar="OUT.json", default=None, help="also write the numbers")
    parser.add_argument("--n_boot", type=int, default=1000,
                        help="bootstrap resamples for the CI of the mean AUC (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (2 on bad input, with a one-line message)."""
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax/TFDS chatter is not for users
    try:
        if args.n_boot < 0:
            raise ValueError(f"--n_boot must be >= 0, got {args.n_boot}")
        if args.workdir and args.labels:
            raise ValueError("--labels applies to --predictions only; a run's labels come from "
                             "its own dataset")
        if args.predictions and args.split:
            raise ValueError("--split applies to --workdir only")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.workdir:
                summary = evaluate_workdirs(args.workdir, args.split or "test",
                                            n_boot=args.n_boot, seed=args.seed)
            else:
                summary = evaluate_predictions(args.predictions, args.labels,
                                               n_boot=args.n_boot, seed=args.seed)
        for message in dict.fromkeys(str(w.message) for w in caught):  # once each, one line
            print(f"warning: {message}", file=sys.stderr)
        if args.workdir:
            print(_describe(summary))
        print(format_table(summary))
        if args.json:
            write_json(summary, args.json)
    except (ValueError, OSError, checkpoint.CheckpointError) as e:  # LabelError: a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
