"""The package's house plan (docs/architecture.md): modules import only downward and never in a cycle.

Every `import` statement of every module is read with `ast`, including imports inside functions, relative imports
and package `__init__` re-exports, so a cycle hidden in a function body fails here as well as one at module level.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "tinygptv_hf"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Floors from the ground up; a module may import only from its own floor or below. Longest prefix wins.
FLOORS = {
    PACKAGE: 0,  # the package's __init__ re-exports the remote-code classes only
    f"{PACKAGE}.modeling": 0,
    f"{PACKAGE}.processors": 0,
    f"{PACKAGE}.weights": 1,
    f"{PACKAGE}.tokenization": 1,
    f"{PACKAGE}.presets": 1,
    f"{PACKAGE}.grounding": 1,
    f"{PACKAGE}.stages": 1,
    f"{PACKAGE}.checkpoint": 2,
    f"{PACKAGE}.data": 2,
    f"{PACKAGE}.trainers": 2,
    f"{PACKAGE}.evaluation": 2,
    f"{PACKAGE}.metrics": 2,
    f"{PACKAGE}.chat": 2,
    f"{PACKAGE}.conversion": 3,
    f"{PACKAGE}.cards": 3,
    f"{PACKAGE}.publishing": 4,
    f"{PACKAGE}.commands": 5,
    f"{PACKAGE}.demo": 5,
    f"{PACKAGE}.cli": 5,
}
REMOTE_CODE = (f"{PACKAGE}.modeling", f"{PACKAGE}.processors")


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(SOURCE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    base = importer if is_package(importer) else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def imported_modules(importer: str) -> set[str]:
    """The package modules `importer` loads, directly or as the parent packages Python runs first."""
    targets = set()
    for node in ast.walk(ast.parse(MODULES[importer].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve(importer, node)
            # `from package import name` loads the submodule `name` when there is one.
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in MODULES:
                # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer already lives there.
                inside = set(ancestors(importer)) | {importer}
                targets |= {name, *ancestors(name)} - inside
    return {target for target in targets if target.split(".")[0] == PACKAGE} - {importer}


GRAPH = {name: imported_modules(name) for name in MODULES}


def floor(name: str) -> int:
    prefix = max((prefix for prefix in FLOORS if name == prefix or name.startswith(prefix + ".")), key=len)
    return FLOORS[prefix]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    assert f"{PACKAGE}.trainers.trainer" in GRAPH[f"{PACKAGE}.trainers.recipe"]  # inside run_recipe
    # `from . import loaders`
    assert f"{PACKAGE}.evaluation.loaders" in GRAPH[f"{PACKAGE}.evaluation.benchmarks"]
    assert f"{PACKAGE}.trainers" in GRAPH[f"{PACKAGE}.cards"]  # the package __init__ runs first


def test_find_cycle_reports_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_every_module_has_a_floor():
    assert all(floor(name) >= 0 for name in MODULES)


@pytest.mark.parametrize("importer", sorted(MODULES))
def test_modules_import_only_their_floor_or_below(importer):
    upward = sorted(target for target in GRAPH[importer] if floor(target) > floor(importer))
    assert not upward, f"{importer} (floor {floor(importer)}) imports {upward} from above"


@pytest.mark.parametrize("importer", sorted(name for name in MODULES if name.startswith(REMOTE_CODE)))
def test_remote_code_imports_nothing_else_of_the_package(importer):
    own_folder = importer if is_package(importer) else importer.rpartition(".")[0]
    outside = sorted(target for target in GRAPH[importer] if not target.startswith(own_folder))
    assert not outside, f"{importer} ships as remote code but imports {outside}"
