"""The run report (report.md + PNGs) and scripts/reproduce_tables.py on fake-but-real runs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from configs import demo, r18, r18_msml, r18_msml_local
from cxrjax import config_checks, recipe
from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import metrics, report, report_plots
from cxrjax.evaluation import recipe_comparison as paper_recipe

ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reproduce_tables = _load_script("reproduce_tables")
model_table = _load_script("model_table")


def _fake_predictions(seed: int = 0, n: int = 240) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Labels with NIH-like sparsity and, per head, probabilities correlated with them."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(CLASSES))) < 0.15).astype(np.uint8)
    labels[:3, -1] = 1  # every class has positives
    probs = {}
    for i, head in enumerate(("ce", "msml", "fce")):
        logits = (1.0 + 0.3 * i) * labels + rng.normal(size=labels.shape)
        probs[head] = 1.0 / (1.0 + np.exp(-logits))
    probs["fused"] = (probs["ce"] + probs["fce"]) / 2
    return probs, labels


def _write_log(workdir: str, stages: list[tuple[str, int]]) -> None:
    """A metrics.jsonl as train.py writes it: steps restart per stage, val at epoch ends."""
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for stage, steps in stages:
            for step in range(5, steps + 1, 5):
                f.write(json.dumps({"step": step, "stage": stage, "train/loss": 1 / step,
                                    "train/loss_ce": 0.4 / step, "train/loss_fce": 0.6 / step,
                                    "train/grad_norm": 1.0, "train/lr": 1e-4,
                                    "train/img_per_s": 100.0}) + "\n")
                if step % 10 == 0:
                    f.write(json.dumps({"step": step, "stage": stage,
                                        "val/mean_auc": 0.6 + step / 100, "val/w_auc": 0.4})
                            + "\n")


@pytest.fixture(scope="module")
def fake_run():
    probs, labels = _fake_predictions()
    results = {h: metrics.summary(p, labels, n_boot=20) for h, p in probs.items()}
    return probs, labels, results


def _is_png(path: str) -> bool:
    """A real PNG that PIL decodes, of a plot's size."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_MAGIC:
            return False
    with Image.open(path) as image:
        image.load()
        return image.format == "PNG" and min(image.size) >= 300


