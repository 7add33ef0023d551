"""The end-of-run report: WORKDIR/report.md, ROC curves and training curves as PNG.

The report describes the run from what it recorded: its config (``config.json``: the model, its
heads and its paper row, ``config.row``) and its command (``command.json``: the config file as
typed). The paper's rows and numbers are ``recipe.ROWS``'s; the plots are ``report_plots``'s.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc
import numpy as np

from cxrjax import models, recipe
from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import headline
from cxrjax.evaluation import recipe_comparison as paper_recipe
from cxrjax.evaluation.metrics import FEW_POSITIVES
from cxrjax.evaluation.prediction_files import HEAD_TITLES, format_value
from cxrjax.evaluation.section import run_classes
from cxrjax.io import fileio, run_layout
from cxrjax.io.metric_writers import read_metrics
from cxrjax.runfolder.ownership import read_command

SUMMARY_ROWS: tuple[tuple[str, str], ...] = (
    ("mean_auc", "**AUC**"), ("w_auc", "**W-AUC**"), ("d_auc", "**D-AUC**"),
    ("n_auc", "**N-AUC**"),
)


def fmt(value: Any, digits: int = 4) -> str:
    """A metric as the report's tables print it: 4 decimals, ``n/a`` for NaN or missing."""
    return format_value(value, digits)


def _as_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def row_label(name: str | None) -> str:
    """``r18_msml_local`` -> ``R18 + R18-F-MSML, Local`` (``recipe.ROWS``); other names come
    back unchanged."""
    row = recipe.ROWS.get(name or "")
    return row.label if row else (name or "unknown config")


def fused_heads(model: Mapping) -> list[str]:
    """The heads whose probabilities the fused prediction averages: the model's heads (its
    family names them, ``models.output_heads``) that ``model.fusion`` lists, or its first head
    when it has none of those (as ``models.probabilities`` fuses them)."""
    heads = list(models.output_heads(mlc.ConfigDict(dict(model))))
    return [h for h in model.get("fusion") or () if h in heads] or heads[:1]


def _fusion_text(model: Mapping) -> str:
    titles = [HEAD_TITLES.get(h, h) for h in fused_heads(model)]
    if not titles:
        return "Fused = ? (no model heads recorded)"
    if len(titles) == 1:
        return f"Fused = the {titles[0]} probabilities (this model's one fused head)"
    return f"Fused = mean of the {', '.join(titles[:-1])} and {titles[-1]} probabilities"


def _run_lines(workdir: str, config: Mapping, command: Mapping | None) -> tuple[str, list[str]]:
    """The report's title and its first table rows: the config file as typed (the recorded
    command), the paper row the recorded config names, and the workdir."""
    row, origin = paper_recipe.run_row(config, command)
    config_file = (command or {}).get("config_file")
    if config_file:
        title = os.path.basename(config_file) + (f" (row {row_label(row)})" if row else "")
        file_cell = f"`{config_file}`"
    else:
        title = row_label(row) if row else os.path.basename(os.path.normpath(workdir))
        file_cell = "not recorded (no command.json: a run started from Python, or older)"
    row_cell = (f"`{row}`: {row_label(row)} (from {origin})" if row else
                "none: the config names no row of the paper's tables")
    return title, [f"| config file | {file_cell} |", f"| paper row | {row_cell} |",
                   f"| workdir | `{workdir}` |"]


# ---------------------------------------------------------------------------------------------
# Tables (markdown).
# ---------------------------------------------------------------------------------------------


FEW_MARK = "⚠"  # beside a positives count under FEW_POSITIVES


def per_class_table(columns: Mapping[str, Mapping], class_names: Sequence[str] = CLASSES,
                    extra_rows: Sequence[tuple[str, Sequence[str]]] = (),
                    detail: Mapping | None = None) -> str:
    """The paper's Table 1 layout: one row per class, then AUC / W-AUC / D-AUC / N-AUC rows;
    one column per summary (``{title: metrics.summary(...)}``). ``extra_rows``: (title, cells).
    ``detail`` (a summary, the fused one): adds each class's test positives (marked
    ``FEW_MARK`` when too few for a reliable AUC) and its 95% CI, and the CI of the mean."""
    titles = list(columns)
    pos = (detail or {}).get("n_positive") or {}
    few = set((detail or {}).get("few_positive_classes") or ())
    class_ci = (detail or {}).get("per_class_ci95") or {}
    lead = ["Finding"] + (["Positives"] if detail else [])
    tail = [f"95% CI ({titles[-1]})"] if detail else []
    lines = ["| " + " | ".join(lead + titles + tail) + " |",
             "|---|" + "---:|" * (len(lead) - 1 + len(titles) + len(tail))]
    for name in class_names:
        cells = [fmt((s.get("per_class") or {}).get(name)) for s in columns.values()]
        if detail:
            count = pos.get(name)
            mark = f" {FEW_MARK}" if name in few else ""
            cells = [f"{count if count is not None else 'n/a'}{mark}", *cells,
                     ci_text({"mean_auc_ci95": class_ci.get(name)})]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, title in SUMMARY_ROWS:
        cells = [fmt(s.get(key)) for s in columns.values()]
        if detail:
            cells = ["", *cells, ci_text(detail) if key == "mean_auc" else ""]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for title, cells in extra_rows:
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _undefined_means_text(fused: Mapping) -> str:
    """Why W-AUC, D-AUC and N-AUC are n/a for data with missing labels."""
    return ("Each class is scored over the test images whose label is known "
            f"({', '.join(f'{k} {v}' for k, v in (fused.get('n_known') or {}).items())}). "
            "W-AUC, D-AUC and N-AUC are n/a: they need every label known and NIH's 'No "
            "Finding' semantics (an image with no positive is normal), which this data lacks.")


