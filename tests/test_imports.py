"""The import graph of the `generator` package: no module imports itself round a circle.

The graph is read from the source with `ast` (every `import` and `from ... import` naming a module
of the package, at the top of a module or inside a function alike: an import deferred into a
function still ties the two modules together). Run this file as a script to print the graph:

    python tests/test_imports.py            # one line per module: what it imports
    python tests/test_imports.py --dot      # the same as Graphviz input
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "generator"


def _target(module: str, node: ast.ImportFrom, alias: ast.alias, names: set[str]) -> list[str]:
    """The package modules one `from ... import` names (`from . import x` names module x)."""
    if node.level == 0:
        if not (node.module or "").startswith("generator"):
            return []
        base = node.module.split(".")[1:]
    else:
        base = (node.module or "").split(".") if node.module else []
    if base:
        return [base[0]] if base[0] in names else []
    return [alias.name] if alias.name in names else []


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (names without `generator.`)."""
    names = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        module = path.stem
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    edges.update(_target(module, node, alias, names))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "generator" and len(parts) > 1 and parts[1] in names:
                        edges.add(parts[1])
        edges.discard("__init__")
        graph[module] = edges - {module} if module == "__init__" else edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    # Known edges, so a broken reader (an empty graph) cannot pass the test below.
    assert "schema" in graph["render"] and "store" in graph["schema"]
    assert "render" in graph["cli"] and "compute" in graph["cli"]
    # A made-up circle is found.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_generator_has_no_import_circle():
    found = cycles(import_graph())
    assert not found, f"import circles in generator/: {found}"


def test_render_and_export_do_not_import_each_other():
    graph = import_graph()
    assert "export" not in graph["render"], "render must not call the export command's module"
    assert "render" not in graph["export"], "export reads the manifest render wrote, not render"


def test_the_readme_layout_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text("utf-8")
    section = readme[readme.index("## Layout"):].split("\n## ", 1)[0]
    missing = [p.name for p in sorted(PACKAGE.glob("*.py"))
               if p.name != "__init__.py" and f"`{p.name}`" not in section]
    assert not missing, f"README.md's Layout does not say what these modules do: {missing}"


if __name__ == "__main__":
    graph = import_graph()
    if "--dot" in sys.argv:
        print("digraph generator {")
        for module, edges in sorted(graph.items()):
            for target in sorted(edges):
                print(f'  "{module}" -> "{target}";')
        print("}")
    else:
        for module, edges in sorted(graph.items()):
            print(f"{module:10} -> {', '.join(sorted(edges)) or '-'}")
        print("circles:", cycles(graph) or "none")
