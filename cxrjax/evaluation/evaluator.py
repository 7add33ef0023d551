"""The evaluator: what the train loop and the CLIs call to turn a model's variables into numbers.

``Evaluator`` scores one model on the splits of one dataset: the validation score every epoch,
the test split at the end of a run (predictions CSVs, ``test_metrics.json``, ``report.md``).
``evaluate_run`` is the one path for a finished run, from ``main --mode eval`` and from
``evaluate --workdir``: the best checkpoint of its last stage on a split of its own data.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh

from cxrjax.config_checks import check_config
from cxrjax.evaluation import inference, metrics, sections
from cxrjax.evaluation import prediction_files as predictions
from cxrjax.evaluation.section import caveats_logged_once, run_classes
from cxrjax.io import fileio, run_layout
from cxrjax.runfolder import loading as runs

log = logging.getLogger("cxrjax")

SPLITS = ("test", "val")


def check_split(split: str) -> None:
    """A ValueError unless ``split`` is one a finished run is scored on."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


@dataclasses.dataclass(frozen=True)
class SplitScores:
    """One split scored by one model. ``results`` is empty until the split is summarised."""

    split: str
    image_ids: list[str]
    probs: dict[str, np.ndarray]  # head -> (N, C) probabilities, with "fused"
    labels: np.ndarray  # (N, C) 0/1, C: the run's classes (data.classes)
    results: dict[str, dict] = dataclasses.field(default_factory=dict)  # head -> summary
    label_mask: np.ndarray | None = None  # (N, C) 0/1, 0 = label missing; None: all known
    classes: tuple[str, ...] = ()  # the columns' names; () for NIH's 14 (data without a list)


class Evaluator:
    """Scores variables of ``model`` on the splits of ``datasets`` (a ``pipeline.Datasets``),
    jitted once and batch-sharded over ``mesh``; ``fusion`` names the heads averaged into
    "fused", the model's reported prediction."""

    def __init__(self, model: Any, fusion: Sequence[str], datasets: Any, mesh: Mesh):
        self.datasets, self.mesh = datasets, mesh
        self.model, self.fusion = model, tuple(fusion)
        self.predict_fn = inference.make_predict_fn(model, tuple(fusion), mesh)

    def predict(self, variables: dict, split: str) -> SplitScores:
        """Every head's probabilities on ``split``, each image scored once."""
        if getattr(self.datasets.records, "masked", False):  # a release with missing labels
            ids, probs, labels, label_mask = inference.predict_split_masked(
                self.predict_fn, variables, self.datasets, split, self.mesh)
            return SplitScores(split, ids, probs, labels, label_mask=label_mask,
                               classes=tuple(getattr(self.datasets.records, "classes", ())))
        ids, probs, labels = inference.predict_split(self.predict_fn, variables, self.datasets,
                                                     split, self.mesh)
        return SplitScores(split, ids, probs, labels)

    def score(self, variables: dict, split: str, *, n_boot: int, seed: int = 0) -> SplitScores:
        """``predict`` plus a ``metrics.summary`` per head (the data's caveats are warnings)."""
        scores = self.predict(variables, split)
        results = {head: summarize(p, scores, n_boot=n_boot, seed=seed)
                   for head, p in scores.probs.items()}
        return dataclasses.replace(scores, results=results)

    def validate(self, variables: dict) -> dict:
        """The fused summary on the validation split, without bootstrap: the epoch's score."""
        with caveats_logged_once("validation split: "):
            scores = self.predict(variables, "val")
            return summarize(scores.probs["fused"], scores, n_boot=0)

    def test_and_report(self, variables: dict, workdir: str, config: mlc.ConfigDict
                        ) -> SplitScores:
        """Scores the test split (``config.eval.n_boot``), then every evaluation section
        (``cxrjax.evaluation.sections``: the validation split is scored for those fitted there), and
        writes the files and the report."""
        with caveats_logged_once("test split: "):
            scores = self.score(variables, "test", n_boot=config.eval.n_boot)
        val = None
        if self.datasets.num_examples("val"):
            with caveats_logged_once("validation split: "):
                val = self.predict(variables, "val")
        eval_dir = run_layout.path(workdir, run_layout.EVAL)
        if jax.process_index() == 0:
            fileio.makedirs(eval_dir)
        results = sections.compute(sections.SectionInputs(
            config, eval_dir, scores, val, self, variables, workdir,
            write_files=jax.process_index() == 0))
        write_test_outputs(workdir, config, scores, results,
                           split_sizes={s: len(r) for s, r in self.datasets.split_rows.items()},
                           split_hashes=self.datasets.split_hashes())
        return scores

    def localize(self, variables: dict, boxes: Any, split: str = "test", *,
                 methods: Sequence[str] | None = None, boxes_file: str = "", seed: int = 0,
                 primary: str | None = None, per: str = "box") -> Any:
        """``localizer.localize`` of ``split``'s boxed images with this model's heatmaps (all
        it offers by default), in jitted batches of the training batch size (Grad-CAM runs a
        backward pass: a batch that trains fits)."""
        from cxrjax.data.labels import CLASSES
        from cxrjax.evaluation import heatmaps
        from cxrjax.evaluation import localization as localizer

        classes = tuple(getattr(self.datasets.records, "classes", None) or CLASSES)
        if classes != tuple(CLASSES):
            raise localizer.loc.BoxError(
                "the boxes are NIH's, scored on NIH's 14 classes in the paper's order; this "
                f"model's classes are {', '.join(classes)}")
        fn, size = localizer.model_map_fn(
            self.model, self.fusion, variables, self.mesh,
            methods or heatmaps.available_methods(self.model),
            self.datasets.local_batch_size * self.datasets.process_count)
        return localizer.localize(fn, size, self.datasets, boxes, split, crop=self.datasets.crop,
                                  boxes_file=boxes_file, seed=seed, primary=primary, per=per)


