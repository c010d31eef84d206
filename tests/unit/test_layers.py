"""The house's layout holds: the import graph has no cycle, and no module imports one of a
layer above its own (README "Test it", layout).

Every module of the package has a layer here, from the vocabulary everyone shares up to
the edges (the command line, the admin server, the daemon's wiring, the tools). A new
module fails this test until it is given one: deciding where it sits is the point. The
engine's side and the adapters share a layer but never import each other: the engine
reaches the database and upstream only through :mod:`harvester.ports`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import harvester

PACKAGE = Path(harvester.__file__).parent

SIMULATOR_PURE = frozenset({"harvester.tools.simulator.plans",
                            "harvester.tools.simulator.answers",
                            "harvester.tools.simulator.state"})
"""The simulated upstream's part without a server: plans, answers as data, its state
(the tests' fakes import it; README "Test it", layout)."""

LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    # 0. Names and values everyone shares; nothing of the daemon.
    {"harvester", "harvester.api", "harvester.errors", "harvester.model", "harvester.dsn",
     "harvester.logs", "harvester.feed", "harvester.batching", "harvester.cadence",
     "harvester.tools", "harvester.tools.processes", "harvester.commands",
     "harvester.store.queries", "harvester.decoding", "harvester.circuit",
     "harvester.deadlines"},
    # 1. The pure core (decisions, pacing, alarms), the metrics' names, the settings.
    {"harvester.policy", "harvester.pacing", "harvester.alarms", "harvester.metrics",
     "harvester.settings", "harvester.database_faults", "harvester.refusals",
     "harvester.upstream_clock", "harvester.upstream_view", "harvester.status_policy",
     "harvester.waits", *SIMULATOR_PURE},
    # 2. The ports and the values that cross them; the operators' questions.
    {"harvester.ports", "harvester.jobquery"},
    # 3. The engine and the rooms it calls; the adapters behind the ports.
    {"harvester.engine", "harvester.follower", "harvester.controls", "harvester.observer",
     "harvester.fleet", "harvester.outage", "harvester.retention",
     "harvester.store", "harvester.store.connect", "harvester.store.queue",
     "harvester.store.listen", "harvester.store.purge", "harvester.store.operators",
     "harvester.store.mirror", "harvester.store.changes",
     "harvester.store.figures", "harvester.upstream", "harvester.migrations",
     "harvester.embedded", "harvester.private_cluster", "harvester.privileges"},
    # 4. The edges: wiring, the admin server, the command line, the tools.
    {"harvester.daemon", "harvester.admin", "harvester.admin_connections",
     "harvester.healthcheck", "harvester.cli",
     "harvester.__main__", "harvester.tools.simulator", "harvester.tools.simulator.app",
     "harvester.tools.simulator.cli", "harvester.tools.demo", "harvester.tools.bench",
     "harvester.tools.bench_mixes", "harvester.tools.benchkit",
     } | {f"harvester.commands.{path.stem}" for path in (PACKAGE / "commands").glob("*.py")
          if path.stem != "__init__"},
))
ENGINE_SIDE = frozenset({"harvester.engine", "harvester.follower", "harvester.controls",
                         "harvester.observer", "harvester.fleet", "harvester.outage",
                         "harvester.retention",
                         "harvester.policy", "harvester.pacing", "harvester.alarms",
                         "harvester.ports", "harvester.cadence", "harvester.batching",
                         "harvester.upstream_view", "harvester.status_policy",
                         "harvester.waits"})
ADAPTERS = ("harvester.store", "harvester.upstream", "asyncpg", "aiohttp")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


@cache
def imports(module: str) -> frozenset[str]:
    """Everything ``module`` imports, at the top or inside a function (a lazy import is
    still a dependency); ``from pkg import sub`` counts as the submodule."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(modules()[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules() else node.module)
    return frozenset(found)


def internal(module: str) -> set[str]:
    return {name for name in imports(module) if name in modules()}


def layer(module: str) -> int:
    for number, members in enumerate(LAYERS):
        if module in members:
            return number
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__}")


def test_every_module_has_one_layer() -> None:
    placed = [name for members in LAYERS for name in members]
    assert len(placed) == len(set(placed))
    assert set(modules()) == set(placed), set(modules()) ^ set(placed)


def test_no_module_imports_one_above_it() -> None:
    upward = [f"{module} ({layer(module)}) imports {name} ({layer(name)})"
              for module in modules() for name in internal(module)
              if layer(name) > layer(module)]
    assert not upward


PURE_CORE = frozenset({"harvester.policy", "harvester.pacing", "harvester.refusals",
                       "harvester.circuit", "harvester.cadence", "harvester.alarms",
                       "harvester.upstream_clock", "harvester.upstream_view",
                       "harvester.status_policy", "harvester.waits",
                       "harvester.tools.simulator.plans", "harvester.tools.simulator.answers"})
"""Decisions and state machines with time as an argument: no I/O, nothing of the daemon."""


def test_policy_and_pacing_import_nothing_of_the_daemon() -> None:
    for module in PURE_CORE:
        assert all(layer(name) == 0 or name in PURE_CORE for name in internal(module)), (
            module, internal(module))


def test_the_engine_side_imports_no_adapter_and_no_driver() -> None:
    for module in ENGINE_SIDE:
        crossing = {name for name in imports(module)
                    if any(name == a or name.startswith(a + ".") for a in ADAPTERS)}
        assert not crossing, (module, crossing)


def test_the_adapters_import_nothing_of_the_engine() -> None:
    adapters = [m for m in modules() if m.startswith("harvester.store") or m == "harvester.upstream"]
    rooms = ENGINE_SIDE - {"harvester.policy", "harvester.pacing", "harvester.alarms",
                           "harvester.ports", "harvester.cadence", "harvester.batching",
                           "harvester.status_policy", "harvester.waits"}
    for module in adapters:
        assert not internal(module) & rooms, (module, internal(module) & rooms)


def test_the_engine_never_loads_the_operators_statements() -> None:
    """The queue's adapter (what the engine is given) reaches connect, listen and its
    own statements only."""
    reached: set[str] = set()
    todo = ["harvester.store.queue"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(internal(module))
    assert not reached & {"harvester.store.operators", "harvester.store.figures",
                          "harvester.store.purge"}


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(internal(module)):
            if state.get(name) == "open":
                raise AssertionError(" -> ".join([*path, module, name]))
            if name not in state:
                visit(name, [*path, module])
        state[module] = "done"

    for module in sorted(modules()):
        if module not in state:
            visit(module, [])


def test_the_simulators_pure_part_loads_no_server() -> None:
    """Issue 22: plans, answers and state import no aiohttp, nor anything that does; and
    importing them through the package loads none (its server's names are lazy)."""
    reached: set[str] = set()
    todo = list(SIMULATOR_PURE)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(internal(module))
    drivers = {(module, name) for module in reached for name in imports(module)
               if name.split(".")[0] in ("aiohttp", "asyncpg")}
    assert not drivers
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from harvester.tools.simulator.plans import "
         "result_row; from harvester.tools.simulator import Mix, plan_for; "
         "import harvester.tools.simulator.answers, harvester.tools.simulator.state; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'asyncpg')))"],
        capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout == "[]\n"
