"""How a run differs from the paper's recipe for its row, and whether its number compares.

A run's row is the one its recorded config names (``config.row``, set by ``recipe.row``). Its
mean AUC is set beside the paper's only when the run followed the recipe of that row
(``recipe.ROWS``: ImageNet initialisation, 224-px crops of 256-px images, batch 64, the row's
epochs and stages, the 112,120 NIH images in the paper's patient-level split). Otherwise
the report lists each field that differs and says why there is no comparison. Fields that do
not change what is measured (logging, checkpoints, workers, paths, seeds, evaluation options,
the compute dtype) are not compared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections as mlc

from cxrjax import recipe
from cxrjax.io import run_layout
from cxrjax.runfolder.ownership import flatten_config, resumable

NIH_IMAGES = 112_120  # images in the ChestX-ray14 release (all splits)


# A field a resumed run may change (workdir.RESUMABLE_FIELDS) is not compared, unless it
# changes what is measured; nor are these, which change neither the model, nor the data, nor
# how it is trained.
MEASURED = ("train.lr",)
NOT_COMPARED = ("row", "seed", "dtype", "data.split_seed", "data.synthetic_n",
                "data.synthetic_size", "data.synthetic_seed")


def differences(config: Mapping | mlc.ConfigDict, row: str | None,
                split_sizes: Mapping[str, int] | None = None) -> list[tuple[str, str, str]]:
    """(field, this run, the recipe) for every compared field in which ``config`` differs from
    the recipe of ``row`` (the base recipe, row R18, when ``row`` is None), and the image count
    when ``split_sizes`` (images per split) does not add up to the NIH release's."""
    reference = recipe.row(row) if row in recipe.row_names() else recipe.base_config()
    ours, theirs = flatten_config(config), flatten_config(reference)
    out = []
    for name in list(theirs) + [n for n in ours if n not in theirs]:
        if (resumable(name) and name not in MEASURED) or name in NOT_COMPARED or \
                ours.get(name) == theirs.get(name):
            continue
        out.append((name, _show(ours.get(name)), _show(theirs.get(name))))
    if split_sizes:
        total = sum(split_sizes.values())
        if total != NIH_IMAGES:
            out.append(("images (all splits)", f"{total:,}", f"{NIH_IMAGES:,}"))
    return out


def run_row(config: Mapping | mlc.ConfigDict | None, command: Mapping | None = None
            ) -> tuple[str | None, str]:
    """(row, where it came from) of a run: the row its recorded config names (``row``); for a
    config that names none (recorded before the field existed), the row whose name its recorded
    config file bears (``configs/r18_msml.py``). (None, "") when neither names a row."""
    recorded = config.get("row") if config is not None else None
    if recorded in recipe.row_names():
        return recorded, run_layout.CONFIG
    if recorded is None:
        config_file = (command or {}).get("config_file") or ""
        stem = os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]
        if stem in recipe.row_names():
            return stem, "the config file's name"
    return None, ""


def _show(value: Any) -> str:
    return "(none)" if value is None else f"`{json.dumps(value)}`"


def data_banner(source: str) -> list[str]:
    """A first paragraph for runs on data that is not ChestX-ray14; [] for NIH data."""
    if source == "synthetic":
        return ["> **Synthetic data.** This run trained and was tested on synthetic images made "
                "by `cxrjax.data.synthetic` (drawn shapes with labels sampled from the NIH "
                "table), not on chest X-rays. Its AUCs show that the code works end to end; "
                "they say nothing about reading ChestX-ray14.", ""]
    if source == "chestmnist":
        return ["> **ChestMNIST.** This run used MedMNIST's downsized copy of ChestX-ray14 and "
                "its own split, not the NIH images in the paper's split: its AUCs do not "
                "compare with the paper's.", ""]
    return []


def section(config: Mapping, row: str | None, fused: Mapping,
            split_sizes: Mapping[str, int] | None, command: Mapping | None,
            fmt: Callable[[Any], str]) -> list[str]:
    """The report's "Recipe" section: the config file and overrides, each field that differs
    from the recipe of ``row`` (a name in ``recipe.ROWS``, or None), and the comparison with
    the paper's mean AUC for that row or why there is none."""
    lines = ["## Recipe", ""]
    row_title = recipe.ROWS[row].label if row else ""
    paper_auc = recipe.ROWS[row].paper_mean_auc if row else None
    if command and command.get("config_file"):
        overrides = " ".join(f"`{o}`" for o in command.get("overrides") or [])
        lines.append(f"Config file `{command['config_file']}`"
                     + (f", overridden by {overrides}." if overrides else ", no overrides."))
    else:
        lines.append("Config file: not recorded (a run started from Python, or before cxrjax "
                     "recorded it); `config.json` holds the config as run.")
    differ = differences(config, row, split_sizes)
    reference = f"row `{row}`" if row else "the base recipe, `recipe.base_config()`"
    if differ:
        lines += ["", f"Fields that differ from the paper's recipe ({reference}):", "",
                  "| field | this run | paper's recipe |", "|---|---|---|"]
        lines += [f"| {name} | {ours} | {theirs} |" for name, ours, theirs in differ]
    else:
        lines += ["", f"This run follows the paper's recipe ({reference}) in every field that "
                  "shapes the model, the data or the training."]
    lines.append("")
    if row is None:
        lines.append("This run's config names no row of the paper's Tables 1-2 (no `row` "
                     "field): no paper number to compare with.")
    elif paper_auc is None:
        lines.append(f"The paper's mean AUC for {row_title} is not one cxrjax could check: no "
                     "comparison.")
    elif differ:
        fields = ", ".join(name for name, _, _ in differ[:6]) + (", ..." if len(differ) > 6
                                                                 else "")
        lines.append(f"Not compared with the paper's mean AUC for {row_title} ({fmt(paper_auc)}): "
                     f"this run differs from its recipe ({fields}), so the numbers measure "
                     "different things.")
    else:
        ours = fused.get("mean_auc")
        diff = "n/a" if ours is None or ours != ours else f"{ours - paper_auc:+.4f}"
        lines.append(f"The paper reports a mean AUC of {fmt(paper_auc)} for {row_title} (ours "
                     f"{fmt(ours)}, difference {diff}).")
    return lines


def describe_splits(split_sizes: Mapping[str, int] | None,
                    order: Sequence[str] = ("train", "val", "test")) -> str:
    """``78,468 train / 11,219 val / 22,433 test images`` ('' without sizes)."""
    if not split_sizes:
        return ""
    names = [s for s in order if s in split_sizes] + [s for s in split_sizes if s not in order]
    return " / ".join(f"{split_sizes[s]:,} {s}" for s in names) + " images"