def summarize(probs: np.ndarray, scores: SplitScores, *, n_boot: int, seed: int = 0) -> dict:
    """``metrics.summary``, or over known labels only where the data has missing ones."""
    if scores.label_mask is None:
        return metrics.summary(probs, scores.labels, n_boot=n_boot, seed=seed)
    from cxrjax.evaluation import masked_metrics

    return masked_metrics.as_summary(probs, scores.labels, scores.label_mask,
                                     scores.classes or metrics.class_names(probs.shape[1]),
                                     n_boot=n_boot, seed=seed)


def write_test_outputs(workdir: str, config: mlc.ConfigDict, scores: SplitScores,
                       section_results: dict | None = None,
                       split_sizes: dict[str, int] | None = None,
                       split_hashes: dict[str, str] | None = None) -> None:
    """W/eval/test_predictions.csv (fused), test_predictions_<head>.csv, test_metrics.json
    (with each section's summary and ``split_hashes``, which ``open_run`` checks) and
    W/report.md with its plots; on process 0 only."""
    if jax.process_index() != 0:
        return
    from cxrjax.data import patient_metadata as metadata
    from cxrjax.evaluation import (
        model_card,  # matplotlib: only when a run is reported
        report,  # matplotlib: only when a run is reported
    )

    eval_dir = run_layout.path(workdir, run_layout.EVAL)
    patients = metadata.run_columns(config, workdir, scores.image_ids)  # sex, age, view
    for head, p in scores.probs.items():
        name = run_layout.TEST_PREDICTIONS if head == "fused" else \
            run_layout.head_predictions(head)
        predictions.write_predictions(fileio.join(eval_dir, name), scores.image_ids, p,
                                      metadata=patients, classes=run_classes(config))
    results = scores.results
    out = {**results["fused"], "heads": {h: r for h, r in results.items() if h != "fused"}}
    out.update(sections.summaries(section_results or {}))
    if split_hashes:
        out["split_hashes"] = split_hashes
    predictions.write_json(out, fileio.join(eval_dir, run_layout.TEST_METRICS))
    report.write_report(workdir, config, results, scores.probs, scores.labels,
                        sections=section_results, split_sizes=split_sizes,
                        mask=scores.label_mask)
    model_card.write_model_card(workdir)


# ---------------------------------------------------------------------------------------------
# A finished run: its best checkpoint on a split of its own data.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run ready to score: the config its data and evaluation follow, its best step."""

    workdir: str
    config: mlc.ConfigDict
    step: int
    variables: dict
    evaluator: Evaluator


