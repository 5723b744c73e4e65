"""The layout is the architecture: these tests read ``gateway/``'s imports and sizes from its
source, so the rules in README's "Architecture" section stay true as the code grows.

Layers, bottom to top (a module imports only from its own layer or below; inside a layer, the
packages' imports form no cycle):

0. ``errors``, ``records``, ``limit_spec``, ``money``, ``utc``, ``clock``, ``protocol``, ``metrics``,
   ``inference`` (the typed request) — plain types and values
1. ``config/``, ``settings`` — configuration files and process settings, validated
2. ``store/`` — the database
3. ``routing/``, ``admission/``, ``metering/``, ``tenancy/``, ``reporting/``, ``billing/``,
   ``reconcile/``, ``supervisor`` — subsystems
4. ``serving/`` — the request path: proxy, exchange, relay, upstream client
5. ``state`` — what the lifespan built
6. ``api/`` — the routes
7. ``app``, then ``server``, ``connections`` and ``workers`` (uvicorn, the bounds on client
   connections, several worker processes), then ``cli/``
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

LAYERS: list[set[str]] = [
    {
        "errors",
        "records",
        "limit_spec",
        "money",
        "utc",
        "clock",
        "protocol",
        "metrics",
        "inference",
    },
    {"config", "settings"},
    {"store"},
    {"routing", "admission", "metering", "tenancy", "reporting", "billing", "reconcile", "supervisor"},
    {"serving"},
    {"state"},
    {"api"},
    {"app"},
    {"connections", "server", "workers"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(GATEWAY.rglob("*.py"))}


def _imports(path: Path, top_level_only: bool = False) -> Iterator[str]:
    """Every ``gateway``/``engines`` module ``path`` imports (``TYPE_CHECKING`` ones too: a
    cycle that only type checking sees is still a cycle in the design)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` imports the module ``pkg.sub`` when there is one.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _unit(module: str) -> str:
    """``gateway.routing.pool`` → ``routing``; ``gateway.app`` → ``app``."""
    return module.split(".")[1]


def _layer(module: str) -> int:
    unit = _unit(module)
    return next(i for i, names in enumerate(LAYERS) if unit in names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path):
            while target and target not in modules:  # ``gateway.x.name`` → ``gateway.x``
                target = target.rpartition(".")[0]
            if target.startswith("gateway.") and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_every_module_belongs_to_a_layer() -> None:
    known = set().union(*LAYERS)
    assert sorted({_unit(m) for m in _modules() if m != "gateway"} - known) == []


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = [
        f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})"
        for name, deps in _graph().items()
        if name != "gateway"
        for dep in deps
        if _layer(dep) > _layer(name)
    ]
    assert upward == []


def test_modules_import_each_other_in_no_cycle() -> None:
    assert _cycle(_graph()) is None


def test_packages_import_each_other_in_no_cycle() -> None:
    packages: dict[str, set[str]] = {}
    for name, deps in _graph().items():
        if name != "gateway":
            packages.setdefault(_unit(name), set()).update(_unit(d) for d in deps if _unit(d) != _unit(name))
    assert _cycle(packages) is None


def test_the_gateway_does_not_need_the_engines_package_to_serve() -> None:
    """The gateway image ships without engines/: only ``gateway up`` (cli/embedded, imported when
    that command runs) launches engines, and nothing ``gateway serve`` loads imports them."""
    modules = _modules()
    importers = sorted(n for n, p in modules.items() if any(i.startswith("engines") for i in _imports(p)))
    assert importers == ["gateway.cli.embedded"]
    loaded, todo = set(), ["gateway.server", "gateway.cli.main"]
    while todo:
        name = todo.pop()
        if name in loaded:
            continue
        loaded.add(name)
        for target in _imports(modules[name], top_level_only=True):
            while target and target not in modules and target.startswith("gateway"):
                target = target.rpartition(".")[0]
            todo += [target] if target in modules else []
    assert "gateway.app" in loaded
    assert "gateway.cli.embedded" not in loaded


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_and_function_sizes(name: str) -> None:
    path = _modules()[name]
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{path}: functions over {MAX_FUNCTION_LINES} lines"
