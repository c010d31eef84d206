"""``harvester healthcheck``: the image's HEALTHCHECK, asking the admin server of the
daemon beside it (:mod:`harvester.healthcheck` finds where it listens)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvester import healthcheck
from harvester.commands import options
from harvester.commands import run as daemon
from harvester.settings import Settings


def add_parser(sub: Any) -> None:
    hc = sub.add_parser("healthcheck", help="ask the running daemon's admin server (HEALTHCHECK)",
                        description="Exit 0 if the admin server of the `harvester run` beside "
                                    "it answers /healthz (or /readyz with --ready) with 2xx, "
                                    "else 1. It asks where that daemon listens: "
                                    "HARVESTER_ADMIN_HOST/PORT (environment, .env), then the "
                                    "daemon's own --admin-host/--admin-port (read from /proc), "
                                    "then the flags given here; 0.0.0.0 and :: are asked on "
                                    "loopback.")
    hc.add_argument("--admin-host", dest="admin_host", metavar="HOST")
    hc.add_argument("--admin-port", dest="admin_port", type=int, metavar="PORT")
    hc.add_argument("--ready", action="store_true",
                    help="ask /readyz (database reachable, auth circuit closed)")
    hc.add_argument("--timeout", type=options.seconds, default=4.0, metavar="SECONDS")
    hc.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    found = healthcheck.find_daemon_argv()
    if found is not None:
        # The daemon's settings: the same environment and .env, its flags, then ours.
        merged = vars(_daemon_parser().parse_args(found))
        merged.update({name: getattr(args, name) for name in ("admin_host", "admin_port")
                       if getattr(args, name) is not None})
        settings = options.settings_from(argparse.Namespace(**merged))
    return healthcheck.cmd_healthcheck(settings, args.ready, args.timeout, sys.stdout)


def _daemon_parser() -> argparse.ArgumentParser:
    """The command line of ``harvester run``, to read a running daemon's flags."""
    parser = argparse.ArgumentParser(prog="harvester")
    daemon.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser
