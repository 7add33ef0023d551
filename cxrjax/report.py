"""The end-of-run report: WORKDIR/report.md, ROC curves and training curves as PNG.

Also holds the paper's reported numbers and the mapping from a config to its paper row, which
``scripts/reproduce_tables.py`` shares. The plots are ``report_plots``'s.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax import fileio
from cxrjax.data.labels import CLASSES
from cxrjax.metric_writers import read_metrics
from cxrjax.metrics import FEW_POSITIVES
from cxrjax.predictions import HEAD_TITLES, format_value
from cxrjax.report_plots import plot_roc_curves, plot_training_curves
from cxrjax.workdir import read_command

# Mean AUC over the 14 classes as printed in Ge et al. 2018 (arXiv 1807.07247), keyed by our
# config name ("chexnet" is the CheXNet figure the paper compares against). Only numbers we could
# check are here: the per-class values and W/D/N-AUC of Table 1 and every Table 2 figure are not.
PAPER_MEAN_AUC: dict[str, float] = {
    "r18": 0.8239, "d121": 0.8354, "r18_msml": 0.8388, "d121_vgg_msml": 0.8537,
    "chexnet": 0.8413,
}

# Our config name -> the paper's row label, per table, in the paper's order.
TABLE1_ROWS: dict[str, str] = {
    "r18": "R18", "r18_bl": "R18-BL", "r18_r18_bl": "R18 + R18-BL",
    "r18_msml": "R18 + R18-F-MSML", "r18_vgg_msml": "R18 + VGG-F-MSML",
    "d121": "D121", "d121_bl": "D121-BL", "d121_d121_bl": "D121 + D121-BL",
    "d121_msml": "D121 + D121-F-MSML", "d121_vgg_msml": "D121 + VGG-F-MSML",
    "r18_d121_ensemble": "R18 + D121 (ensemble)",
}
TABLE2_ROWS: dict[str, str] = {
    "r18_msml": "Global", "r18_msml_local": "Local", "r18_msml_local_fixed": "Local-Fixed",
}

SUMMARY_ROWS: tuple[tuple[str, str], ...] = (
    ("mean_auc", "**AUC**"), ("w_auc", "**W-AUC**"), ("d_auc", "**D-AUC**"),
    ("n_auc", "**N-AUC**"),
)
_TRUNK_ABBREV = {"resnet18": "r18", "densenet121": "d121", "vgg16": "vgg"}


def fmt(value: Any, digits: int = 4) -> str:
    """A metric as the report's tables print it: 4 decimals, ``n/a`` for NaN or missing."""
    return format_value(value, digits)


def _as_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def config_row(config: Any) -> str | None:
    """The config name (``r18_msml``, ``d121_bl``, ``r18_msml_local`` ...) whose model and
    training stages ``config`` (a ConfigDict or its JSON dict) has; None if it is no paper row."""
    c = _as_dict(config)
    m, stages = c.get("model") or {}, (c.get("train") or {}).get("stages") or []
    a, b = _TRUNK_ABBREV.get(m.get("trunk_a")), m.get("trunk_b")
    if a is None or (b is not None and b not in _TRUNK_ABBREV):
        return None
    if b is None:
        name = f"{a}_bl" if m.get("bilinear") else a
    elif m.get("head_b") == "msml":
        name = f"{a}_msml" if b == m["trunk_a"] else f"{a}_{_TRUNK_ABBREV[b]}_msml"
    else:
        name = f"{a}_{_TRUNK_ABBREV[b]}_bl"
    if len(stages) == 2:
        name += "_local" if stages[1].get("trainable", ".*") == ".*" else "_local_fixed"
    return name if name in TABLE1_ROWS or name in TABLE2_ROWS else None


def row_label(name: str | None) -> str:
    """``r18_msml_local`` -> ``R18 + R18-F-MSML, Local``; unknown names come back unchanged."""
    if name in TABLE2_ROWS and name != "r18_msml":
        return f"{TABLE1_ROWS['r18_msml']}, {TABLE2_ROWS[name]}"
    return TABLE1_ROWS.get(name, name or "unknown config")


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


