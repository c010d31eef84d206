"""``harvester migrate``: the one command that creates (the embedded server and the
database when missing), then applies the migrations in ``sql/`` under an advisory lock."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from harvester.commands import options
from harvester.commands.database import Target, open_pool
from harvester.migrations import Migration, latest_version, migrate, newer_versions
from harvester.settings import Settings
from harvester.store import translated


def add_parser(sub: Any) -> None:
    mig = sub.add_parser("migrate", help="apply the SQL migrations (idempotent)",
                         description="Apply the migrations in sql/ in order under an advisory "
                                     "lock; prints what it applied. The only command that creates "
                                     "the embedded PostgreSQL or a database on it.")
    options.add_reading(mig)
    mig.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_migrate(settings, sys.stdout, database=args.database))


async def cmd_migrate(settings: Settings, out: TextIO, database: str | None = None) -> int:
    """The one command that creates: the embedded server and database if missing."""
    async with (open_pool(Target(settings, database), create=True, max_size=1) as (pool, _),
                translated(), pool.acquire() as conn):
        done = await migrate(conn)
        newer = await newer_versions(conn)
    render_migrate(done, newer, out)
    return 0


def render_migrate(done: Sequence[Migration], newer: Sequence[int], out: TextIO) -> None:
    if done:
        for m in done:
            out.write(f"applied {m.version:03d}_{m.name}\n")
    out.write(f"schema at version {latest_version()}"
              f"{'' if done else ' (nothing to apply)'}\n")
    if newer:
        out.write(f"note: the database also has migration(s) {', '.join(map(str, newer))} from a "
                  "newer harvester; left as they are\n")
