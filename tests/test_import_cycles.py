"""The package has no import cycles, and compile/ never reaches up into ingest/.

The graph is built statically with ``ast`` so the test needs none of the
package's heavy dependencies (torch, tvm, onnxruntime) and sees imports that
only run inside functions too: a cycle hidden in a function body is still a
cycle between the two modules' jobs, and it still breaks when the import order
changes. Imports under ``if TYPE_CHECKING:`` are skipped, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "repfx_deploy"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except the body of
    ``if TYPE_CHECKING:`` blocks (their ``else:`` branch does run)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _targets(
    module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]
) -> set[str]:
    """The package modules one import statement loads, as edges from ``module``.

    ``import a.b.c`` names a.b.c (its parents run too, but they are reached
    through their own edges). ``from a.b import c`` names a.b.c when that is a
    submodule, else a.b, the module that must run to give ``c``.
    """
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                owner = _owner(alias.name, modules)
                if owner:
                    out.add(owner)
        return out

    if node.level:
        # The package a relative import is resolved against: the module's own
        # package, or the package itself for an __init__.py.
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return out
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in modules:
            out.add(sub)
        else:
            owner = _owner(source, modules)
            if owner:
                out.add(owner)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            graph[name] |= _targets(name, path, node, modules)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so deep chains cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"    {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_strongly_connected_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    components = {tuple(c) for c in _strongly_connected(graph)}
    assert ("a", "b", "c") in components
    assert ("d",) in components and ("e",) in components


def test_relative_and_submodule_imports_resolve_to_modules():
    modules = {
        "repfx_deploy": Path("repfx_deploy/__init__.py"),
        "repfx_deploy.compile": Path("repfx_deploy/compile/__init__.py"),
        "repfx_deploy.compile.host": Path("repfx_deploy/compile/host.py"),
        "repfx_deploy.spec": Path("repfx_deploy/spec.py"),
    }
    code = (
        "from . import host\n"
        "from ..spec import ModelSpec\n"
        "from repfx_deploy.compile import host, missing\n"
        "def f():\n    import repfx_deploy.spec\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from repfx_deploy import recipe\n"
    )
    path = modules["repfx_deploy.compile"]
    edges: set[str] = set()
    for node in _imports(ast.parse(code)):
        edges |= _targets("repfx_deploy.compile", path, node, modules)
    assert edges == {
        "repfx_deploy.compile.host",
        "repfx_deploy.spec",
        "repfx_deploy.compile",
    }


def test_package_import_cycles_none():
    graph = _graph()
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    self_loops = sorted(name for name, deps in graph.items() if name in deps)
    message = "\n\n".join(_describe(c, graph) for c in cycles)
    if self_loops:
        message += "\n\nmodules importing themselves: " + ", ".join(self_loops)
    assert not cycles and not self_loops, message


def test_compile_imports_of_ingest_none():
    graph = _graph()
    prefix = f"{PACKAGE}.compile"
    bad = sorted(
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name == prefix or name.startswith(prefix + ".")
        for dep in deps
        if dep == f"{PACKAGE}.ingest" or dep.startswith(f"{PACKAGE}.ingest.")
    )
    assert not bad, "compile/ must not import ingest/ (a lower layer reaching up):\n" + "\n".join(
        bad
    )