def test_write_report_tables_every_class_and_summary_row_with_the_summary_values(
        tmp_path, fake_run):
    probs, labels, results = fake_run
    _write_log(str(tmp_path), [("streams", 30), ("bilinear", 20)])
    path = report.write_report(str(tmp_path), r18_msml_local.get_config(), results, probs, labels)
    assert path == str(tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    heads = ("ce", "msml", "fce", "fused")
    header = next(line for line in lines if line.startswith("| Finding |"))
    assert header == ("| Finding | Positives | CE (stream A) | MSML (stream B) | FCE (bilinear) "
                      "| Fused | 95% CI (Fused) |")
    for c, name in enumerate(CLASSES):
        expected = [report.fmt(results[h]["per_class"][name]) for h in heads]
        positives = int(labels[:, c].sum())
        lo, hi = results["fused"]["per_class_ci95"][name]
        assert (f"| {name} | {positives} | " + " | ".join(expected) +
                f" | [{report.fmt(lo)}, {report.fmt(hi)}] |") in lines
        # The table's numbers are the real AUCs (checked against scikit-learn).
        assert float(expected[-1]) == pytest.approx(
            roc_auc_score(labels[:, c], probs["fused"][:, c]), abs=5e-5)
    for key, title in report.SUMMARY_ROWS:
        ci = report.ci_text(results["fused"]) if key == "mean_auc" else ""
        assert f"| {title} |  | " + " | ".join(report.fmt(results[h][key]) for h in heads) + \
            f" | {ci} |" in lines
    lo, hi = results["fused"]["mean_auc_ci95"]
    assert f"[{report.fmt(lo)}, {report.fmt(hi)}]" in text
    assert "R18 + R18-F-MSML, Local" in lines[0]
    assert f"| test images | {labels.shape[0]} |" in lines
    assert "source `nih`, split `paper`" in text
    assert "(eval/roc_curves.png)" in text and "(training_curves.png)" in text
    assert _is_png(str(tmp_path / "eval" / "roc_curves.png"))
    assert _is_png(str(tmp_path / "training_curves.png"))


NIH_SPLITS = {"train": 78_468, "val": 11_219, "test": 22_433}  # 112,120 images


def test_report_compares_with_the_paper_only_when_the_run_follows_the_rows_recipe(
        tmp_path, fake_run):
    _, _, results = fake_run
    mean = results["fused"]["mean_auc"]
    text = report.render_markdown(str(tmp_path), r18_msml.get_config(), results,
                                  split_sizes=NIH_SPLITS)
    assert "This run follows the paper's recipe (row `r18_msml`)" in text
    assert (f"The paper reports a mean AUC of 0.8388 for R18 + R18-F-MSML (ours "
            f"{report.fmt(mean)}, difference {mean - 0.8388:+.4f}).") in text
    assert "Not compared" not in text and "Synthetic data" not in text
    assert "(empty:" not in text


def test_report_of_a_small_scratch_run_lists_each_difference_and_does_not_compare(
        tmp_path, fake_run):
    # A new user's trial: from scratch, 64-px crops, 207 images: no "difference -0.29".
    _, _, results = fake_run
    config = r18_msml.get_config()
    config.model.init = "scratch"
    config.data.resolution, config.data.crop = 72, 64
    config.train.batch_size = 8
    config.train.lr = 1e-3
    config.train.stages[0].epochs = 2
    text = report.render_markdown(str(tmp_path), config, results,
                                  split_sizes={"train": 145, "val": 21, "test": 41})
    lines = text.splitlines()
    for row in ('| model.init | `"scratch"` | `"imagenet"` |', "| data.resolution | `72` | `256` |",
                "| data.crop | `64` | `224` |", "| train.batch_size | `8` | `64` |",
                "| train.lr | `0.001` | `0.0001` |",
                "| train.stages[0].epochs | `2` | `9` |",
                "| images (all splits) | 207 | 112,120 |"):
        assert row in lines
    assert "Not compared with the paper's mean AUC for R18 + R18-F-MSML (0.8388)" in text
    assert "difference" not in text and "The paper reports" not in text
    assert "145 train / 21 val / 41 test images" in text


def test_report_of_synthetic_data_says_so_first_and_does_not_compare(tmp_path, fake_run):
    _, _, results = fake_run
    config = r18_msml.get_config()
    config.data.source = "synthetic"
    text = report.render_markdown(str(tmp_path), config, results)
    assert text.splitlines()[2].startswith("> **Synthetic data.**")
    assert '| data.source | `"synthetic"` | `"nih"` |' in text
    assert "Not compared with the paper's mean AUC" in text and "difference" not in text


def test_report_of_a_row_without_a_checked_paper_number_says_there_is_no_comparison(
        tmp_path, fake_run):
    _, _, results = fake_run
    text = report.render_markdown(str(tmp_path), r18_msml_local.get_config(), results)
    assert "The paper's mean AUC for R18 + R18-F-MSML, Local is not one cxrjax could check" in text
    assert "paper reports" not in text


def test_report_names_the_recorded_config_file_and_overrides(tmp_path, fake_run):
    probs, labels, results = fake_run
    (tmp_path / "command.json").write_text(json.dumps(
        {"config_file": "configs/r18.py", "overrides": ["--config.train.batch_size=8"]}))
    report.write_report(str(tmp_path), r18.get_config(), results, probs, labels)
    text = (tmp_path / "report.md").read_text()
    assert ("Config file `configs/r18.py`, overridden by `--config.train.batch_size=8`."
            in text)


def _header(text: str) -> dict[str, str]:
    """The report's first table: {row title: cell}."""
    cells = [line.strip("|").split("|", 1) for line in text.splitlines()
             if line.startswith("| ") and line.count("|") == 3]
    return {k.strip(): v.strip() for k, v in cells}


def test_report_names_only_the_heads_the_model_fuses(tmp_path, fake_run):
    """R18 has one head (CE): its report must not say it fuses an FCE head it does not have."""
    _, labels, results = fake_run
    one_head = {"ce": results["ce"], "fused": results["ce"]}
    text = report.render_markdown(str(tmp_path), r18.get_config(), one_head)
    assert _header(text)["reported prediction"] == (
        "Fused = the CE (stream A) probabilities (this model's one fused head)")
    text = report.render_markdown(str(tmp_path), r18_msml.get_config(), results)
    assert _header(text)["reported prediction"] == (
        "Fused = mean of the CE (stream A) and FCE (bilinear) probabilities")
    assert report.fused_heads(demo.get_config().model.to_dict()) == ["ce", "fce"]


def test_report_header_names_the_config_file_as_typed_and_the_recorded_row(tmp_path, fake_run):
    """The demo starts from row r18_msml and overrides it: the header names configs/demo.py as
    the config and r18_msml as its row, from command.json and config.json."""
    probs, labels, results = fake_run
    (tmp_path / "command.json").write_text(json.dumps(
        {"config_file": "configs/demo.py", "overrides": [],
         "argv": ["python", "-m", "cxrjax.main", "--config", "configs/demo.py"]}))
    report.write_report(str(tmp_path), demo.get_config(), results, probs, labels)
    text = (tmp_path / "report.md").read_text()
    assert text.splitlines()[0] == "# cxrjax run report: demo.py (row R18 + R18-F-MSML)"
    header = _header(text)
    assert header["config file"] == "`configs/demo.py`"
    assert header["paper row"] == "`r18_msml`: R18 + R18-F-MSML (from config.json)"
    assert "Config file `configs/demo.py`, no overrides." in text


def test_report_of_a_config_without_a_row_does_not_compare(tmp_path, fake_run):
    _, _, results = fake_run
    config = recipe.base_config()  # the recipe, naming no row
    text = report.render_markdown(str(tmp_path / "mine"), config, results,
                                  split_sizes=NIH_SPLITS)
    assert text.splitlines()[0] == "# cxrjax run report: mine"
    assert _header(text)["paper row"] == "none: the config names no row of the paper's tables"
    assert "names no row of the paper's Tables 1-2" in text and "paper reports" not in text


def _resnet34_streams(c):
    c.model.trunk_a = c.model.trunk_b = "resnet34"
    return c


def test_a_row_added_to_the_table_reaches_the_report_tables_and_recipe(
        tmp_path, fake_run, monkeypatch, capsys):
    """Adding a paper row is one entry in recipe.ROWS: its config, the recipe comparison, the
    report, reproduce_tables and model_table all pick it up."""
    new = recipe.Row("r34_msml", "R34 + R34-F-MSML", (recipe.f_msml, _resnet34_streams), 0.8450)
    monkeypatch.setattr(recipe, "ROWS", {**recipe.ROWS, new.name: new})
    config = recipe.row("r34_msml")
    config_checks.check_config(config)
    assert (config.row, config.model.trunk_b, config.model.head_b) == (
        "r34_msml", "resnet34", "msml")
    assert paper_recipe.differences(config, "r34_msml") == []
    assert paper_recipe.differences(r18_msml.get_config(), "r34_msml")[0][0] == "model.trunk_a"

    _, _, results = fake_run
    mean = results["fused"]["mean_auc"]
    text = report.render_markdown(str(tmp_path), config, results, split_sizes=NIH_SPLITS)
    assert "# cxrjax run report: R34 + R34-F-MSML" in text
    assert (f"The paper reports a mean AUC of 0.8450 for R34 + R34-F-MSML (ours "
            f"{report.fmt(mean)}, difference {mean - 0.8450:+.4f}).") in text

    _fake_workdir(tmp_path, "my_r34", config, results["fused"])
    assert reproduce_tables.main(["--runs", str(tmp_path / "my_r34")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("| R34 + R34-F-MSML |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[4] == report.fmt(mean) and cells[6] == "0.8450"
    assert cells[7] == f"{mean - 0.8450:+.4f}"
    assert ("R34 + R34-F-MSML", "r34_msml") in model_table.table_rows()


def test_training_curves_label_every_axis_and_give_each_head_its_own_panel(tmp_path):
    records = []
    for step in range(10, 101, 10):
        records.append({"step": step, "stage": "global", "train/loss": 1 / step,
                        "train/loss_ce": 0.40 / step, "train/loss_fce": 0.41 / step,
                        "train/loss_msml": 3 / step, "train/lr": 1e-4})
        if step % 50 == 0:
            records.append({"step": step, "stage": "global", "val/mean_auc": 0.7})
    fig = report_plots.training_figure(records)
    drawn = [ax for ax in fig.get_axes() if ax.get_lines()]
    assert len(drawn) == 6  # total, lr, validation; CE, MSML, FCE
    for ax in drawn:
        assert ax.get_xlabel().startswith("step") and ax.get_ylabel(), ax.get_title()
    panel_of = {}
    for ax in drawn:
        for head in ("CE (stream A)", "MSML (stream B)", "FCE (bilinear)"):
            if ax.get_title().startswith(head):
                panel_of[head] = ax
    assert len(set(map(id, panel_of.values()))) == 3  # CE and FCE never share a panel
    report_plots.plt.close(fig)


def test_report_flags_classes_with_fewer_than_five_positives(tmp_path):
    probs, labels = _fake_predictions(seed=2)
    hernia = CLASSES.index("Hernia")
    labels[:, hernia] = 0
    labels[:2, hernia] = 1
    results = {h: metrics.summary(p, labels, n_boot=20) for h, p in probs.items()}
    text = report.render_markdown(str(tmp_path), r18_msml.get_config(), results)
    assert any(line.startswith("| Hernia | 2 ⚠ | ") for line in text.splitlines())
    assert "⚠ Fewer than 5 test positives, AUC unreliable: Hernia." in text


def test_best_epochs_are_each_stages_highest_validation_auc():
    rows, _ = report_plots._global_steps([
        {"step": 10, "stage": "a", "val/mean_auc": 0.70},
        {"step": 20, "stage": "a", "val/mean_auc": 0.75},
        {"step": 30, "stage": "a", "val/mean_auc": 0.74},
        {"step": 10, "stage": "b", "val/mean_auc": 0.80},
        {"step": 20, "stage": "b", "val/mean_auc": 0.80},  # a tie: the first is kept
    ])
    assert report_plots._best_epochs(rows) == [(20, 0.75, "a"), (40, 0.80, "b")]


def test_write_report_without_a_training_log_says_so_and_still_draws(tmp_path, fake_run):
    probs, labels, results = fake_run
    report.write_report(str(tmp_path), r18_msml.get_config(), results, probs, labels)
    assert "(empty: no training log (metrics.jsonl) in this workdir)" in (
        tmp_path / "report.md").read_text()
    assert _is_png(str(tmp_path / "training_curves.png"))


def test_write_report_survives_a_corrupt_training_log_and_says_why(tmp_path, fake_run):
    probs, labels, results = fake_run
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "stage": "global", "train/lo\n')
    report.write_report(str(tmp_path), r18.get_config(), results, probs, labels)
    assert "(empty: metrics.jsonl unreadable (" in (tmp_path / "report.md").read_text()
    assert _is_png(str(tmp_path / "training_curves.png"))


def test_write_report_marks_a_one_valued_class_as_na(tmp_path):
    probs, labels = _fake_predictions(seed=1)
    labels[:, CLASSES.index("Hernia")] = 0
    with pytest.warns(RuntimeWarning):
        results = {h: metrics.summary(p, labels, n_boot=0) for h, p in probs.items()}
    report.write_report(str(tmp_path), r18_msml.get_config(), results, probs, labels)
    text = (tmp_path / "report.md").read_text()
    assert "| Hernia | 0 ⚠ | n/a | n/a | n/a | n/a | n/a |" in text
    assert "Left out of the means (one label value in the test set): Hernia." in text
    assert _is_png(str(tmp_path / "eval" / "roc_curves.png"))


def test_write_report_rejects_missing_fused_head_and_mismatched_shapes(tmp_path, fake_run):
    probs, labels, results = fake_run
    no_fused = {h: r for h, r in results.items() if h != "fused"}
    with pytest.raises(ValueError, match="'fused' head"):
        report.write_report(str(tmp_path), r18.get_config(), no_fused, probs, labels)
    with pytest.raises(ValueError, match="same"):
        report.write_report(str(tmp_path), r18.get_config(), results, probs, labels[:-1])


def test_global_steps_offsets_each_stage_and_keeps_the_last_of_resumed_steps():
    records = [
        {"step": 5, "stage": "a", "train/loss": 3.0},
        {"step": 10, "stage": "a", "train/loss": 2.0},
        {"step": 10, "stage": "a", "train/loss": 1.5},  # re-logged after a resume
        {"step": 10, "stage": "a", "val/mean_auc": 0.7},
        {"step": 5, "stage": "b", "train/loss": 1.0},
    ]
    rows, starts = report_plots._global_steps(records)
    assert starts == [(0, "a"), (10, "b")]
    train = [(r["x"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert train == [(5, 3.0), (10, 1.5), (15, 1.0)]
    assert [r["x"] for r in rows if "val/mean_auc" in r] == [10]


def test_a_runs_row_is_the_one_its_recorded_config_names():
    config = json.loads(r18_msml_local.get_config().to_json_best_effort())
    assert paper_recipe.run_row(config) == ("r18_msml_local", "config.json")
    # A row's file with another trunk is still that row, changed (the recipe lists the change).
    config["model"]["trunk_a"] = "resnet50"
    assert paper_recipe.run_row(config) == ("r18_msml_local", "config.json")
    # Named by the config, never guessed from the model: the demo's model is not r18_msml's.
    assert paper_recipe.run_row(demo.get_config().to_dict())[0] == "r18_msml"


def test_a_run_recorded_before_the_row_field_takes_its_config_files_row_or_none():
    old = json.loads(r18.get_config().to_json_best_effort())
    del old["row"]
    assert paper_recipe.run_row(old) == (None, "")
    assert paper_recipe.run_row(old, {"config_file": "configs/r18_msml.py"}) == (
        "r18_msml", "the config file's name")
    assert paper_recipe.run_row(old, {"config_file": "configs/demo.py"}) == (None, "")
    assert paper_recipe.run_row({**old, "row": None}, {"config_file": "my.py"}) == (None, "")


def test_fmt_prints_four_decimals_and_na():
    assert report.fmt(0.82391) == "0.8239"
    assert report.fmt(float("nan")) == "n/a" and report.fmt(None) == "n/a"


# ---------------------------------------------------------------------------------------------
# scripts/reproduce_tables.py
# ---------------------------------------------------------------------------------------------


def _fake_workdir(parent: pathlib.Path, name: str, config, summary: dict | None) -> pathlib.Path:
    """A workdir as train.py leaves it: config.json and eval/test_metrics.json."""
    workdir = parent / name
    (workdir / "eval").mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    if summary is not None:
        (workdir / "eval" / "test_metrics.json").write_text(json.dumps(summary, indent=2))
    return workdir


def test_reproduce_tables_puts_each_run_in_its_paper_row_beside_the_paper(
        tmp_path, fake_run, capsys):
    probs, labels, results = fake_run
    fused = {**results["fused"], "heads": {h: r for h, r in results.items() if h != "fused"}}
    # The folder name is not a config name: the row comes from config.json.
    _fake_workdir(tmp_path, "msml_seed0", r18_msml.get_config(), fused)
    baseline = metrics.summary(probs["ce"], labels, n_boot=0)
    _fake_workdir(tmp_path, "r18", r18.get_config(), baseline)
    _fake_workdir(tmp_path, "r18_msml_local", r18_msml_local.get_config(), None)
    out = tmp_path / "tables.md"
    assert reproduce_tables.main(["--runs", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    lines = text.splitlines()

    def row(prefix: str) -> list[str]:
        line = next(line for line in lines if line.startswith(f"| {prefix} |"))
        return [cell.strip() for cell in line.strip("|").split("|")]

    msml = row("R18 + R18-F-MSML")
    mean = results["fused"]["mean_auc"]
    assert msml[4] == report.fmt(mean) and msml[6] == "0.8388"
    assert msml[7] == f"{mean - 0.8388:+.4f}"
    assert msml[5] == report.ci_text(results["fused"])
    assert row("R18")[4] == report.fmt(baseline["mean_auc"]) and row("R18")[6] == "0.8239"
    assert row("D121 + VGG-F-MSML")[1] == "not run" and row("D121 + VGG-F-MSML")[6] == "0.8537"
    assert row("Global")[4] == report.fmt(mean) and row("Global")[6] == "0.8388†"
    assert row("Local")[1].endswith("no results (see below)")
    assert any(line.startswith("- `") and "no eval/test_metrics.json" in line
               and "--config configs/r18_msml_local.py" in line for line in lines)
    # Per-class table of Table 1: the columns are the runs, the values their summaries.
    header = next(line for line in lines if line.startswith("| Finding | R18 |"))
    assert header == "| Finding | R18 | R18 + R18-F-MSML |"
    cardio = results["fused"]["per_class"]["Cardiomegaly"]
    assert (f"| Cardiomegaly | {report.fmt(baseline['per_class']['Cardiomegaly'])} | "
            f"{report.fmt(cardio)} |") in lines
    assert "| AUC (paper) | 0.8239 | 0.8388 |" in lines


def test_reproduce_tables_reads_null_values_and_marks_synthetic_runs(tmp_path, fake_run, capsys):
    _, _, results = fake_run
    summary = json.loads(json.dumps(results["fused"]).replace("NaN", "null"))
    summary["per_class"]["Hernia"] = None
    config = r18.get_config()
    config.data.source = "synthetic"
    workdir = _fake_workdir(tmp_path, "demo", config, summary)
    assert reproduce_tables.main(["--runs", str(workdir)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("| R18 |"))
    assert "synthetic, paper" in line and "not comparable" in line
    assert "| Hernia | n/a |" in out
    assert not math.isnan(summary["mean_auc"])


def test_reproduce_tables_sets_a_run_off_the_recipe_apart_from_the_paper(tmp_path, fake_run,
                                                                         capsys):
    _, _, results = fake_run
    config = r18_msml.get_config()
    config.model.init = "scratch"
    config.train.stages[0].epochs = 2
    _fake_workdir(tmp_path, "r18_msml", config, results["fused"])
    assert reproduce_tables.main(["--runs", str(tmp_path / "r18_msml")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("| R18 + R18-F-MSML |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[4] == report.fmt(results["fused"]["mean_auc"]) and cells[6] == "0.8388"
    assert cells[7] == "—"  # no difference to the paper's number is printed
    assert cells[11].startswith("not the recipe, not comparable: ")
    assert "`model.init`" in cells[11] and "`train.stages[0].epochs`" in cells[11]


def test_reproduce_tables_fails_with_one_line_on_a_missing_directory(tmp_path, capsys):
    assert reproduce_tables.main(["--runs", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runs") and "no such directory" in err
    assert len(err.strip().splitlines()) == 1


def test_reproduce_tables_reports_an_unreadable_metrics_file_without_traceback(tmp_path, capsys):
    workdir = _fake_workdir(tmp_path, "r18", r18.get_config(), None)
    (workdir / "eval" / "test_metrics.json").write_text("{not json")
    assert reproduce_tables.main(["--runs", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "eval/test_metrics.json unreadable" in out
