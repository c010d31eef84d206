"""``harvester run``: the daemon (:mod:`harvester.daemon` wires it; this is its command line)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from harvester.commands import options
from harvester.errors import UserError
from harvester.settings import Settings


def add_parser(sub: Any) -> None:
    daemon = sub.add_parser("run", help="the daemon: poll due jobs and mirror landed rows",
                            description="Run the daemon. Applies pending migrations first (under an "
                                        "advisory lock) unless --no-migrate. Stops cleanly on "
                                        "SIGTERM/SIGINT.")
    daemon.add_argument("--no-migrate", action="store_true",
                        help="do not apply migrations: wait, not ready, until `harvester migrate` has")
    daemon.add_argument("--api-base-url", dest="api_base_url", metavar="URL")
    daemon.add_argument("--insecure", action="store_const", const=True, default=None,
                        help="allow plain http:// to a non-loopback upstream")
    daemon.add_argument("--concurrency", type=int, metavar="N")
    daemon.add_argument("--max-rps", dest="max_rps", type=float, metavar="N")
    daemon.add_argument("--admin-host", dest="admin_host", metavar="HOST")
    daemon.add_argument("--admin-port", dest="admin_port", type=int, metavar="PORT")
    options.add_reading(daemon)
    # Its warnings are log events (harvester.cli), the other commands' plain lines.
    daemon.set_defaults(handler=run, speaks_in_logs=True)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from harvester.daemon import collect_less, run_daemon  # noqa: PLC0415 - loads only when it runs

    settings.require_api_token()
    if args.database is not None and not args.database.strip():
        raise UserError("--database needs a database name")
    collect_less()
    asyncio.run(run_daemon(settings, apply_migrations=not args.no_migrate,
                           database=args.database))
    return 0
