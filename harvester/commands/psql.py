"""``harvester psql``: psql on the configured database with every parameter of
``HARVESTER_DATABASE_URL`` (:func:`harvester.dsn.libpq_connection`), or on the embedded
one, started for the session (README "Commands")."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
from typing import Any, Final

import asyncpg

from harvester.commands.database import Target
from harvester.dsn import libpq_connection, with_database
from harvester.embedded import DEFAULT_DATABASE, EmbeddedPostgres, require_installed
from harvester.errors import UserError
from harvester.settings import Settings
from harvester.store import queries

SQL: Final = queries.load("schema")


def add_parser(sub: Any) -> None:
    psql = sub.add_parser("psql", help="open psql on the harvester database",
                          description="Open psql on the configured database (HARVESTER_DATABASE_URL, "
                                      "with its TLS and other parameters), or on the embedded "
                                      "one (started for the session; psql is bundled with it). "
                                      "Arguments after -- go to psql.")
    psql.add_argument("--database", default=None,
                      help="another database on the same server (the demo uses "
                           "harvester_demo); it must exist")
    psql.add_argument("--data-dir", dest="data_dir", metavar="PATH")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql")
    psql.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    extra = [a for a in args.psql_args if a != "--"]
    if settings.database_url is not None:
        psql = shutil.which("psql")
        if psql is None:
            raise UserError("psql is not installed; connect with HARVESTER_DATABASE_URL in your client")
        dsn = settings.database_url.get_secret_value()
        if args.database:
            dsn = with_database(dsn, args.database)
        conninfo, env = libpq_connection(dsn)
        return subprocess.call([psql, "--dbname", conninfo, *extra],  # noqa: S603 - asked for
                               env={**os.environ, **env})
    embedded = EmbeddedPostgres(settings.data_dir)
    database = args.database or DEFAULT_DATABASE
    target = Target(settings, args.database)
    require_installed()
    if not embedded.exists:
        raise UserError(f"there is no embedded PostgreSQL in {embedded.pgdata} yet: run "
                        f"`harvester migrate{target.flags}` (or `harvester demo`)")
    embedded.start()
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        existing = asyncio.run(_databases(embedded.uri("postgres")))
        if database not in existing:
            raise UserError(f'no database "{database}" on the embedded PostgreSQL in '
                            f"{embedded.pgdata} (it has: {', '.join(existing) or 'none'}); "
                            f"`harvester migrate{target.flags}` creates it")
        return subprocess.call(  # noqa: S603 - the bundled psql, on the user's request
            [str(POSTGRES_BIN_PATH / "psql"), embedded.uri(database), *extra])
    finally:
        embedded.stop()


async def _databases(admin_uri: str) -> list[str]:
    conn = await asyncpg.connect(admin_uri)
    try:
        rows = await conn.fetch(SQL["databases"])
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


