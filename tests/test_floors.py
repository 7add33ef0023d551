"""The house's floors: an import only ever points down (or within a floor), and no module
imports itself back through others. Imports inside functions count."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "cxrjax"

# Top to bottom, as the README's floor table has them; a module is on the floor of its longest
# matching prefix.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("cxrjax.main", "cxrjax.evaluate", "cxrjax.predict", "cxrjax.localize", "cxrjax.export",
     "cxrjax.export_reference"),
    ("cxrjax.train", "cxrjax.train_step"),
    ("cxrjax.evaluation",),
    ("cxrjax.runfolder",),
    ("cxrjax.models", "cxrjax.data", "cxrjax.losses", "cxrjax.recipe", "cxrjax.config_checks",
     "cxrjax.serving"),
    ("cxrjax.io",),
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _floor(module: str) -> int | None:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[module] |= {t for t in targets if t in modules and t != module
                              and not t.endswith("__init__") and t != "cxrjax"
                              and not module.startswith(t + ".")}
    return edges


def test_every_module_has_a_floor():
    assert [m for m in _imports() if m != "cxrjax" and _floor(m) is None] == []


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Each import from a module to one on a higher floor (a smaller index)."""
    return sorted(f"{m} (floor {_floor(m)}) imports {t} (floor {_floor(t)})"
                  for m, targets in edges.items() if m != "cxrjax"
                  for t in targets if _floor(t) < _floor(m))


def test_no_import_points_up_a_floor():
    assert upward(_imports()) == []


def test_no_import_circle():
    edges, done, circles = _imports(), set(), []

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            circles.append(" -> ".join(stack[stack.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, stack + [module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    assert circles == []


def test_an_upward_import_is_caught():
    edges = {"cxrjax.io.fileio": {"cxrjax.train"}, "cxrjax.train": {"cxrjax.io.fileio"}}
    assert upward(edges) == ["cxrjax.io.fileio (floor 5) imports cxrjax.train (floor 1)"]
    assert _floor("cxrjax.evaluation.report") < _floor("cxrjax.runfolder.loading")
