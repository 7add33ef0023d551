"""Collects trained cxrjax workdirs into the paper's Tables 1 and 2, its numbers beside ours.

    python scripts/reproduce_tables.py --runs runs/            # one workdir per config inside
    python scripts/reproduce_tables.py --runs runs/r18 runs/r18_msml --out tables.md

The rows, their labels and the paper's numbers are ``cxrjax.recipe.ROWS``'s. Each workdir's row
is the one its config.json names (``row``; for a run recorded before that field, its recorded
config file's name), else its folder name (``r18_msml``, ``d121_bl``, ...). The ensemble row
is read from a folder named ``r18_d121_ensemble`` holding eval/test_metrics.json. A workdir
without results gets a line saying why, not a traceback, and the command that helps: its
recorded training command when it has no checkpoint to test, ``--mode eval`` when it has one.
A run is set beside the paper's number (Δ) only when its config.json follows the row's recipe
(``cxrjax.evaluation.recipe_comparison.differences``, as in each run's report.md); otherwise its
Note names the
fields that differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence

import ml_collections as mlc

from cxrjax import recipe
from cxrjax.evaluation import recipe_comparison as paper_recipe
from cxrjax.evaluation import report
from cxrjax.runfolder import loading as runs
from cxrjax.runfolder import ownership as workdir_lib
from cxrjax.runfolder.ownership import read_command

_MARKERS = ("config.json", "eval", "metrics.jsonl", "checkpoints")


@dataclasses.dataclass
class Run:
    """One workdir: its paper row (config name) and test summary, or why it has none."""

    workdir: str
    name: str | None  # config name, e.g. "r18_msml"; None if not a paper row
    config: dict | None
    summary: dict | None  # the fused summary of eval/test_metrics.json
    problem: str | None = None

    @property
    def source(self) -> str:
        return ((self.config or {}).get("data") or {}).get("source", "?")

    @property
    def split(self) -> str:
        return ((self.config or {}).get("data") or {}).get("split_scheme", "?")

    def recipe_differences(self) -> list[str] | None:
        """The config fields in which this run differs from its row's recipe (None: no
        config.json to check)."""
        if self.config is None:
            return None
        return [name for name, _, _ in paper_recipe.differences(self.config, self.name)]


def find_workdirs(paths: Sequence[str]) -> list[str]:
    """``--runs`` entries -> workdirs: a folder with run files is one, any other folder is a
    parent of one workdir per subfolder. A missing path or an empty parent is a ValueError."""
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            raise ValueError(f"--runs {path}: no such directory")
        if any(os.path.exists(os.path.join(path, m)) for m in _MARKERS):
            found = [path]
        else:
            found = sorted(os.path.join(path, d) for d in os.listdir(path)
                           if os.path.isdir(os.path.join(path, d)))
            if not found:
                raise ValueError(f"--runs {path}: neither a workdir (no config.json, eval/, "
                                 "metrics.jsonl or checkpoints/) nor a folder of workdirs")
        out += [p for p in found if os.path.realpath(p) not in map(os.path.realpath, out)]
    return out


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        value = json.load(f)  # accepts NaN (train.py) and null (evaluate --json)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def load_run(workdir: str) -> Run:
    """Reads WORKDIR/config.json and WORKDIR/eval/test_metrics.json; never raises on bad files."""
    base = os.path.basename(os.path.normpath(workdir))
    config, problems = None, []
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        try:
            config = _read_json(config_path)
        except (ValueError, OSError) as e:
            problems.append(f"config.json unreadable ({e})")
    name = paper_recipe.run_row(config, read_command(workdir))[0] if config else None
    if name is None and base in recipe.ROWS:
        name = base
    summary = None
    metrics_path = os.path.join(workdir, "eval", "test_metrics.json")
    if not os.path.exists(metrics_path):
        problems.append(f"no eval/test_metrics.json: {why_no_results(workdir, name, config)}")
    else:
        try:
            summary = _read_json(metrics_path)
            if "mean_auc" not in summary:
                raise ValueError("no 'mean_auc' key")
        except (ValueError, OSError) as e:
            summary = None
            problems.append(f"eval/test_metrics.json unreadable ({e})")
    return Run(workdir, name, config, summary, "; ".join(problems) or None)


def _training_command(workdir: str, name: str | None) -> list[str]:
    """The command that trained ``workdir`` as recorded there (less ``--restart``, which would
    set its checkpoints aside), else the config's usual one."""
    recorded = (workdir_lib.read_command(workdir) or {}).get("argv")
    if isinstance(recorded, list) and all(isinstance(a, str) for a in recorded) and recorded:
        return [a for a in _without_mode(recorded)
                if a != "--restart" and not a.startswith("--restart=")]
    return ["python", "-m", "cxrjax.main", "--config", f"configs/{name or '<name>'}.py",
            "--workdir", workdir]


