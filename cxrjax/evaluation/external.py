"""External validation: a trained run scored on another prepared dataset, over the classes the
two share, against the run's own test split.

    python -m cxrjax.evaluate --workdir W --dataset NAME [--split test] [--data FIELD=VALUE ...]
    python -m cxrjax.evaluate --workdir W --labels google2019[=PATH] [--split test]
    python -m cxrjax.evaluate --predictions FILE --labels google2019[=PATH]

``NAME`` is a ``data.source`` (``chexpert``, ``mimic_cxr``, ``padchest``, ``nih``, or a synthetic
set such as ``synthetic_padchest``); the run's data config is used with that source, and
``--data`` overrides its fields (``data_dir=...``, ``synthetic_site=other``,
``synthetic_seed=1``). The shared classes are the model's classes the dataset labels; a class
is compared where both sets have a known positive and negative. The run's own test split is
scored again (same checkpoint), so the difference is over the same classes. Files:
``W/eval/external_<label>_predictions.csv`` (fused probabilities),
``W/eval/external_<label>_metrics.json`` and ``W/eval/external_<label>.md``, whose table is
also put in ``W/report.md`` (its own block, replaced on a rerun).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cxrjax.data import label_space, release_splits, sources
from cxrjax.data.labels import CLASSES as NIH_CLASSES
from cxrjax.evaluation import inference, masked_metrics
from cxrjax.evaluation import prediction_files as predictions
from cxrjax.io import fileio, run_layout

PREFIX = "external_"


@dataclasses.dataclass(frozen=True)
class Scored:
    """One split scored by a run's fused prediction: ids, (N, C) probabilities, labels, mask."""

    image_ids: list[str]
    probs: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def predict_masked(evaluator: Any, variables: dict, split: str) -> Scored:
    """``inference.predict_split_masked`` of the evaluator's data, keeping the fused one."""
    ids, probs, labels, mask = inference.predict_split_masked(
        evaluator.predict_fn, variables, evaluator.datasets, split, evaluator.mesh)
    return Scored(ids, probs["fused"], labels, mask)


