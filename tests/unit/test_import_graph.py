"""The package's import graph points one way: no cycles among visual_search modules, and the
Triton code has one home (visual_search/triton/) that imports nothing outside the package.

The graph is read with `ast` (nothing is imported), so a cycle is caught even where Python would
tolerate it today because of import order.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "visual_search"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not in functions or TYPE_CHECKING blocks)."""
    for n in body:
        if isinstance(n, ast.Import | ast.ImportFrom):
            yield n
        elif isinstance(n, ast.If):
            if not _is_type_checking(n):
                yield from _module_level(n.body)
            yield from _module_level(n.orelse)
        elif isinstance(n, ast.Try):
            for block in (n.body, n.orelse, n.finalbody, *(h.body for h in n.handlers)):
                yield from _module_level(block)
        elif isinstance(n, ast.With):
            yield from _module_level(n.body)


def _everywhere(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    for n in ast.walk(tree):
        if isinstance(n, ast.Import | ast.ImportFrom):
            yield n


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names a statement imports: `from a.b import c` is a.b.c when that is a module."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" for a in node.names] + [base]


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        imports = _module_level(tree.body) if module_level_only else _everywhere(tree)
        edges = set()
        for node in imports:
            for target in _targets(node, name, path.name == "__init__.py"):
                if target in mods and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _describe(graph: dict[str, set[str]], cycles: list[list[str]]) -> str:
    lines = []
    for comp in cycles:
        members = set(comp)
        lines += [f"{m} -> {sorted(graph[m] & members)}" for m in comp] + [""]
    return "\n".join(lines)


def test_graph_sees_the_package() -> None:
    graph = _graph(module_level_only=True)
    assert len(graph) > 50
    # A known edge, so an empty graph (a broken parser) cannot pass the cycle tests.
    assert "visual_search.gateway.generations" in graph["visual_search.gateway.admin"]


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_at_import_time() -> None:
    graph = _graph(module_level_only=True)
    cycles = _cycles(graph)
    assert not cycles, "import cycles among visual_search modules:\n" + _describe(graph, cycles)


def test_no_cycles_hidden_in_deferred_imports() -> None:
    """A function-level import may defer a heavy dependency, not hide a cycle (the old
    gateway admin -> generations -> server -> admin loop was one)."""
    graph = _graph(module_level_only=False)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (counting function-level imports):\n" + _describe(graph, cycles)


def test_package_imports_nothing_from_outside_it() -> None:
    """Imports point one way: ensemble/ (a shim), export/ and tests import the package, never back."""
    outside = ("ensemble", "export", "tests", "load_tests")
    bad = []
    for name, path in _modules().items():
        for node in _everywhere(ast.parse(path.read_text())):
            for target in _targets(node, name, path.name == "__init__.py"):
                if target.split(".")[0] in outside:
                    bad.append(f"{name}: {target}")
    assert not bad, bad


def test_python_backend_models_are_leaves() -> None:
    """The python-backend models are files Triton loads (copied by repository.py), not modules the
    package imports; they import the package."""
    graph = _graph(module_level_only=False)
    models = {m for m in graph if m.startswith("visual_search.triton.models.")}
    assert len(models) == 6, sorted(models)
    importers = {m for m, edges in graph.items() if edges & models}
    assert not importers, importers
    assert all("visual_search.triton.pbmodel" in graph[m] for m in models), {m: graph[m] for m in models}
