"""Imports point one way: no circle among rankgym's modules, and no layer imports one above it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# from the top down; a module may import its own layer and the ones below it, never one above
LAYERS = [
    {"rankgym.cli", "rankgym.agents", "rankgym.harness", "rankgym.allocate", "rankgym.headroom", "rankgym.report", "rankgym.bench"},
    {"rankgym.run", "rankgym.steplog", "rankgym.promotion", "rankgym.registry", "rankgym.ray_pool"},
    {"rankgym.envs", "rankgym.strategies"},
    {"rankgym.evaluators"},
    {"rankgym.training"},
    {"rankgym.lora", "rankgym.rankmap", "rankgym.backbones", "rankgym.tasks", "rankgym.instruct", "rankgym.budget", "rankgym.store"},
    {"rankgym.core", "rankgym.taskdata", "rankgym.metrics", "rankgym.recipe", "rankgym.files", "rankgym.errors", "rankgym.defaults"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "rankgym").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    for path in (ROOT / "agents").glob("*.py"):
        found["rankgym.agents" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The rankgym modules ``path`` imports, at the top or inside a function (lazy imports count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rankgym"):
            out |= {t for t in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if t in known}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
    return out - {"rankgym"}  # the package's __init__ only registers the env ids and names the API lazily


def layer_of(module: str) -> int:
    for depth, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return depth
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(p, set(found)) - {m} for m, p in found.items() if m != "rankgym"}


def test_no_import_circle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [module, target]) if target in path
                            else f"import circle through {module} -> {target}")
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if layer_of(t) < layer_of(m) and not (m.startswith("rankgym.agents") and t.startswith("rankgym.agents"))]
    assert not upward, upward
