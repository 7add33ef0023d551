"""The house's size floors: no module under cxrjax/ or scripts/ over 400 lines, no function over
60 lines (its signature, docstring and body), config literals excepted by name."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions that are one literal config (a table of settings, not logic), as "path::name".
CONFIG_LITERALS = {"cxrjax/recipe.py::base_config"}


def _modules() -> list[pathlib.Path]:
    return sorted(p for folder in ("cxrjax", "scripts") for p in (ROOT / folder).rglob("*.py"))


def long_functions(source: str, where: str) -> list[str]:
    """``where::name (N lines)`` for each function or method of ``source`` over the limit."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            name = f"{where}::{node.name}"
            if lines > MAX_FUNCTION_LINES and name not in CONFIG_LITERALS:
                found.append(f"{name} ({lines} lines)")
    return found


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == []


def test_no_function_is_over_60_lines():
    long = [f for p in _modules()
            for f in long_functions(p.read_text(), str(p.relative_to(ROOT)))]
    assert long == []


def test_a_long_function_is_caught_and_a_config_literal_is_not():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    method = body.replace("    x", "        x")
    source = (f"def base_config():\n{body}    y = 0\n\n"
              f"class A:\n    def step(self):\n{method}        y = 0\n\n"
              f"def short():\n{body}")
    assert long_functions(source, "cxrjax/recipe.py") == [
        f"cxrjax/recipe.py::step ({MAX_FUNCTION_LINES + 1} lines)"]
    assert long_functions(source, "cxrjax/other.py") == [
        f"cxrjax/other.py::base_config ({MAX_FUNCTION_LINES + 1} lines)",
        f"cxrjax/other.py::step ({MAX_FUNCTION_LINES + 1} lines)"]