def open_run(workdir: str, config: mlc.ConfigDict | None = None) -> TrainedRun:
    """The best checkpoint of a run's last stage, and its data prepared.

    The model is the one the run trained (its config.json); data and evaluation follow
    ``config`` when given (``main --mode eval``), else that same saved config. A ``config``
    whose model or training differs from the run's is refused (WorkdirError): the report
    would describe another model than the one scored.
    """
    from cxrjax.data import pipeline  # the data stack: only when a run is opened
    from cxrjax.runfolder import ownership as workdir_lib

    workdir = fileio.expand(workdir)
    mesh = inference.create_mesh()
    saved, model, variables, step = runs.load_run(workdir, mesh)
    if config is None:
        config = saved
    else:
        check_config(config)
        sections.check(config)
        differ = [d for d in workdir_lib.config_differences(
            saved, config, started_stages=len(saved.train.stages) + 1)
            if not d.startswith("data.")]
        if differ:
            raise workdir_lib.WorkdirError(
                f"refusing to evaluate {workdir} with another model or training config "
                f"({'; '.join(differ[:8])}): give the run's config (only data.* and the "
                "resumable fields may differ)")
    datasets = pipeline.open_datasets(config, workdir)
    if config is saved:
        check_split_hashes(workdir, datasets.split_hashes())
    return TrainedRun(workdir, config, step, variables,
                      Evaluator(model, config.model.fusion, datasets, mesh))


def check_split_hashes(workdir: str, hashes: dict[str, str]) -> None:
    """A one-line ValueError if a split's images differ from those the run recorded
    (``split_hashes`` in ``W/eval/test_metrics.json``); nothing if it recorded none."""
    import json

    path = run_layout.eval_path(workdir, run_layout.TEST_METRICS)
    if not fileio.exists(path):
        return
    recorded = json.loads(fileio.read_text(path)).get("split_hashes") or {}
    differ = [s for s, h in recorded.items() if s in hashes and hashes[s] != h]
    if differ:
        raise ValueError(f"{workdir}: the {', '.join(differ)} split(s) now hold other images than "
                         f"when the run was tested (split_hash {recorded[differ[0]][:12]}... "
                         f"recorded, {hashes[differ[0]][:12]}... now): the data, its split scheme "
                         "or seed changed")


def evaluate_run(workdir: str, split: str = "test", *, config: mlc.ConfigDict | None = None,
                 n_boot: int | None = None, seed: int = 0, write: bool = False
                 ) -> tuple[int, SplitScores]:
    """(best step, scores with a summary per head) of a finished run on ``split``.

    ``n_boot`` defaults to the config's ``eval.n_boot``. With ``write`` (``main --mode eval``)
    the test split's files and report are written as at the end of training, and the data's
    caveats are logged; otherwise they stay warnings for the caller.
    """
    check_split(split)
    if write and split != "test":
        raise ValueError(f"only the test split's outputs are written, not {split!r}")
    if write:  # the run's own files: one writer at a time (its lock)
        from cxrjax.runfolder import ownership as workdir_lib

        lock = workdir_lib.lock_run(fileio.expand(workdir), "evaluate")
        try:
            run = open_run(workdir, config)
            return run.step, run.evaluator.test_and_report(run.variables, run.workdir,
                                                           run.config)
        finally:
            if lock is not None:
                lock.release()
    run = open_run(workdir, config)
    n_boot = run.config.eval.n_boot if n_boot is None else n_boot
    return run.step, run.evaluator.score(run.variables, split, n_boot=n_boot, seed=seed)


def summary_line(fused: dict, workdir: str) -> str:
    """What a run did, for its last line: ``test mean AUC X [lo, hi] on N images, report at
    W/report.md`` (``fused``: the fused head's ``metrics.summary``)."""
    lo, hi = (list(fused.get("mean_auc_ci95") or []) + [None, None])[:2]
    ci = "" if lo is None or np.isnan(lo) else \
        f" [{predictions.format_value(lo, 4)}, {predictions.format_value(hi, 4)}]"
    return (f"test mean AUC {predictions.format_value(fused.get('mean_auc'), 4)}{ci} on "
            f"{fused.get('n_images', '?')} images, report at "
            f"{run_layout.path(fileio.expand(workdir), run_layout.REPORT)}")
