"""The simulated upstream: the justcrawl API's paths, statuses, headers and bodies.

A small package, its pure part apart from its server:

- :mod:`.plans`: the mixes (:class:`Mix`), each job's deterministic plan
  (:func:`plan_for`, :class:`Step`, :class:`Plan`) and the rows it serves
  (:func:`result_row`). Pure; the tests' in-memory fakes import it.
- :mod:`.answers`: a table from a step's kind to its response, and the Retry-After
  headers of waits and pauses. Pure.
- :mod:`.state`: what it remembers while serving (records, gateway, counters).
- :mod:`.app`: the aiohttp application (:class:`Simulator`, :func:`serve`).
- :mod:`.cli`: ``harvester simulate``'s running part.

The tests, the demo and the benchmark use it; so can anyone trying the daemon without a
token. The names below are importable from here as before the package; the server's
load aiohttp only when first asked for, so importing the pure part stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harvester.tools.simulator.plans import (
    DOMAINS,
    ORG_ID,
    PAUSE_STYLES,
    RETRY_AFTER_STYLES,
    ROW_NAMESPACE,
    SIM_TOKEN,
    Mix,
    Plan,
    Step,
    parse_overrides,
    plan_for,
    result_row,
)

if TYPE_CHECKING:
    from harvester.tools.simulator.answers import EARLY_TOLERANCE
    from harvester.tools.simulator.app import Simulator, serve
    from harvester.tools.simulator.cli import cmd_simulate
    from harvester.tools.simulator.state import Gateway, JobRecord, Served, SimulatorState

__all__ = ["DOMAINS", "EARLY_TOLERANCE", "ORG_ID", "PAUSE_STYLES", "RETRY_AFTER_STYLES",
           "ROW_NAMESPACE", "SIM_TOKEN", "Gateway", "JobRecord", "Mix", "Plan", "Served",
           "Simulator", "SimulatorState", "Step", "cmd_simulate", "parse_overrides",
           "plan_for", "result_row", "serve"]

_LAZY = {"EARLY_TOLERANCE": "answers", "Simulator": "app", "serve": "app",
         "cmd_simulate": "cli", "Gateway": "state", "JobRecord": "state", "Served": "state",
         "SimulatorState": "state"}


def __getattr__(name: str) -> Any:
    """The server's names, imported on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module  # noqa: PLC0415

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
