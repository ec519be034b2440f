"""No import cycles among the modules of crossdistill.

The graph is read from the source, not from a running interpreter: every `import` and
`from ... import` statement counts, also those inside functions (a lazy import still makes
the two modules depend on each other; it only hides the cycle until the function runs).
Imports under `if TYPE_CHECKING:` do not count: they never run.

An edge goes to the module a statement names: `from a.b import c` names `a.b.c` when that is a
module, else `a.b`. Importing a submodule also runs its package's `__init__`, but that is not
counted (as in pylint's cyclic-import check): a package that re-exports its submodules would
otherwise form a cycle with each of them.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "crossdistill"

# Known back-edges, each a cycle that is not (yet) removed, with why it is tolerated. The test
# fails when a listed edge disappears, so that the list only ever shrinks.
# (Importing crossdistill.models.registry runs the package's __init__ first, which registers the
# built-in architectures: the registry needs no import of the package back.)
ALLOWED_EDGES: dict[tuple[str, str], str] = {}


def _module_names(src: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    """Collects the modules named by the import statements of one file."""

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in self.known:
                self.found.add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:
                self.found.add(sub)
            elif base in self.known:
                self.found.add(base)


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of `package` it imports anywhere in its source}."""
    modules = _module_names(src, package)
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        graph[name] = visitor.found - {name}
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's algorithm, iterative (the graph is small, but recursion limits are not ours).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _one_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """A shortest cycle through the first member, inside the component: for the message."""
    inside = set(members)
    start = members[0]
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & inside):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return members


def cycles(graph: dict[str, set[str]], allowed: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """One example cycle per strongly connected component, after removing the allowed edges."""
    pruned = {m: {t for t in deps if (m, t) not in allowed} for m, deps in graph.items()}
    return [_one_cycle(pruned, comp) for comp in _strongly_connected(pruned)]


# -- the package ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC, PACKAGE)


def test_no_import_cycles(graph):
    found = cycles(graph, set(ALLOWED_EDGES))
    # One cycle per group of modules that import each other; the group may hold more cycles.
    assert not found, "import cycles (one per group shown):\n" + "\n".join(" -> ".join(c) for c in found)


def test_allowed_edges_still_exist(graph):
    # A tolerated cycle that was removed must leave the list, or it would silently allow it again.
    stale = [f"{a} -> {b}" for a, b in ALLOWED_EDGES if b not in graph.get(a, set())]
    assert not stale, f"remove from ALLOWED_EDGES (the import is gone): {stale}"


def test_checkpoint_and_persistence_do_not_import_each_other(graph):
    # The persistence modules that checkpoint uses must not lead back to it (even through the
    # tolerated registry edge: they may use the registry, never checkpoint).
    pruned = {m: deps - {b for (a, b) in ALLOWED_EDGES if a == m} for m, deps in graph.items()}
    start = "crossdistill.models.checkpoint"
    seen, todo = set(), [m for m in pruned[start] if m.startswith("crossdistill.persistence")]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(pruned[node])
    assert seen, "checkpoint no longer uses persistence: update this test"
    assert start not in seen


def test_version_module_imports_nothing():
    tree = ast.parse((SRC / PACKAGE / "_version.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_persistence_names_compression_methods_only_in_codecs(graph):
    # Persistence loops over registered codecs; only a codec may know its compression method.
    offenders = {
        m: sorted(d for d in deps if d.startswith("crossdistill.compression"))
        for m, deps in graph.items()
        if m.startswith("crossdistill.persistence") and not m.startswith("crossdistill.persistence.codecs.")
    }
    assert not {m: d for m, d in offenders.items() if d}


# -- the checker itself -----------------------------------------------------------------------------


def test_checker_sees_function_level_cycles_and_ignores_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n")
    (pkg / "e.py").write_text("from pkg import d\n")
    g = import_graph(tmp_path, "pkg")
    assert g["pkg.sub.b"] == {"pkg.c"} and g["pkg"] == {"pkg.a"} and g["pkg.d"] == set()
    found = cycles(g)
    assert found == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert cycles(g, {("pkg.c", "pkg.a")}) == []