def _typed(old: Any, text: str) -> Any:
    """``text`` as the type of the field's current value."""
    if isinstance(old, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(old, int):
        return int(text)
    if isinstance(old, float):
        return float(text)
    if isinstance(old, tuple | list):
        return tuple(v.strip() for v in text.split(",") if v.strip())
    return text


def dataset_config(config: Any, dataset: str, overrides: Sequence[str] = ()) -> Any:
    """The run's config reading ``dataset`` with ``FIELD=VALUE`` data overrides, checked."""
    from cxrjax.config_checks import check_data

    out = copy.deepcopy(config)
    out.data.source = dataset
    for item in overrides:
        field, sep, value = item.partition("=")
        field = field.strip().removeprefix("data.")
        if not sep or field not in out.data:
            raise ValueError(f"--data {item!r}: expected FIELD=VALUE with FIELD a data field "
                             f"({', '.join(sorted(out.data.keys()))})")
        try:
            out.data[field] = _typed(out.data[field], value.strip())
        except ValueError as e:
            raise ValueError(f"--data {item!r}: {e}") from None
    if sources.release_of(dataset) is None and tuple(out.data.classes) != NIH_CLASSES:
        out.data.classes = NIH_CLASSES  # the NIH sources label the 14: read those, then
        check_data(out.data, len(NIH_CLASSES))  # in_run_classes picks the model's
        return out
    check_data(out.data, out.model.num_classes)
    return out


def in_run_classes(scored: Scored, data_classes: Sequence[str],
                   run_classes: Sequence[str]) -> Scored:
    """``scored`` with its labels and mask in the model's class order: a class the data does
    not label is missing (mask 0)."""
    data_classes = list(data_classes)
    if list(run_classes) == data_classes:
        return scored
    n = len(scored.image_ids)
    labels = np.zeros((n, len(run_classes)), scored.labels.dtype)
    mask = np.zeros((n, len(run_classes)), scored.mask.dtype)
    for i, c in enumerate(run_classes):
        if c in data_classes:
            labels[:, i] = scored.labels[:, data_classes.index(c)]
            mask[:, i] = scored.mask[:, data_classes.index(c)]
    return Scored(scored.image_ids, scored.probs, labels, mask)


def dataset_label(dataset: str, overrides: Sequence[str] = ()) -> str:
    """The name of an external set in file names: the source, then each override."""
    parts = [dataset, *(re.sub(r"[^A-Za-z0-9._-]+", "-", o.removeprefix("data."))
                        for o in overrides if not o.startswith(("data_dir", "data.data_dir",
                                                                "manual_dir", "workers")))]
    return "_".join(parts)


def labelled_classes(source: str) -> tuple[str, ...]:
    """The canonical classes a source labels (NIH's sources: the 14 and No Finding)."""
    return label_space.RELEASE_CLASSES[sources.release_of(source) or "nih"]


def compare(external: Scored, own: Scored, classes: Sequence[str], source: str, *,
            n_boot: int = 1000, seed: int = 0) -> dict:
    """The external set's per-class and mean AUC over the classes it shares with the model,
    the run's own test mean AUC over the same classes, and their difference, with CIs."""
    labelled = set(labelled_classes(source))
    shared = [c for c in classes if c in labelled]
    if not shared:
        raise ValueError(f"{source} labels none of the model's classes ({', '.join(classes)})")
    cols = [list(classes).index(c) for c in shared]

    def aucs(s: Scored) -> np.ndarray:
        return masked_metrics.class_aucs(s.probs[:, cols], s.labels[:, cols], s.mask[:, cols])

    both = ~np.isnan(aucs(external)) & ~np.isnan(aucs(own))
    compared = [c for c, ok in zip(shared, both, strict=True) if ok]
    if not compared:
        raise ValueError(f"no shared class ({', '.join(shared)}) has a known positive and "
                         "negative in both the external set and the run's own test split")
    keep = [list(classes).index(c) for c in compared]

    def summarise(s: Scored) -> tuple[dict, np.ndarray]:
        return masked_metrics.summary(s.probs[:, keep], s.labels[:, keep], s.mask[:, keep],
                                      compared, n_boot=n_boot, seed=seed)

    ext, mine = summarise(external), summarise(own)
    return {"classes_shared": shared, "classes_compared": compared,
            "classes_not_compared": [c for c in shared if c not in compared],
            "external": ext[0], "own_test": mine[0], **masked_metrics.mean_difference(ext, mine)}


def score_run(workdir: str, dataset: str, *, split: str = "test",
              overrides: Sequence[str] = (), n_boot: int = 1000, seed: int = 0,
              write: bool = True) -> dict:
    """A run's best checkpoint on ``split`` of ``dataset`` against its own test split
    (``compare``); with ``write``, the files named in the module docstring."""
    from cxrjax.data import pipeline
    from cxrjax.evaluation import evaluator as evaluator_lib

    evaluator_lib.check_split(split)
    run = evaluator_lib.open_run(workdir)
    cfg = dataset_config(run.config, dataset, overrides)
    ds = pipeline.open_datasets(cfg, run.workdir)
    other = evaluator_lib.Evaluator(run.evaluator.model, run.config.model.fusion, ds,
                                    run.evaluator.mesh)
    classes = tuple(run.config.data.classes)
    external = in_run_classes(predict_masked(other, run.variables, split), cfg.data.classes,
                              classes)
    own = predict_masked(run.evaluator, run.variables, "test")
    out = compare(external, own, classes, dataset, n_boot=n_boot, seed=seed)
    label = dataset_label(dataset, overrides)
    out.update(workdir=run.workdir, step=run.step, train_source=run.config.data.source,
               dataset=dataset, label=label, overrides=list(overrides), split=split,
               split_hash=release_splits.split_hash(external.image_ids),
               n_images=len(external.image_ids))
    if write and jax.process_index() == 0:
        eval_dir = run_layout.path(run.workdir, run_layout.EVAL)
        predictions.write_predictions(fileio.join(eval_dir, f"{PREFIX}{label}_predictions.csv"),
                                      external.image_ids, external.probs, classes=classes)
        predictions.write_json(out, fileio.join(eval_dir, f"{PREFIX}{label}_metrics.json"))
        section = format_markdown(out)
        fileio.write_text(fileio.join(eval_dir, f"{PREFIX}{label}.md"), section)
        put_in_report(run.workdir, label, section)
    return out


def _ci(pair: Sequence[float]) -> str:
    fv = predictions.format_value
    return f"[{fv(pair[0], 3)}, {fv(pair[1], 3)}]"


def format_markdown(result: dict) -> str:
    """The report section: per compared class the external and own AUC with CIs, then the
    means and their difference."""
    fv = predictions.format_value
    ext, own = result["external"], result["own_test"]
    lines = [f"## External validation: {result['label']} ({result['split']} split)", "",
             f"Trained on `{result['train_source']}`, scored on {result['n_images']} images of "
             f"`{result['dataset']}` over the {len(result['classes_compared'])} classes both "
             "label (each over its images with a known label); 95% CIs from a bootstrap of "
             f"{ext['n_boot']} resamples (per class stratified by label).", "",
             "| class | external AUC | 95% CI | positives / known | own test AUC | 95% CI |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in result["classes_compared"]:
        lines.append(f"| {c} | {fv(ext['per_class'][c], 3)} | {_ci(ext['per_class_ci95'][c])} "
                     f"| {ext['n_positive'][c]} / {ext['n_known'][c]} | "
                     f"{fv(own['per_class'][c], 3)} | {_ci(own['per_class_ci95'][c])} |")
    lines += ["", f"Mean AUC: external {fv(ext['mean_auc'], 3)} {_ci(ext['mean_auc_ci95'])}, own "
              f"test {fv(own['mean_auc'], 3)} {_ci(own['mean_auc_ci95'])}; difference "
              f"{fv(result['mean_auc_difference'], 3)} "
              f"{_ci(result['mean_auc_difference_ci95'])}."]
    if result["classes_not_compared"]:
        lines.append(f"Shared but not compared (a set lacks a known positive or negative): "
                     f"{', '.join(result['classes_not_compared'])}.")
    return "\n".join(lines) + "\n"


def put_in_report(workdir: str, label: str, section: str) -> None:
    """Adds (or replaces) the section in ``W/report.md`` between markers of its label."""
    path = run_layout.path(workdir, run_layout.REPORT)
    if not fileio.exists(path):
        return
    begin, end = f"<!-- {PREFIX}{label} -->", f"<!-- /{PREFIX}{label} -->"
    text = fileio.read_text(path)
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    fileio.write_text(path, text)


# ---------------------------------------------------------------------------------------------
# The command line (flags of ``python -m cxrjax.evaluate``).
# ---------------------------------------------------------------------------------------------


def add_flags(parser: Any) -> None:
    """``--dataset`` and ``--data`` (``--labels google2019`` is ``evaluate``'s ``--labels``)."""
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="with one --workdir: score the run on this prepared dataset (a "
                             "data.source: chexpert, mimic_cxr, padchest, nih, synthetic_*) "
                             "over the classes both share, against its own test split")
    parser.add_argument("--data", metavar="FIELD=VALUE", action="append", default=[],
                        help="with --dataset: a data config field for that dataset, e.g. "
                             "data_dir=~/tensorflow_datasets or synthetic_site=other (repeat)")


def handles(args: Any) -> bool:
    """Whether this module runs the command (``--dataset`` or google2019 labels)."""
    from cxrjax.evaluation import google2019

    return bool(args.dataset) or google2019.is_google2019(args.labels)


def run_cli(args: Any) -> int:
    """Scores as ``args`` say, prints the table, writes ``--json``; ValueError on bad input."""
    from cxrjax.evaluation import evaluator as evaluator_lib
    from cxrjax.evaluation import google2019

    if args.dataset and (args.predictions or len(args.workdir) != 1):
        raise ValueError("--dataset applies to one --workdir")
    if args.data and not args.dataset:
        raise ValueError("--data applies to --dataset only")
    if args.thresholds:
        raise ValueError("--thresholds does not apply to --dataset or --labels google2019")
    if args.dataset:
        if google2019.is_google2019(args.labels):
            raise ValueError("give --dataset or --labels google2019, not both")
        result = score_run(args.workdir[0], args.dataset, split=args.split or "test",
                           overrides=args.data, n_boot=args.n_boot, seed=args.seed)
        print(format_markdown(result), end="")
    else:
        path = google2019.resolve_path(args.labels)
        if args.predictions:
            from cxrjax.data.labels import CLASSES

            ids, probs = predictions.load_predictions(args.predictions)
            result = google2019.score(ids, probs, CLASSES, path, n_boot=args.n_boot,
                                      seed=args.seed)
            result["predictions"] = args.predictions
        else:
            if len(args.workdir) != 1:
                raise ValueError(f"--labels {google2019.NAME} scores one --workdir")
            split = args.split or "test"
            evaluator_lib.check_split(split)
            run = evaluator_lib.open_run(args.workdir[0])
            scored = predict_masked(run.evaluator, run.variables, split)
            result = google2019.score(scored.image_ids, scored.probs, run.config.data.classes,
                                      path, n_boot=args.n_boot, seed=args.seed)
            result.update(workdir=run.workdir, step=run.step, split=split)
            if jax.process_index() == 0:
                predictions.write_json(result, run_layout.eval_path(
                    run.workdir, f"{google2019.NAME}_metrics.json"))
        print(google2019.format_text(result))
    if args.json:
        predictions.write_json(result, args.json)
    return 0
