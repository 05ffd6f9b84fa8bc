"""Imports go one way: no cycle in the package's module import graph.

Every ``import`` counts, function-level and ``TYPE_CHECKING`` ones too (a lazy import
hides a cycle from Python, not from the design). ``from . import x`` is an import of the
module ``x``, not of the package's ``__init__``. ``python tests/test_imports.py`` prints
the cycles of the whole package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mirai_magics"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                targets.add(sub if sub in modules else origin)
    return {t for t in targets if t in modules and t != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """Strongly connected groups (more than one module) among the modules under ``within``."""
    inside = {m for m in graph if m == within or m.startswith(within + ".")}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph[node] & inside):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(inside):
        if node not in order:
            visit(node)
    return found


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "mirai_magics.memory.admin" in graph["mirai_magics.memory.notebook"]  # in a method
    assert "mirai_magics.memory.rounds" in graph["mirai_magics.memory.indexer"]  # from . import
    assert "mirai_magics.memory" not in graph["mirai_magics.memory.indexer"]


def test_a_cycle_is_found_through_any_number_of_modules():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a", "q.d"}, "q.d": set()}
    assert cycles(graph, "p") == [["p.a", "p.b", "p.c"]]
    assert cycles(graph, "q") == []


# The whole package has no cycle today; memory/ is listed on its own because it must
# never regress while other packages are being refactored.
@pytest.mark.parametrize("package", ["mirai_magics.memory", "mirai_magics"])
def test_no_import_cycle(package):
    assert cycles(import_graph(), package) == []


if __name__ == "__main__":
    for group in cycles(import_graph(), "mirai_magics"):
        print(" ↔ ".join(group))