def ci_text(summary: Mapping) -> str:
    """``[lo, hi]`` of a summary's 95% CI of the mean AUC, or ``n/a``."""
    lo, hi = (list(summary.get("mean_auc_ci95") or []) + [None, None])[:2]
    return "n/a" if fmt(lo) == "n/a" else f"[{fmt(lo)}, {fmt(hi)}]"


def _model_line(m: Mapping) -> str:
    parts = [f"stream A `{m.get('trunk_a')}`" + (f" → {m['head_a']} head" if m.get("head_a")
                                                  else "")]
    if m.get("trunk_b"):
        parts.append(f"stream B `{m['trunk_b']}`" + (f" → {m['head_b']} head"
                                                      if m.get("head_b") else ""))
    if m.get("bilinear"):
        parts.append("bilinear pooling → FCE head" + ("" if m.get("trunk_b") else " (self)"))
    return " · ".join(parts)


def _stages_line(stages: Sequence[Mapping]) -> str:
    out = []
    for s in stages:
        weights = ", ".join(f"{k} {v:g}" for k, v in sorted((s.get("loss_weights") or {}).items())
                            if v)
        trainable = s.get("trainable", ".*")
        out.append(f"{s.get('name')} ({s.get('epochs')} epochs; {weights}"
                   + ("" if trainable == ".*" else f"; trains `{trainable}`") + ")")
    return " → ".join(out)


def _header(workdir: str, c: Mapping, fused: Mapping, split_sizes: Mapping[str, int] | None,
            command: Mapping | None) -> list[str]:
    """The report's title, data banner and table of what ran: the config file and row, the
    model, its training, its data, and the heads the reported prediction fuses."""
    m, data, train = c.get("model") or {}, c.get("data") or {}, c.get("train") or {}
    source = data.get("source", "?")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title, run_lines = _run_lines(workdir, c, command)
    return [
        f"# cxrjax run report: {title}", "",
        *paper_recipe.data_banner(source),
        "| | |", "|---|---|",
        *run_lines,
        f"| model | {_model_line(m)} (init `{m.get('init', '?')}`) |",
        f"| training | {_stages_line(train.get('stages') or [])}; batch "
        f"{train.get('batch_size', '?')} |",
        f"| data | source `{source}`, split `{data.get('split_scheme', '?')}`, "
        f"{data.get('crop', '?')}-px crops of {data.get('resolution', '?')}-px images"
        + (f"; {paper_recipe.describe_splits(split_sizes)}" if split_sizes else "") + " |",
        f"| test images | {fused.get('n_images', 'n/a')} |",
        f"| reported prediction | {_fusion_text(m)} |",
        f"| written | {now} |", "",
    ]


