"""The package's layout: engine below the AnnData tools, no import circles, no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cellflow as cf

PACKAGE = Path(cf.__file__).parent
ENGINE = ("metrics", "fields", "solvers", "paths", "transport", "training", "model")
TOOLS = ("io", "datasets", "pp", "tl", "pl", "benchmark", "cli")
ANNDATA_LIBRARIES = ("anndata", "scanpy", "scvelo", "cellrank")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Modules of cellflow (dotted, below ``cellflow``) and outside libraries that ``path`` imports anywhere."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        package = []
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                (inside.add(rest) if top == "cellflow" else outside.add(top))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top, _, rest = (node.module or "").partition(".")
                if top != "cellflow":
                    outside.add(top)
                    continue
                base = rest.split(".") if rest else []
            else:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:  # "from . import x" may import a module x
                candidate = ".".join([*base, alias.name])
                inside.add(candidate if _exists(candidate) else ".".join(base))
    return {m for m in inside if m}, outside


def _exists(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _floor(dotted: str) -> str:
    return dotted.split(".")[0].lstrip("_") if dotted else ""


@pytest.mark.parametrize("package", ENGINE)
def test_the_engine_knows_no_anndata_and_no_tool(package):
    for name, path in MODULES.items():
        if _floor(name) != package:
            continue
        inside, outside = _imports(path)
        assert not outside & set(ANNDATA_LIBRARIES), f"cellflow.{name} imports {outside & set(ANNDATA_LIBRARIES)}"
        tools = {m for m in inside if _floor(m) in TOOLS}
        assert not tools, f"cellflow.{name} (engine) imports the tool modules {sorted(tools)}"


def test_packages_import_each_other_without_circles():
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        inside, _ = _imports(path)
        graph.setdefault(_floor(name), set()).update(_floor(m) for m in inside if _floor(m) != _floor(name))
    graph.pop("", None)
    for links in graph.values():
        links.discard("")
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, f"import circle between packages: {' -> '.join((*trail, node))}"
        if node in done:
            return
        for other in sorted(graph.get(node, ())):
            visit(other, (*trail, node))
        done.add(node)

    for node in sorted(graph):
        visit(node, ())


def test_modules_import_each_other_without_circles():
    graph = {name: {m for m in _imports(path)[0] if m in MODULES and m != name} for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, f"import circle: {' -> '.join((*trail, node))}"
        if node in done:
            return
        for other in sorted(graph[node]):
            visit(other, (*trail, node))
        done.add(node)

    for node in sorted(graph):
        visit(node, ())


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_only_package_faces_are_public():
    public = [name for name in MODULES if any(part and not part.startswith("_") for part in name.split(".")[1:])]
    assert not public, f"modules outside a package's __init__ without a leading underscore: {public}"
