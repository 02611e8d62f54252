"""The package's modules import each other without a cycle, counting the imports inside functions (a cycle dodged
with a function-local import is still a cycle); imports only for type checkers (``if TYPE_CHECKING:``) are not
imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in (SRC / "opmeter").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, names: dict[str, Path]) -> list[str]:
    """Every module of ``names`` imported anywhere in ``tree``, outside ``if TYPE_CHECKING:`` blocks
    (``from package import submodule`` counts as the submodule)."""
    found: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("opmeter")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("opmeter"):
            found += [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else str(node.module)
                      for a in node.names]
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    names = _module_names()
    graph: dict[str, set[str]] = {m: set() for m in names}
    for module, path in names.items():
        for name in _imports(ast.parse(path.read_text()), names):
            if name in names and name != module:
                graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("planted", [("opmeter.io", "opmeter.report.run"), ("opmeter.trace.trace", "opmeter.join")])
def test_a_planted_cycle_is_found(planted: tuple[str, str]) -> None:
    graph = import_graph()
    low, high = planted  # the high module already reaches the low one; an import back closes a cycle
    graph[low] = graph[low] | {high}
    assert any(low in c and high in c for c in cycles(graph))
