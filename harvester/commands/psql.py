"""``harvester psql``: psql on the configured database with every parameter of
``HARVESTER_DATABASE_URL`` (:func:`harvester.dsn.libpq_connection`), or on the embedded
one, started for the session (README "Commands").

psql's command line shows in ``ps`` to every local user, so no secret goes there: the
password goes in ``PGPASSWORD`` (libpq's own variable; a process's environment is
readable by its user only), and ``sslpassword``, which libpq reads from no variable, in
a connection service file that only this user can read, removed when psql exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from harvester.commands.database import Target
from harvester.dsn import libpq_connection, libpq_file_secrets, with_database
from harvester.embedded import DEFAULT_DATABASE, EmbeddedPostgres, require_installed
from harvester.errors import UserError
from harvester.settings import Settings
from harvester.store import queries

SQL: Final = queries.load("schema")
SERVICE: Final = "harvester"
"""The section of the temporary service file (PGSERVICE)."""


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
        secrets = libpq_file_secrets(dsn)
        if secrets and "service" in dict(parse_qsl(urlsplit(conninfo).query)):
            raise UserError("HARVESTER_DATABASE_URL: harvester psql passes sslpassword in a "
                            "service file of its own, so it cannot also use service=")
        with service_file(secrets) as service:
            return subprocess.call([psql, "--dbname", conninfo, *extra],  # noqa: S603 - asked for
                                   env={**os.environ, **env, **service})
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


@contextmanager
def service_file(parameters: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment that hands psql ``parameters`` through a connection service file
    (``PGSERVICEFILE``, ``PGSERVICE``): mode 0600 in a directory of mode 0700, both
    removed on the way out. libpq takes from it what the URI does not set.

    A service file holds one ``key=value`` per line and drops a line's trailing blanks,
    so a value with a line break, another control character or trailing blanks cannot
    pass intact: refused, naming the parameter, never its value."""
    if not parameters:
        yield {}
        return
    for key, value in parameters.items():
        if not value.isprintable() or value != value.rstrip() or len(value) > 900:
            raise UserError(f"HARVESTER_DATABASE_URL: {key} cannot be handed to psql (a "
                            "service file takes up to 900 printable characters, without "
                            "trailing blanks)")
    directory = tempfile.mkdtemp(prefix="harvester-psql-")
    try:
        path = os.path.join(directory, "pg_service.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"[{SERVICE}]\n"
                         + "".join(f"{key}={value}\n" for key, value in parameters.items()))
        yield {"PGSERVICEFILE": path, "PGSERVICE": SERVICE}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
