"""Tests of cxrjax.recipe and the config files built on it: they load from any directory."""

import ast
import glob
import os
import shutil
import subprocess
import sys

from cxrjax import recipe

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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
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
    row = recipe.f_msml(recipe.base_config())
    assignments = _literal_assignments(os.path.join(ROOT, "configs", "demo.py"))
    assert len(assignments) >= 10
    for field, value in assignments.items():  # e.g. "c.train.stages[0].epochs"
        assert eval(field, {"c": row}) != value, f"demo.py repeats {field} = {value!r}"


def test_the_f_msml_row_adds_a_second_stream_of_the_same_trunk():
    c = recipe.densenet121_streams(recipe.f_msml(recipe.base_config()))
    assert (c.model.trunk_a, c.model.trunk_b, c.model.head_b) == (
        "densenet121", "densenet121", "msml")
    assert c.model.bilinear_reduce == 256
    assert dict(c.train.stages[0].loss_weights) == {"ce": 0.2, "msml": 0.2, "fce": 0.6}