def render_markdown(workdir: str, config: Any, results: Mapping[str, Mapping],
                    log_problem: str | None = None, sections: Mapping | None = None, *,
                    split_sizes: Mapping[str, int] | None = None,
                    command: Mapping | None = None) -> str:
    """The text of report.md (see ``write_report``), without drawing the plots.
    ``log_problem``: why the training curves are empty (no or an unreadable metrics.jsonl).
    ``sections``: each evaluation section's result (``cxrjax.sections.compute``), or None.
    ``split_sizes``: images per split of the run's data; ``command``: the recorded command
    (``workdir.read_command``): both for the recipe section."""
    from cxrjax import paper_recipe

    c = _as_dict(config)
    name = config_row(c)
    curves_note = f" (empty: {log_problem})" if log_problem else ""
    fused = results["fused"]
    m, data = c.get("model") or {}, c.get("data") or {}
    source = data.get("source", "?")
    order = [h for h in HEAD_TITLES if h in results] + [h for h in results if h not in HEAD_TITLES]
    columns = {HEAD_TITLES.get(h, h): results[h] for h in order}
    fusion = ", ".join(m.get("fusion") or ()) or "?"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# cxrjax run report: {row_label(name) if name else os.path.basename(workdir)}", "",
        *paper_recipe.data_banner(source),
        "| | |", "|---|---|",
        f"| config | `{name or 'not a paper row'}` (workdir `{workdir}`) |",
        f"| model | {_model_line(m)} (init `{m.get('init', '?')}`) |",
        f"| training | {_stages_line((c.get('train') or {}).get('stages') or [])}; batch "
        f"{(c.get('train') or {}).get('batch_size', '?')} |",
        f"| data | source `{source}`, split `{data.get('split_scheme', '?')}`, "
        f"{data.get('crop', '?')}-px crops of {data.get('resolution', '?')}-px images"
        + (f"; {paper_recipe.describe_splits(split_sizes)}" if split_sizes else "") + " |",
        f"| test images | {fused.get('n_images', 'n/a')} |",
        f"| reported prediction | Fused = mean of the {fusion} probabilities |",
        f"| written | {now} |", "",
        "## Test split: AUC per class", "",
        per_class_table(columns, detail=fused), "",
        f"Fused mean AUC **{fmt(fused.get('mean_auc'))}**, 95% bootstrap CI {ci_text(fused)}: "
        f"{fused.get('n_boot', '?')} resamples of the test images, each scoring the same "
        f"classes as the point estimate (resamples in which a scored class had no positive or "
        f"no negative were drawn again: {fused.get('n_boot_drawn', '?')} draws in all). A "
        f"class's CI resamples its positives and its negatives separately. "
        f"W-AUC weights each class by its share of all NIH images (the paper's definition); "
        f"weighted by this test set's positives instead it is "
        f"{fmt(fused.get('w_auc_normalized'))}.",
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
    # The row to hold the run against: its model's, else its config file's (a row's file with
    # another trunk is that row, changed).
    ref = name or paper_recipe.row_of_file((command or {}).get("config_file"))
    lines += ["", *paper_recipe.section(c, ref, row_label(ref), PAPER_MEAN_AUC.get(ref or ""),
                                        fused, split_sizes, command, fmt)]
    if sections is not None:
        from cxrjax import sections as registry

        lines += ["", *registry.report(sections)]
    lines += ["", "## Plots", "",
              "- [ROC curves per class, fused prediction](eval/roc_curves.png)",
              f"- [Training curves](training_curves.png){curves_note}", "",
              "![ROC curves](eval/roc_curves.png)", "", "![Training curves](training_curves.png)",
              ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The entry point the evaluator calls.
# ---------------------------------------------------------------------------------------------


def write_report(workdir: str, config: Any, results: dict[str, dict],
                 probs: dict[str, np.ndarray], labels: np.ndarray,
                 sections: Mapping | None = None,
                 split_sizes: Mapping[str, int] | None = None) -> str:
    """Writes WORKDIR/report.md, WORKDIR/eval/roc_curves.png and WORKDIR/training_curves.png.

    Args:
      workdir: the run's directory (its metrics.jsonl gives the training curves).
      config: the run's ConfigDict (or its JSON dict).
      results: ``metrics.summary`` per head ("ce", "ce_b", "msml", "fce") and "fused".
      probs: (N, 14) test-split probabilities per head, NIH class order; needs "fused".
      labels: (N, 14) 0/1 test labels.
      sections: each evaluation section's result (``cxrjax.sections.compute``), or None to
        leave them out.
      split_sizes: images per split of the run's data (the recipe section counts them).
    The command that started the run (``workdir.read_command``) names the config file.
    Returns the path of report.md.
    """
    if "fused" not in results or "fused" not in probs:
        raise ValueError(f"write_report needs the 'fused' head in results and probs; got "
                         f"results {sorted(results)} and probs {sorted(probs)}")
    labels = np.asarray(labels)
    if np.shape(probs["fused"]) != labels.shape:
        raise ValueError(f"fused probabilities {np.shape(probs['fused'])} and labels "
                         f"{labels.shape} must have the same (N, 14) shape")
    fileio.makedirs(fileio.join(workdir, "eval"))
    c = _as_dict(config)
    name = config_row(c)
    with warnings.catch_warnings():  # sklearn warns on a one-valued class; the plot says so.
        warnings.simplefilter("ignore")
        plot_roc_curves(fileio.join(workdir, "eval", "roc_curves.png"), probs["fused"], labels,
                        results["fused"].get("per_class"),
                        title=f"ROC curves, fused prediction, test split: {row_label(name)}")
    try:
        with warnings.catch_warnings(record=True) as cut:  # lines cut short by a kill
            warnings.simplefilter("always")
            records = read_metrics(workdir)
        log_problem = None
        if not records:
            log_problem = (f"metrics.jsonl unreadable ({cut[0].message})" if cut else
                           "no training log (metrics.jsonl) in this workdir")
    except OSError as e:
        records, log_problem = [], f"metrics.jsonl unreadable ({e})"
    plot_training_curves(fileio.join(workdir, "training_curves.png"), records,
                         log_problem or "")
    path = fileio.join(workdir, "report.md")
    with fileio.open(path, "w") as f:
        f.write(render_markdown(workdir, c, results, log_problem, sections,
                                split_sizes=split_sizes, command=read_command(workdir)))
    return path