def render_markdown(workdir: str, config: Any, results: Mapping[str, Mapping],
                    log_problem: str | None = None, sections: Mapping | None = None, *,
                    split_sizes: Mapping[str, int] | None = None,
                    command: Mapping | None = None) -> str:
    """The text of report.md (see ``write_report``), without drawing the plots.
    ``log_problem``: why the training curves are empty (no or an unreadable metrics.jsonl).
    ``sections``: each evaluation section's result (``cxrjax.evaluation.sections.compute``), or
    None.
    ``split_sizes``: images per split of the run's data; ``command``: the recorded command
    (``workdir.read_command``): both for the recipe section."""
    c = _as_dict(config)
    curves_note = f" (empty: {log_problem})" if log_problem else ""
    fused = results["fused"]
    order = [h for h in HEAD_TITLES if h in results] + [h for h in results if h not in HEAD_TITLES]
    columns = {HEAD_TITLES.get(h, h): results[h] for h in order}
    lines = [
        *_header(workdir, c, fused, split_sizes, command),
        "## At a glance", "", headline.headline(sections or {}, fused),
        "## Test split: AUC per class", "",
        per_class_table(columns, run_classes(c), detail=fused), "",
        f"Fused mean AUC **{fmt(fused.get('mean_auc'))}**, 95% bootstrap CI {ci_text(fused)}: "
        f"{fused.get('n_boot', '?')} resamples of the test images, each scoring the same "
        f"classes as the point estimate (resamples in which a scored class had no positive or "
        f"no negative were drawn again: {fused.get('n_boot_drawn', '?')} draws in all). A "
        f"class's CI resamples its positives and its negatives separately. "
        + (_undefined_means_text(fused) if fused.get("masked") else
           f"W-AUC weights each class by its share of all NIH images (the paper's definition); "
           f"weighted by this test set's positives instead it is "
           f"{fmt(fused.get('w_auc_normalized'))}."),
    ]
    few = fused.get("few_positive_classes") or []
    if few:
        lines.append(f"\n{FEW_MARK} Fewer than {FEW_POSITIVES} test positives, AUC unreliable: "
                     f"{', '.join(few)}.")
    if "msml" in results:
        lines.append("The MSML column ranks images by the MSML head's scores: its AUC is valid, "
                     "but those scores are not calibrated probabilities.")
    excluded = fused.get("excluded_classes") or []
    if excluded:
        lines.append(f"Left out of the means (one label value in the test set): "
                     f"{', '.join(excluded)}.")
    row, _ = paper_recipe.run_row(c, command)
    lines += ["", *paper_recipe.section(c, row, fused, split_sizes, command, fmt)]
    if sections is not None:
        from cxrjax.evaluation import sections as registry

        lines += ["", *registry.report(sections)]
    if not c["eval"]["figures"]:
        return "\n".join(lines + ["", "## Plots", "", "Not drawn: `eval.figures = False`.", ""])
    lines += ["", "## Plots", "",
              "- [ROC curves per class, fused prediction](eval/roc_curves.png)",
              f"- [Training curves](training_curves.png){curves_note}", "",
              "![ROC curves](eval/roc_curves.png)", "", "![Training curves](training_curves.png)",
              ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The entry point the evaluator calls.
# ---------------------------------------------------------------------------------------------


def _training_log(workdir: str) -> tuple[list[dict], str | None]:
    """The run's metrics.jsonl records, and why there are none (None when there are)."""
    try:
        with warnings.catch_warnings(record=True) as cut:  # lines cut short by a kill
            warnings.simplefilter("always")
            records = read_metrics(workdir)
    except OSError as e:
        return [], f"metrics.jsonl unreadable ({e})"
    if records:
        return records, None
    return [], (f"metrics.jsonl unreadable ({cut[0].message})" if cut else
                "no training log (metrics.jsonl) in this workdir")


def write_report(workdir: str, config: Any, results: dict[str, dict],
                 probs: dict[str, np.ndarray], labels: np.ndarray,
                 sections: Mapping | None = None,
                 split_sizes: Mapping[str, int] | None = None,
                 mask: np.ndarray | None = None) -> str:
    """Writes WORKDIR/report.md, and WORKDIR/eval/roc_curves.png and WORKDIR/training_curves.png
    unless the config's ``eval.figures`` is off.

    Args:
      workdir: the run's directory (its metrics.jsonl gives the training curves).
      config: the run's ConfigDict (or its JSON dict).
      results: ``metrics.summary`` per head ("ce", "ce_b", "msml", "fce") and "fused".
      probs: (N, C) test-split probabilities per head, the run's classes (``data.classes``) in
        order; needs "fused".
      labels: (N, C) 0/1 test labels.
      sections: each evaluation section's result (``cxrjax.evaluation.sections.compute``), or
        None to leave them out.
      split_sizes: images per split of the run's data (the recipe section counts them).
      mask: (N, C) 0/1 test label mask (0 = missing; None: every label known).
    The command that started the run (``workdir.read_command``) names the config file.
    Returns the path of report.md.
    """
    if "fused" not in results or "fused" not in probs:
        raise ValueError(f"write_report needs the 'fused' head in results and probs; got "
                         f"results {sorted(results)} and probs {sorted(probs)}")
    labels = np.asarray(labels)
    if np.shape(probs["fused"]) != labels.shape:
        raise ValueError(f"fused probabilities {np.shape(probs['fused'])} and labels "
                         f"{labels.shape} must have the same (N, C) shape")
    fileio.makedirs(run_layout.path(workdir, run_layout.EVAL))
    c = _as_dict(config)
    command = read_command(workdir)
    records, log_problem = _training_log(workdir)
    if c["eval"]["figures"]:
        from cxrjax.evaluation.report_plots import plot_roc_curves, plot_training_curves

        title, _ = _run_lines(workdir, c, command)
        with warnings.catch_warnings():  # sklearn warns on a one-valued class; the plot says so
            warnings.simplefilter("ignore")
            plot_roc_curves(run_layout.eval_path(workdir, run_layout.ROC_CURVES),
                            probs["fused"], labels, results["fused"].get("per_class"),
                            class_names=run_classes(c), mask=mask,
                            title=f"ROC curves, fused prediction, test split: {title}")
        plot_training_curves(run_layout.path(workdir, run_layout.TRAINING_CURVES), records,
                             log_problem or "")
    path = run_layout.path(workdir, run_layout.REPORT)
    with fileio.open(path, "w") as f:
        f.write(render_markdown(workdir, c, results, log_problem, sections,
                                split_sizes=split_sizes, command=command))
    return path
