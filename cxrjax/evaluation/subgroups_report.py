"""The subgroup report as people read it: markdown tables, the forest plot, the files.

``cxrjax.evaluation.subgroups`` computes the numbers (``subgroup_report``); this module turns its
JSON-ready result into ``W/eval/subgroups.{json,md,png}`` and the report's section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrjax.io import fileio, run_layout

FILES = tuple(f"{run_layout.SUBGROUPS}.{ext}" for ext in ("json", "md", "png"))  # in W/eval
GAP_TITLES = {"mean_auc": "mean AUC", "underdiagnosis_rate": "underdiagnosis rate"}

_TITLES = {"sex": "Sex", "age": "Age (years)", "view": "View position"}


def _ci_text(m: Mapping | None, digits: int = 3) -> str:
    if not m or m.get("value") is None or not np.isfinite(m["value"]):
        return "n/a"
    low, high = m.get("low"), m.get("high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def gap_text(attribute: str, gap: Mapping | None) -> str:
    """One line: the largest gap of one metric between an attribute's groups."""
    if not gap:
        return ""
    what, d = GAP_TITLES[gap["metric"]], gap["difference"]
    verdict = ("**flagged: its CI excludes 0**" if gap["flagged"] else "its CI includes 0")
    return (f"Largest {what} gap by {attribute}: {gap['higher']} minus {gap['lower']} = "
            f"{_ci_text(d)}; {verdict}.")


