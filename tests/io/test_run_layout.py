"""Every file name of a run folder is written once in the package: in cxrjax.io.run_layout."""

import ast
import pathlib

from cxrjax.io import run_layout

PACKAGE = pathlib.Path(run_layout.__file__).resolve().parents[1]
NAMES = {run_layout.CONFIG, run_layout.COMMAND, run_layout.LOCK, run_layout.METRICS_LOG,
         run_layout.TENSORBOARD, run_layout.CHECKPOINTS, run_layout.REPORT,
         run_layout.TRAINING_CURVES, run_layout.TEST_PREDICTIONS, run_layout.TEST_METRICS,
         run_layout.THRESHOLDS, run_layout.ROC_CURVES, run_layout.RELIABILITY,
         run_layout.MODEL_CARD,
         *(f"{stem}.{ext}" for stem in (run_layout.LOCALIZATION, run_layout.SUBGROUPS)
           for ext in ("json", "md", "png"))}


def _literals_naming_run_files(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text in NAMES or any(text == f"{run_layout.EVAL}/{n}" for n in NAMES):
                found.append(f"{path.relative_to(root)}:{node.lineno} {text!r}")
    return found


def test_no_module_but_run_layout_spells_a_run_file_name():
    # cxrjax.serving names the files of an export folder, imports nothing else of the package,
    # and shares a few names with a run folder: it is not a run folder's reader.
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "run_layout.py"
             and path.parent.name != "serving" for hit in _literals_naming_run_files(path)]
    assert found == []


def test_the_check_finds_a_spelled_name(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text('PATH = "eval/test_metrics.json"\nOTHER = "report.md"\n')
    assert _literals_naming_run_files(stray, tmp_path) == [
        "stray.py:1 'eval/test_metrics.json'", "stray.py:2 'report.md'"]


def test_paths_in_a_run_folder():
    assert run_layout.eval_path("gs://b/w", run_layout.TEST_METRICS) == \
        "gs://b/w/eval/test_metrics.json"
    assert run_layout.head_predictions("msml") == "test_predictions_msml.csv"
    assert run_layout.stage_dir("/w", 1, "bilinear") == "/w/checkpoints/stage1_bilinear"
