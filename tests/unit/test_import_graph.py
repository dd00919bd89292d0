"""The project's import graph, read from source with ``ast`` (nothing is imported):

* no two modules import each other, at module level or inside a function;
* no cycle of any length among module-level imports (an import inside a function is the legitimate
  way to defer a dependency, so longer cycles count only top-level imports);
* layering: server/ never imports torch or diffusers (the API process stays light), pipelines/
  never imports fastapi or server (the engine knows nothing of HTTP).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "pipelines", "benchmarks")
FORBIDDEN = {"server": ("torch", "diffusers"), "pipelines": ("fastapi", "server")}


@dataclass(frozen=True)
class Import:
    target: str  # dotted name: a project module, or the name as written for anything else
    top_level: bool  # runs when the importing module loads (not inside a function)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_package(name: str) -> bool:
    path = modules().get(name)
    return path is not None and path.name == "__init__.py"


def _resolve_from(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of ``from <...> import`` in ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    # a package's own ``from . import`` is relative to itself, a module's to its package
    keep = len(base) - node.level + (1 if _is_package(module) else 0)
    assert keep > 0, f"{module}: relative import beyond the top package"
    return ".".join(base[:keep] + ([node.module] if node.module else []))


def _in_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(modules()[module].read_text(), filename=str(modules()[module]))
    out: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested_top = top_level
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                nested_top = False
            elif isinstance(child, ast.If) and _in_type_checking(child):
                nested_top = False  # never runs: no load-order cycle, still a mutual import
            if isinstance(child, ast.Import):
                out.extend(Import(alias.name, top_level, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                source = _resolve_from(module, child)
                for alias in child.names:
                    # ``from pkg import name`` imports the module pkg.name when there is one
                    candidate = f"{source}.{alias.name}"
                    target = candidate if candidate in modules() else source
                    out.append(Import(target, top_level, child.lineno))
            visit(child, nested_top)

    visit(tree, True)
    return out


def _project_target(name: str) -> str | None:
    """The project module an import name loads (``import a.b.c`` of a package ``a.b``: a.b)."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, dict[str, list[Import]]]:
    """module -> project module it imports -> the import statements (self-imports left out)."""
    edges: dict[str, dict[str, list[Import]]] = {}
    for module in modules():
        edges[module] = {}
        for imp in imports_of(module):
            target = _project_target(imp.target)
            if target is not None and target != module:
                edges[module].setdefault(target, []).append(imp)
    return edges


def mutual_imports(edges: dict[str, dict[str, list[Import]]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets if a < b and a in edges.get(b, {}))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges.get(child, ())))))
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
    return sorted(found)


def _where(edges, a: str, b: str) -> str:
    lines = sorted({imp.line for imp in edges[a][b]})
    return f"{modules()[a].relative_to(ROOT)}:" + ",".join(map(str, lines))


def test_the_graph_sees_every_package_and_lazy_imports():
    edges = graph()
    assert {"server.app", "server.store.sqlite", "pipelines.engine", "benchmarks.queue_load"} <= set(edges)
    # resolved relative imports: server/app.py imports ``.store`` and ``.pods``
    assert {"server.store", "server.pods"} <= set(edges["server.app"])
    # an import inside a function counts, marked as such (the store is opened lazily for Redis)
    assert any(not imp.top_level for imp in edges["server.store"]["server.store.redis_store"])


def test_the_checks_name_a_mutual_import_and_a_longer_cycle():
    fake = {"a": {"b": []}, "b": {"a": [], "c": []}, "c": {"d": []}, "d": {"c": [], "e": []}, "e": {"c": []}}
    assert mutual_imports(fake) == [("a", "b"), ("c", "d")]
    assert strongly_connected({m: set(t) for m, t in fake.items()}) == [["a", "b"], ["c", "d", "e"]]


def test_no_two_modules_import_each_other():
    edges = graph()
    pairs = [f"{a} <-> {b} ({_where(edges, a, b)}; {_where(edges, b, a)})" for a, b in mutual_imports(edges)]
    assert not pairs, "modules that import each other:\n" + "\n".join(pairs)


def test_no_import_cycle_at_module_level():
    edges = graph()
    top = {
        m: {t for t, imps in targets.items() if any(i.top_level for i in imps)}
        for m, targets in edges.items()
    }
    cycles = [" -> ".join(component) for component in strongly_connected(top)]
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_layering():
    problems = []
    for module in modules():
        package = module.split(".")[0]
        for imp in imports_of(module):
            top = imp.target.split(".")[0]
            if top in FORBIDDEN.get(package, ()):
                problems.append(f"{modules()[module].relative_to(ROOT)}:{imp.line} imports {imp.target}")
    assert not problems, "layering broken:\n" + "\n".join(problems)
