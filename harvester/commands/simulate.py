"""``harvester simulate``: a simulated justcrawl API on loopback
(:mod:`harvester.tools.simulator`, its running part :mod:`harvester.tools.simulator.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

from harvester.commands import options
from harvester.settings import Settings


def add_parser(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="serve a simulated upstream on loopback",
                         description="Serve a simulated justcrawl API (same paths, statuses, "
                                     "headers and bodies) with a configurable mix of behaviours. "
                                     "Point the daemon at it with HARVESTER_API_BASE_URL.")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    sim.add_argument("--mix", default="demo",
                     help="preset: first-poll, pending, demo, chaos (default demo)")
    sim.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a mix field, e.g. --set stuck=0.1 --set retry_after=2, "
                          "--set clock_skew=-20 (its clock 20 s behind the machine's)")
    sim.add_argument("--token", default="sim-token",
                     help="the bearer token it accepts ('' accepts any)")
    sim.add_argument("--no-record", action="store_true",
                     help="keep counters only, not a log of every request")
    options.add_logging(sim)
    sim.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from harvester.tools.simulator.cli import cmd_simulate  # noqa: PLC0415 - loads aiohttp's server

    return cmd_simulate(args)
