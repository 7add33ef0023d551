"""W/model_card.md: what a reviewer reads first about a trained run, on about one screen.

Rendered only from the files the run recorded (config.json, command.json,
eval/test_metrics.json, eval/thresholds.json): intended use (research software, not a medical
device), the training data and split, the test AUCs with their CIs and the operating points,
calibration and subgroups when those sections ran, the preprocessing contract, and the known
limitations (``cxrjax.evaluation.limitations`` decides those the run's config implies).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import headline, limitations, operating_points
from cxrjax.evaluation.prediction_files import HEAD_TITLES, format_value
from cxrjax.io import fileio, run_layout
from cxrjax.runfolder.ownership import read_command

CARD_FILE = run_layout.MODEL_CARD

# What each data source means for where a model may be used (views, ages, labels).
SOURCES = {
    "nih": ("NIH ChestX-ray14: frontal (PA and AP) chest X-rays from one US hospital, labels "
            "mined from radiology reports by NLP (noisy)",
            "frontal PA/AP views only (no laterals); the release's patients are mostly adults: "
            "not validated on children"),
    "synthetic": ("synthetic images made by `cxrjax.data.synthetic` (drawn shapes with labels "
                  "sampled from the NIH table): no patients, no real X-rays",
                  "no real views or ages at all: do not use on X-rays"),
    "chestmnist": ("ChestMNIST: MedMNIST's downsized copy of ChestX-ray14, with its own split",
                   "frontal views, thumbnails only; ages as in ChestX-ray14 (mostly adults)"),
}
OTHER_SOURCE = ("the `{source}` release as prepared by `cxrjax.data.prepare`",
                "the views and ages of that release's prepared images; check the data section "
                "of the report")


def _read_json(workdir: str, *parts: str) -> Any:
    path = fileio.join(workdir, *parts)
    try:
        return json.loads(fileio.read_text(path)) if fileio.exists(path) else None
    except (OSError, ValueError):
        return None


def _ci(pair: Any) -> str:
    lo, hi = (list(pair or []) + [None, None])[:2]
    return "" if format_value(lo, 3) == "n/a" else f" [{format_value(lo, 3)}, " \
                                                    f"{format_value(hi, 3)}]"


def _split_lines(data: Mapping, metrics: Mapping) -> list[str]:
    """The data source, the split scheme and seed, and the split hashes when recorded."""
    source = data.get("source", "nih")
    what = SOURCES.get(source, OTHER_SOURCE)[0].format(source=source)
    lines = [f"- Data: {what}."]
    scheme, seed = data.get("split_scheme", "?"), data.get("split_seed", "?")
    hashes = metrics.get("split_hashes") or data.get("split_hashes")
    lines.append(f"- Split: scheme `{scheme}`, seed {seed} (`cxrjax.data.splits`); "
                 + ("hashes: " + ", ".join(f"{k} `{str(v)[:16]}`" for k, v in hashes.items())
                    if isinstance(hashes, Mapping) and hashes else
                    "no split hashes recorded by this run (the scheme and seed fix the split)")
                 + f"; {data.get('crop', '?')}-px crops of {data.get('resolution', '?')}-px "
                   "images.")
    if source == "synthetic":
        lines.append(f"- Synthetic set: {data.get('synthetic_n', '?')} images of "
                     f"{data.get('synthetic_size', '?')} px, seed {data.get('synthetic_seed', 0)}.")
    return lines


def _metrics_table(metrics: Mapping) -> list[str]:
    """Per class: test positives, AUC with its 95% CI, and the operating point when chosen."""
    per, ci = metrics.get("per_class") or {}, metrics.get("per_class_ci95") or {}
    pos = metrics.get("n_positive") or {}
    points = (metrics.get("operating_points") or {}).get("per_class") or {}
    head = "| Finding | test positives | AUC [95% CI] |"
    lines = [head + (" threshold | sensitivity | specificity |" if points else ""),
             "|---|---:|---:|" + ("---:|---:|---:|" if points else "")]
    for name in per or CLASSES:  # the run's classes, in its order
        row = f"| {name} | {pos.get(name, 'n/a')} | {format_value(per.get(name), 3)}" \
              f"{_ci(ci.get(name))} |"
        if points:
            p = points.get(name) or {}
            row += " " + " | ".join([format_value(p.get("threshold"), 3), *(
                format_value((p.get(m) or {}).get("value"), 3)
                for m in ("sensitivity", "specificity"))]) + " |"
        lines.append(row)
    return lines


def _metrics_lines(metrics: Mapping | None, fusion: list[str]) -> list[str]:
    if not metrics:
        return ["Not tested yet: no `eval/test_metrics.json` in the run."]
    titles = " and ".join(HEAD_TITLES.get(h, h) for h in fusion) or "the first head"
    lines = [f"Fused prediction (mean of the {titles} probabilities) on "
             f"{metrics.get('n_images', '?')} test images: mean AUC "
             f"**{format_value(metrics.get('mean_auc'), 3)}**{_ci(metrics.get('mean_auc_ci95'))} "
             f"(95% bootstrap CI, {metrics.get('n_boot', '?')} resamples); W-AUC "
             f"{format_value(metrics.get('w_auc'), 3)}"
             + (" (it needs every label known; these data have missing labels, and each "
                "class's AUC is over its known labels)." if metrics.get("masked") else ".")]
    few = metrics.get("few_positive_classes") or []
    if few:
        lines.append(f"Too few test positives for a reliable AUC: {', '.join(few)}.")
    points = metrics.get("operating_points") or {}
    if points.get("per_class"):
        lines.append(f"Thresholds: rule `{points.get('rule')}`, chosen on the validation split "
                     "(`eval/thresholds.json`); sensitivity and specificity measured on test.")
    return ["", *lines, "", *_metrics_table(metrics)]


def _section_lines(metrics: Mapping | None) -> list[str]:
    """Calibration and subgroups, when those sections ran."""
    metrics, lines = metrics or {}, []
    cal = metrics.get("calibration") or {}
    fused = (cal.get("heads") or {}).get("fused") or {}
    if fused:
        text = f"- Calibration: fused test ECE {format_value(fused.get('overall'), 3)}"
        rescaling = cal.get("rescaling") or {}
        after = (rescaling.get("test_ece_after") or {}).get("overall")
        if rescaling:
            text += (f"; after {rescaling.get('method')} scaling fitted on validation "
                     f"{format_value(after, 3)}")
        lines.append(text + ".")
    subgroups = metrics.get("subgroups")
    if isinstance(subgroups, Mapping) and subgroups:
        lines.append(f"- {headline.subgroup_line(subgroups)} All groups: "
                     f"`{run_layout.eval_link(run_layout.SUBGROUPS)}.md`.")
    return lines


def render(workdir: str) -> str:
    """The model card's markdown for the run in ``workdir`` (from its recorded files)."""
    config = _read_json(workdir, run_layout.CONFIG) or {}
    command = read_command(workdir) or {}
    metrics = _read_json(workdir, run_layout.EVAL, run_layout.TEST_METRICS)
    has_thresholds = fileio.exists(fileio.join(workdir, operating_points.RUN_FILE))
    data, model = config.get("data") or {}, config.get("model") or {}
    source = data.get("source", "nih")
    limits = limitations.run_limitations(config)
    name = (command.get("config_file") and os.path.basename(command["config_file"])) \
        or config.get("row") or os.path.basename(os.path.normpath(workdir))
    trunks = " + ".join(t for t in (model.get("trunk_a"), model.get("trunk_b")) if t)
    res, crop = data.get("resolution", "?"), data.get("crop", "?")
    lines = [
        f"# Model card: {name}", "",
        "> **Research software, NOT a medical device.** Not for diagnosis, triage or any "
        "clinical decision; not cleared or approved by any regulator.",
        *([f"> **{x.text[0].upper()}{x.text[1:]}.**" for x in limits]), "",
        "## Intended use",
        "Research on multi-label classification of chest X-rays into the 14 ChestX-ray14 "
        f"findings (Ge et al., MSML / F-MSML): model `{trunks}` (row `{config.get('row')}`), "
        "scored with `cxrjax.predict` or an export (`cxrjax.export`, `cxrjax.serving`).", "",
        "## Training data and split", *_split_lines(data, metrics or {}), "",
        "## Test metrics", *_metrics_lines(metrics, list(model.get("fusion") or [])),
        *(["", *_section_lines(metrics)] if _section_lines(metrics) else []),
        *([] if has_thresholds else ["", "No thresholds recorded: probabilities only."]), "",
        "## Preprocessing",
        f"PNG/JPEG (Pillow) or DICOM → 8-bit gray (16-bit mapped linearly) → {res}×{res}, "
        f"Pillow antialiased bilinear, aspect not kept → centre {crop}×{crop} crop → /255, gray "
        "to 3 channels, ImageNet mean/std (inside the model). Exports state it exactly in "
        "`preprocessing.json`.", "",
        "## Known limitations",
        *[f"- {x.text[0].upper()}{x.text[1:]}." for x in limits],
        f"- Views and ages: {SOURCES.get(source, OTHER_SOURCE)[1].format(source=source)}.",
        "- " + ("Tested only on the split above; no external validation is recorded with this "
                "card." if metrics else "Not tested: its accuracy is unknown."),
        "",
    ]
    return "\n".join(lines)


def write_model_card(workdir: str) -> str:
    """Writes ``W/model_card.md`` from the run's recorded files; returns its path."""
    path = fileio.join(workdir, CARD_FILE)
    fileio.write_text(path, render(workdir))
    return path
