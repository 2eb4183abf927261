"""The package's shape: no import cycles, and the core never imports its adapters.

Module-level imports only (those under ``if TYPE_CHECKING:`` and inside functions are not
edges: they run after every module is loaded)."""

from __future__ import annotations

import ast
from pathlib import Path

import payflow

SRC = Path(payflow.__file__).parent
ADAPTERS = ("payflow.web", "payflow.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The payflow modules (and packages) ``path`` imports when it is loaded."""
    found: set[str] = set()
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, ast.Import | ast.ImportFrom) else ():
            if isinstance(inner, ast.Import):
                found.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                found.add(inner.module)
                found.update(f"{inner.module}.{alias.name}" for alias in inner.names)
    return {name for name in found if name in MODULES}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def test_the_graph_is_read() -> None:
    assert "payflow.web.app" in GRAPH["payflow.daemon"]
    assert "payflow.payments.service" in GRAPH["payflow.payments.handler"]


def test_no_import_cycles() -> None:
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for nxt in sorted(GRAPH[name]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_core_never_imports_the_adapters() -> None:
    core = [name for name in GRAPH
            if not name.startswith(ADAPTERS) and name not in ("payflow.daemon", "payflow.__main__")]
    leaks = {name: sorted(n for n in GRAPH[name] if n.startswith(ADAPTERS)) for name in core}
    assert {name: found for name, found in leaks.items() if found} == {}


def test_route_modules_import_no_other_route_module() -> None:
    routes = {"payflow.web." + n for n in ("payments", "refunds", "endpoints", "events",
                                            "health", "operations", "dashboard", "docs",
                                            "openapi")}
    crossing = {name: sorted(GRAPH[name] & routes) for name in routes if name in GRAPH}
    assert {name: found for name, found in crossing.items() if found} == {}