def _group_table(block: Mapping, result: Mapping) -> list[str]:
    """The attribute's groups, then the whole split (its mean AUC over the same classes)."""
    lines = ["| Group | images | with a finding | mean AUC | ECE | underdiagnosis rate |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, c in block["groups"].items():
        cells = (["too few images"] + [""] * 2) if c.get("too_small") else [
            _ci_text(c.get("mean_auc")), _ci_text(c.get("ece")),
            _ci_text(c.get("underdiagnosis_rate"))]
        lines.append(f"| {name} | {c['n']} | {c['images_with_finding']} | "
                     + " | ".join(cells) + " |")
    whole = result["overall"]
    cells = [_ci_text({"value": v}) for v in (block["all_images_mean_auc"], whole.get("ece"),
                                              whole.get("underdiagnosis_rate"))]
    lines.append(f"| *all test images* | {result['n_images']} | {whole['images_with_finding']}"
                 " | " + " | ".join(cells) + " |")
    return lines


def _class_table(block: Mapping, classes: Sequence[str]) -> list[str]:
    groups = [g for g, c in block["groups"].items() if "auc" in c]
    if not groups:
        return []
    lines = ["| Finding | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    for c in classes:
        row = []
        for g in groups:
            cell = block["groups"][g]
            text = f"AUC {_ci_text(cell['auc'][c])} ({cell['positives'][c]} pos.)"
            if "sensitivity" in cell:
                text += (f"<br>sens. {_ci_text(cell['sensitivity'][c], 2)}"
                         f"<br>spec. {_ci_text(cell['specificity'][c], 2)}")
            row.append(text)
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    return lines


def describe(result: Mapping) -> str:
    """How the groups, intervals and gaps were made, in one paragraph."""
    boot = result["n_boot"]
    ci = (f"95% CIs in brackets: {boot} bootstrap resamples within each group (AUCs: each "
          "class's positives and negatives resampled separately)" if boot else "no CIs")
    calls = ("Sensitivity, specificity and the underdiagnosis rate (the share of images with a "
             "finding that the model calls 'no finding': no class at or above its threshold, "
             "Seyyed-Kalantari et al. 2021) use the run's thresholds." if result["thresholds"]
             else "No thresholds were given: no sensitivity, specificity or underdiagnosis rate.")
    whole = result["overall"]
    rate = whole.get("underdiagnosis_rate")
    rate = f", underdiagnosis rate {rate:.3f}" if rate is not None else ""
    if "images_without_known_label" in whole:
        calls += (" Missing labels are left out: each class is scored over its present labels, "
                  "an image has a finding when one present label is positive (so an image "
                  f"with every label missing, {whole['images_without_known_label']} here, never "
                  "has one).")
    return (f"{result['n_images']} test images (mean AUC of every class "
            f"{whole['mean_auc']:.3f}{rate}). {ci}. A group's mean AUC is over the classes "
            "every group of its attribute can score; ECE pools every (image, class) "
            f"probability into {result['n_bins']} bins. {calls} A gap is flagged when its CI "
            f"excludes 0. Groups under {result['min_group_images']} images get counts only.")


def markdown(result: Mapping, heading: str = "##", per_class: bool = True,
             picture: str | None = None) -> str:
    """The subgroup report as markdown (``per_class``: with the per-class tables)."""
    lines = [f"{heading} Subgroups: whom does the model fail?", ""]
    if "attributes" not in result:
        return "\n".join(lines + [f"Not computed: {result.get('skipped', 'not run')}.", ""])
    lines += [describe(result), ""]
    for attribute, block in result["attributes"].items():
        lines += [f"**{_TITLES[attribute]}**" + (
            f" ({block['unassigned_images']} images with no known value)"
            if block["unassigned_images"] else ""), "", *_group_table(block, result), ""]
        lines += [t for t in (gap_text(attribute, g) for g in block["gaps"].values()) if t]
        scored = [g for g, c in block["groups"].items() if not c.get("too_small")]
        if len(scored) < 2:
            lines.append(f"No gap by {attribute}: fewer than two groups of "
                         f"{result['min_group_images']} images or more.")
        left_out = [c for c in result["classes"] if c not in block["mean_auc_classes"]]
        if left_out and scored:
            lines.append(f"Left out of this attribute's mean AUCs (a group has one label "
                         f"value): {', '.join(left_out)}.")
        if per_class:
            lines += ["", *_class_table(block, result["classes"])]
        lines.append("")
    lines += [f"Not broken down by {a}: {why}." for a, why in result["not_broken_down"].items()]
    if picture:
        lines += ["", f"![Subgroup forest plot]({picture})"]
    return "\n".join(lines + [""])


def plot_forest(result: Mapping, path: str) -> str:
    """A forest plot: one row per group, the mean AUC (and underdiagnosis rate) with its CI,
    a dashed line at the whole split's value (over the same classes); a flagged attribute is
    starred."""
    from matplotlib.figure import Figure

    rows: list[tuple[str, Mapping | None]] = []
    spans = []  # per attribute: (first row, last row, the whole split's values)
    for attribute, block in result["attributes"].items():
        star = " *" if any(g and g["flagged"] for g in block["gaps"].values()) else ""
        rows.append((f"{_TITLES[attribute]}{star}", None))
        first = len(rows)
        rows += [(f"  {g} (n={c['n']}{', too few' if c.get('too_small') else ''})", c)
                 for g, c in block["groups"].items()]
        spans.append((first, len(rows) - 1, {
            "mean_auc": block.get("all_images_mean_auc"),
            "underdiagnosis_rate": result["overall"].get("underdiagnosis_rate")}))
    panels = [("mean_auc", "mean AUC (95% CI)")]
    if result["thresholds"]:
        panels.append(("underdiagnosis_rate", "underdiagnosis rate (95% CI)"))
    fig = Figure(figsize=(4.2 * len(panels) + 1.6, 0.32 * len(rows) + 1.2))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = -np.arange(len(rows))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for yi, (_, cell) in zip(y, rows, strict=True):
            m = (cell or {}).get(key)
            if m and np.isfinite(m["value"]):
                lo, hi = m["low"], m["high"]
                err = ([[m["value"] - lo], [hi - m["value"]]] if np.isfinite(lo) else None)
                ax.errorbar(m["value"], yi, xerr=err, fmt="o", color="tab:blue", capsize=3)
        for first, last, whole in spans:  # each attribute's own classes
            if whole[key] is not None and np.isfinite(whole[key]):
                ax.vlines(whole[key], -last - 0.4, -first + 0.4, ls="--", color="gray", lw=1,
                          label="all test images" if first == spans[0][0] else None)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
        if key == "underdiagnosis_rate":  # a rate: from 0
            ax.set_xlim(-0.01, max(0.1, 1.1 * ax.get_xlim()[1]))
        ax.set_xlabel(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [r[0] for r in rows])
    for label, (_, cell) in zip(axes[0].get_yticklabels(), rows, strict=True):
        label.set_fontweight("bold" if cell is None else "normal")
    fig.suptitle("Subgroups of the test split (* a gap whose CI excludes 0)", fontsize=10)
    fig.tight_layout()
    with fileio.open(path, "wb") as f:  # local or gs://; Figure renders with Agg
        fig.savefig(f, format="png", dpi=110)
    return path


def write_outputs(result: Mapping, eval_dir: str, figure: bool = True) -> None:
    """eval/subgroups.json, .md and (``figure``) .png."""
    from cxrjax.evaluation import prediction_files as predictions

    json_path, md_path, png_path = (fileio.join(eval_dir, name) for name in FILES)
    fileio.makedirs(eval_dir)
    predictions.write_json(dict(result), json_path)
    fileio.write_text(md_path, markdown(result, "#", picture=FILES[2] if figure else None))
    if figure and result.get("attributes"):
        plot_forest(result, png_path)
