"""The import graph of alignlab: no circle between modules or between packages, losses import
nothing of ours but `ops`, and nothing but the lab itself and the CLI (which dispatches
`alignlab lab ...`) imports `alignlab.lab`. Static (ast), counting every import: module level, inside functions, and under
`if TYPE_CHECKING:` (a type-only circle is still a circle a reader has to untangle)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "alignlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(module: str, path: Path) -> set[str]:
    """The alignlab modules `module` imports (a name imported from a package counts as its
    submodule when there is one of that name)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("alignlab") and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


GRAPH = {module: imported(module, path) for module, path in MODULES.items()}


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_circle_between_modules():
    assert circles(GRAPH) == []


def test_no_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        for target in targets:
            a, b = package(module), package(target)
            if a != b and "." in a and "." in b:
                graph.setdefault(a, set()).add(b)
    assert circles(graph) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("alignlab.losses")))
def test_losses_import_only_ops(module):
    assert GRAPH[module] <= {"alignlab.ops", "alignlab.losses"} | {
        m for m in MODULES if m.startswith("alignlab.losses")
    }


def test_the_core_does_not_import_the_lab():
    core = [m for m in GRAPH if package(m) not in ("alignlab.lab", "alignlab.cli")]
    offenders = {m: sorted(t for t in GRAPH[m] if package(t) == "alignlab.lab") for m in core}
    assert {m: t for m, t in offenders.items() if t} == {}
