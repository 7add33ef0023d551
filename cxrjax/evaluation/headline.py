"""The report's first screen: five lines a reviewer reads before any table.

The mean AUC with its CI; the worst subgroup and its gap; the metadata-only baseline; the
calibration error; localization at T(IoBB) = 0.1 against random boxes. Each line says why
when its section did not run. Works on the sections' full results or their short forms
(``test_metrics.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

IOBB_LEVEL = 0.1  # the localization threshold the first screen quotes


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(pair) -> str:
    lo, hi = (list(pair or []) + [None, None])[:2]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" [{lo:.3f}, {hi:.3f}]"


def _why(result: Mapping | None, verb: str = "not computed") -> str:
    return f"{verb} ({(result or {}).get('skipped', 'not run')})"


def _auc_line(fused: Mapping) -> str:
    return (f"**Mean AUC** {_num(fused.get('mean_auc'))}{_ci(fused.get('mean_auc_ci95'))} "
            f"(fused prediction, {fused.get('n_images', '?')} test images, 95% CI).")


def subgroup_line(result: Mapping | None) -> str:
    """The worst subgroup gap of a subgroups result (full or test_metrics.json's short form)."""
    if not result or "gaps" not in result and "attributes" not in result:
        return f"**Worst subgroup:** {_why(result)}."
    gaps = result.get("gaps") or {a: b["gaps"] for a, b in result["attributes"].items()}
    found = [(a, g) for a, per in gaps.items() for g in per.values() if g]
    if not found:
        return "**Worst subgroup:** no attribute has two groups large enough to compare."
    parts = []
    for metric, what in (("mean_auc", "mean AUC"), ("underdiagnosis_rate",
                                                     "underdiagnosis rate")):
        ranked = [(a, g) for a, g in found if g["metric"] == metric]
        if not ranked:
            continue
        attribute, gap = max(ranked, key=lambda ag: ag[1]["difference"]["value"])
        d = gap["difference"]
        other = gap["higher"] if gap["worst"] == gap["lower"] else gap["lower"]
        flag = ", **CI excludes 0**" if gap["flagged"] else ", CI includes 0"
        parts.append(f"{what}: {gap['worst']} vs {other} ({attribute}), gap "
                     f"{_num(d['value'])}{_ci([d['low'], d['high']])}{flag}")
    return "**Worst subgroup** by " + "; by ".join(parts) + "."


def _baseline_line(result: Mapping | None) -> str:
    if not result or "mean_auc" not in result:
        return f"**Metadata-only baseline:** {_why(result)}."
    close = [c["class"] for c in result.get("close_classes", [])]
    within = (f"; within {result.get('margin', 0.05):g} of the model in {len(close)} class(es)"
              f" ({', '.join(close)})" if close else "; not within "
              f"{result.get('margin', 0.05):g} of the model in any class")
    return (f"**Metadata-only baseline** (sex, age, view): mean AUC "
            f"{_num(result['mean_auc'])}{_ci(result.get('mean_auc_ci95'))} against the image "
            f"model's {_num(result.get('model_mean_auc'))}{within}.")


def _ece_line(result: Mapping | None) -> str:
    fused = ((result or {}).get("heads") or {}).get("fused")
    if not fused:
        return f"**ECE:** {_why(result)}."
    line = (f"**ECE** (fused, all predictions pooled) {_num(fused['overall'], 4)}; mean of "
            f"the classes {_num(fused['mean_over_classes'], 4)}")
    rescaling = result.get("rescaling")
    if rescaling:
        line += (f"; after {rescaling['method']} scaling "
                 f"{_num(rescaling['test_ece_after']['overall'], 4)}")
    return line + "."


def _localization_line(result: Mapping | None) -> str:
    if not result or not ("methods" in result or "overall" in result):
        return f"**Localization:** {_why(result, 'not scored')}."
    levels = list(result["thresholds"])
    if IOBB_LEVEL not in levels:
        return f"**Localization:** not scored at T(IoBB) = {IOBB_LEVEL:g}."
    k = levels.index(IOBB_LEVEL)
    if "methods" in result:
        block = result["methods"][result["primary"]]
        found, chance = block["scores"]["overall"], block["random_baseline"]["overall"]
        title = block.get("title", result["primary"])
    else:
        found, chance = result["overall"], result["random_baseline_overall"]
        title = result.get("primary", "")
    return (f"**Localization** ({title}): {_num(found['acc_iobb'][k])} of "
            f"{result.get('boxes', '?')} boxes found at T(IoBB) = {IOBB_LEVEL:g}; the same "
            f"boxes at random places {_num(chance['acc_iobb'][k])}.")


def headline(results_by_section: Mapping[str, Mapping], fused_summary: Mapping) -> str:
    """Five markdown lines (one paragraph each line, ending in two spaces): the run at a
    glance. ``fused_summary``: the fused head's ``metrics.summary`` on test."""
    get = results_by_section.get
    lines = [_auc_line(fused_summary), subgroup_line(get("subgroups")),
             _baseline_line(get("metadata_baseline")), _ece_line(get("calibration")),
             _localization_line(get("localization"))]
    return "  \n".join(lines) + "\n"