def _saved_steps(directory: str) -> list[int]:
    """The complete checkpoints of a stage (orbax names a step's folder by its number only
    once it is complete)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def why_no_results(workdir: str, name: str | None, config: dict | None) -> str:
    """Why a workdir has no eval/test_metrics.json, and the command that helps: the
    training command (resuming) when its last stage has no checkpoint, ``--mode eval`` when
    it has one."""
    train = _training_command(workdir, name)
    stages = ((config or {}).get("train") or {}).get("stages") or []
    if not stages or not all(isinstance(st, dict) and st.get("name") for st in stages):
        return f"no readable config.json to tell how far it trained: run `{shlex.join(train)}`"
    steps = [_saved_steps(runs.stage_dir(workdir, i, mlc.ConfigDict(st)))
             for i, st in enumerate(stages)]
    if steps[-1]:
        evaluate = _without_mode(train) + ["--mode", "eval"]
        return (f"checkpoints (last: step {steps[-1][-1]}) but no test results: "
                f"`{shlex.join(evaluate)}` tests the best one; if training stopped early, "
                f"`{shlex.join(train)}` resumes it and then tests")
    started = [i for i, s in enumerate(steps) if s]
    if not started:
        return ("no checkpoint: training stopped before the end of its first epoch (see its "
                f"log or metrics.jsonl); run the training command again: `{shlex.join(train)}`")
    stopped = max(started) + 1
    return (f"stopped in stage {stopped + 1} of {len(stages)} ({stages[stopped]['name']}) "
            "before its first checkpoint; run the training command again to resume: "
            f"`{shlex.join(train)}`")


def _without_mode(argv: list[str]) -> list[str]:
    """``argv`` less any ``--mode X`` / ``--mode=X``."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--mode="):
            skip = False
        elif arg == "--mode":
            skip = True
        else:
            out.append(arg)
    return out


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _comparison(run: Run) -> tuple[bool, str]:
    """Whether ``run`` may stand beside the paper's number, and its Note (why not)."""
    if run.config is None:  # an ensemble folder has no recipe of its own
        return True, "recipe not checked: no config.json" if run.name in recipe.row_names() else ""
    if run.source not in ("nih", "?"):
        return False, "not NIH data: not comparable"
    differ = run.recipe_differences() if run.name is not None else []
    if differ:
        return False, ("not the recipe, not comparable: " + ", ".join(f"`{d}`" for d in differ[:4])
                       + (f" and {len(differ) - 4} more" if len(differ) > 4 else ""))
    return True, ""


def _row_cells(label: str, run: Run | None, paper: float | None, paper_text: str) -> list[str]:
    if run is None or run.summary is None:
        status = "not run" if run is None else f"`{run.workdir}`: no results (see below)"
        return [label, status, "—", "", "", "", paper_text, "", "", "", "", ""]
    s = run.summary
    ours = _num(s.get("mean_auc"))
    comparable, note = _comparison(run)
    delta = "—" if paper is None or not comparable or math.isnan(ours) else f"{ours - paper:+.4f}"
    data = "no config.json" if run.config is None else f"{run.source}, {run.split}"
    return [label, f"`{run.workdir}`", data, str(s.get("n_images", "?")),
            report.fmt(ours), report.ci_text(s), paper_text, delta, report.fmt(s.get("w_auc")),
            report.fmt(s.get("d_auc")), report.fmt(s.get("n_auc")), note]


_HEADER = ("| Paper row | Workdir | Data, split | Test images | Mean AUC (ours) | 95% CI | "
           "Mean AUC (paper) | Δ | W-AUC | D-AUC | N-AUC | Note |\n"
           "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|")


