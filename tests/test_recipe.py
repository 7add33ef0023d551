"""Tests of cxrjax.recipe, its table of the paper's rows, and the config files built on it."""

import ast
import glob
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest

from cxrjax import config_checks, recipe
from cxrjax.runfolder import ownership as workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if not p.endswith("__init__.py"))


def _imported_modules(path: str) -> list[str]:
    tree = ast.parse(open(path).read())
    return [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names] + [
        node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]


def test_every_config_file_imports_only_the_installed_package():
    assert len(CONFIG_FILES) >= 14
    for path in CONFIG_FILES:
        modules = _imported_modules(path)
        assert modules and all(m == "cxrjax" or m.startswith("cxrjax.") for m in modules), (
            path, modules)


def test_a_config_copied_elsewhere_loads_from_another_directory(tmp_path):
    """--config /elsewhere/my_config.py from an unrelated cwd, with an override of a field the
    data floor reads (locked configs refuse undeclared ones); stopped by an unusable workdir."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cwd").mkdir()
    config = tmp_path / "elsewhere" / "my_config.py"
    shutil.copy(os.path.join(ROOT, "configs", "demo.py"), config)
    (tmp_path / "a_file").write_text("")
    # This checkout's package alone on the path (not the repository root: no ``configs``).
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "cxrjax").symlink_to(os.path.join(ROOT, "cxrjax"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "path")}
    proc = subprocess.run(
        [sys.executable, "-m", "cxrjax.main", "--config", str(config),
         "--config.data.synthetic_seed=1", "--config.data.prepare_workers=1",
         "--workdir", str(tmp_path / "a_file" / "run")],
        cwd=tmp_path / "cwd", env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot write to {tmp_path / 'a_file' / 'run'}: {tmp_path / 'a_file'} is a file, "
        "not a folder")


def _literal_assignments(path: str) -> dict[str, object]:
    """``c.<field> = <literal>`` statements of a config file: {"c.<field>": value}."""
    out = {}
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            try:
                out[ast.unparse(node.targets[0])] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def test_the_demo_sets_only_values_that_differ_from_its_row():
    row = recipe.row("r18_msml")
    assignments = _literal_assignments(os.path.join(ROOT, "configs", "demo.py"))
    assert len(assignments) >= 10
    for field, value in assignments.items():  # e.g. "c.train.stages[0].epochs"
        assert eval(field, {"c": row}) != value, f"demo.py repeats {field} = {value!r}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_each_config_file_is_its_rows_build_plus_its_overrides(path):
    """A config names its row (config.row) and sets only its literal overrides on top: applying
    them to the row's build gives the config, field for field and in the same order."""
    config = runpy.run_path(path)["get_config"]()
    assert config.row in recipe.row_names()
    expected = recipe.row(config.row)
    for field, value in _literal_assignments(path).items():
        exec(f"{field} = {value!r}", {"c": expected})
    assert config.to_json_best_effort() == expected.to_json_best_effort()


def test_a_row_is_built_by_its_transforms_in_order_and_records_its_name():
    c = recipe.row("d121_msml")
    assert c.row == "d121_msml"
    assert (c.model.trunk_a, c.model.trunk_b, c.model.head_b) == (
        "densenet121", "densenet121", "msml")
    assert c.model.bilinear_reduce == 256
    assert dict(c.train.stages[0].loss_weights) == {"ce": 0.2, "msml": 0.2, "fce": 0.6}
    fixed = recipe.row("r18_msml_local_fixed").train.stages
    assert [s.name for s in fixed] == ["streams", "bilinear"]
    assert fixed[1].trainable == "^(?!trunk_).*"
    assert recipe.base_config().row is None  # the bare recipe names no row


def test_only_rows_that_are_one_config_build():
    assert "r18_d121_ensemble" in recipe.ROWS and "r18_d121_ensemble" not in recipe.row_names()
    with pytest.raises(ValueError, match="'r18_d121_ensemble': not a config row"):
        recipe.row("r18_d121_ensemble")
    with pytest.raises(ValueError, match="'r19': not a config row"):
        recipe.row("r19")


def test_a_config_naming_an_unknown_row_is_a_one_line_config_error():
    config = recipe.row("r18")
    config.row = "r18_msmll"
    with pytest.raises(config_checks.ConfigError, match=r"^row='r18_msmll': not a row of the "):
        config_checks.check_config(config)
    config.row = None  # no paper row: allowed
    config_checks.check_config(config)


def test_a_run_recorded_before_the_row_field_resumes_and_loads_without_a_row(tmp_path):
    old = json.loads(recipe.row("r18_msml").to_json_best_effort())
    del old["row"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    from cxrjax.runfolder import loading as runs

    loaded = runs.load_config(str(tmp_path))
    assert loaded.row is None
    config_checks.check_config(loaded)
    refused, allowed = workdir.compare_configs(loaded, recipe.row("r18_msml"))
    assert refused == [] and allowed == ['row null -> "r18_msml"']