def _table(rows: dict[str, str], runs: list[Run], paper: dict[str, tuple[float, str]],
           extra: Sequence[str] = ()) -> tuple[str, dict[str, dict], list[str]]:
    """The summary table over ``rows`` (config name -> label); the per-class columns
    ({title: summary}) of the runs with results and the paper's mean AUC for each column."""
    lines, columns, paper_cells = [_HEADER], {}, []
    for name, label in rows.items():
        value, text = paper.get(name, (None, "—"))
        mine = [r for r in runs if r.name == name] or [None]
        for run in mine:
            lines.append("| " + " | ".join(_row_cells(label, run, value, text)) + " |")
            if run is not None and run.summary is not None:
                title = label if len(mine) == 1 else f"{label} ({os.path.basename(run.workdir)})"
                columns[title] = run.summary
                paper_cells.append(text)
    return "\n".join(lines + list(extra)), columns, paper_cells


def _section(title: str, rows: dict[str, str], runs: list[Run],
             paper: dict[str, tuple[float, str]], extra: Sequence[str] = (),
             notes: Sequence[str] = ()) -> list[str]:
    table, columns, paper_cells = _table(rows, runs, paper, extra)
    out = [f"## {title}", "", table, "", *notes]
    if columns:
        out += [f"### {title.split(':')[0]}, AUC per class (ours, fused prediction)", "",
                report.per_class_table(columns, extra_rows=[("AUC (paper)", paper_cells)]), ""]
    return out


def _paper_tables() -> tuple[dict[str, str], dict[str, str], dict[str, tuple[float, str]],
                             dict[str, tuple[float, str]]]:
    """From ``recipe.ROWS``: Table 1's and Table 2's rows (name -> label) and the paper's mean
    AUC per row for each (Table 2 shows a network's Table 1 figure, marked †)."""
    rows, fmt = recipe.ROWS.values(), report.fmt
    table1 = {r.name: r.label for r in rows if r.in_table1}
    table2 = {r.name: r.table2 for r in rows if r.table2}
    paper1 = {r.name: (r.paper_mean_auc, fmt(r.paper_mean_auc)) for r in rows
              if r.paper_mean_auc is not None}
    paper2 = {name: (value, f"{text}†") for name, (value, text) in paper1.items()
              if name in table2}
    return table1, table2, paper1, paper2


def render(runs: list[Run]) -> str:
    """Markdown: Table 1 and Table 2 (summary + per class), then the runs without results."""
    table1, table2, paper1, paper2 = _paper_tables()
    reference, reference_auc = recipe.REFERENCE
    reference_row = (f"| {reference} | — | — | — |  |  | {report.fmt(reference_auc)} |  |  |  |  "
                     "| not a cxrjax config |")
    out = [
        "# Ge et al. 2018 (arXiv 1807.07247), reproduced with cxrjax", "",
        "Ours: the fused prediction on each run's test split. Paper: the mean AUCs printed in "
        "the paper; its per-class values, W/D/N-AUC and Table 2 figures are not recorded in "
        "cxrjax and show as —. Δ = ours − paper, only for runs on NIH data.", "",
    ]
    out += _section("Table 1: networks", table1, runs, paper1, [reference_row])
    out += _section("Table 2: training strategies, R18 + R18-F-MSML", table2, runs, paper2,
                    notes=["† the paper's Table 1 figure for this network (Global is the "
                           "Table 1 training); Table 2's own figures are not recorded.", ""])
    missing = [r for r in runs if r.summary is None]
    if missing:
        out += ["## Workdirs without results", ""]
        out += [f"- `{r.workdir}` ({report.row_label(r.name) if r.name else 'unknown row'}): "
                f"{r.problem}" for r in missing]
        out.append("")
    others = [r for r in runs if r.name is None and r.summary is not None]
    if others:
        out += ["## Other runs (not a paper row)", "", _HEADER]
        out += ["| " + " | ".join(_row_cells(os.path.basename(r.workdir), r, None, "—")) + " |"
                for r in others]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the tables (and writes them to --out); 2 with a one-line error on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                        help="workdirs, or folders holding one workdir per config")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    try:
        text = render([load_run(w) for w in find_workdirs(args.runs)])
        print(text)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
