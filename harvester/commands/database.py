"""Which database a command works on, and whether it can use it.

Each command opens one database: the configured one or the embedded server;
``--database`` picks another database on the same server, as ``psql -d`` does. Only
``migrate`` creates anything: a reading command pointed at a database that does not
exist or was never migrated says so in one line and names the command that sets it up
(README "Commands").
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

import asyncpg

from harvester.dsn import describe_dsn, with_database
from harvester.embedded import (
    DEFAULT_DATABASE,
    EmbeddedPostgres,
    database_url,
    require_installed,
)
from harvester.errors import StoreError, UserError
from harvester.migrations import applied_versions, latest_version
from harvester.settings import Settings, default_data_dir
from harvester.store import Connection, create_pool, queries, translated
from harvester.store.operators import OperatorStore

SQL: Final = queries.load("schema")


@dataclass(frozen=True)
class Target:
    """The database a command works on, and how to name it back to the user."""

    settings: Settings
    database: str | None = None

    @property
    def flags(self) -> str:
        """The options that point another command at the same database (for the
        embedded server outside its default place, its data directory too)."""
        flags = f" --database {shlex.quote(self.database)}" if self.database else ""
        if (self.settings.database_url is None
                and self.settings.data_dir != default_data_dir()):
            flags += f" --data-dir {shlex.quote(str(self.settings.data_dir))}"
        return flags

    @asynccontextmanager
    async def dsn(self, *, create: bool = False) -> AsyncIterator[tuple[str, str]]:
        """(DSN, description). Only ``create`` (migrate) may create the embedded
        server's data directory or database; otherwise a missing one is a UserError."""
        if self.database is not None and not self.database.strip():
            raise UserError("--database needs a database name")
        if self.settings.database_url is not None:
            dsn = self.settings.database_url.get_secret_value()
            if self.database:
                dsn = with_database(dsn, self.database)
            yield dsn, describe_dsn(dsn)
            return
        name = self.database or DEFAULT_DATABASE
        embedded = EmbeddedPostgres(self.settings.data_dir)
        where = f'database "{name}" on the embedded PostgreSQL in {embedded.pgdata}'
        require_installed()
        if not create and not embedded.exists:
            raise UserError(f"there is no embedded PostgreSQL in {embedded.pgdata} yet: run "
                            f"`harvester migrate{self.flags}` (or `harvester demo`), or set "
                            "HARVESTER_DATABASE_URL")
        async with database_url(self.settings, name, create=create) as dsn:
            yield dsn, where


@asynccontextmanager
async def open_pool(target: Target, *, create: bool = False, max_size: int = 2
                ) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    async with target.dsn(create=create) as (dsn, where):
        try:
            pool = await create_pool(dsn, min_size=1, max_size=max_size)
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError):
                if target.settings.database_url is None:
                    raise UserError(f"{where} does not exist: `harvester migrate{target.flags}` "
                                    "creates it") from None
                raise UserError(f"HARVESTER_DATABASE_URL: {where} does not exist "
                                "(InvalidCatalogNameError): create it (CREATE DATABASE), then "
                                f"run `harvester migrate{target.flags}`") from None
            raise
        try:
            yield pool, where
        finally:
            await pool.close()


async def _table_exists(conn: Connection, name: str) -> bool:
    """From the catalog, which every role may read (schema.sql)."""
    return bool(await conn.fetchval(SQL["table_exists"], name))


async def check_schema(conn: Connection, where: str, target: Target,
                       need: Literal["read", "feed"]) -> None:
    """Refuse, in one line that names the fix, a database the command cannot use.

    ``read`` needs the schema at this harvester's version. ``feed`` needs only the
    queue table: feeding is the same INSERT in every schema version, and a feeding role
    needs no right on ``harvester.schema_migrations`` (README "Feeding jobs")."""
    migrate_hint = f"run `harvester migrate{target.flags}`"
    if need == "feed":
        if not await _table_exists(conn, "jobs"):
            raise UserError(f"{where} is not migrated (no harvester schema): {migrate_hint}")
        return
    if not await _table_exists(conn, "schema_migrations"):
        raise UserError(f"{where} is not migrated (no harvester schema): {migrate_hint}")
    applied = await applied_versions(conn)
    needed = latest_version()
    if needed not in applied:
        have = max(applied, default=0)
        raise UserError(f"{where} is at schema version {have}, this harvester needs {needed}: "
                        f"{migrate_hint}")


@asynccontextmanager
async def open_store(settings: Settings, *, database: str | None = None,
                     need: Literal["read", "feed"] = "read") -> AsyncIterator[OperatorStore]:
    """The operators' store on the command's database, once it passed the schema check."""
    target = Target(settings, database)
    async with open_pool(target) as (pool, where):
        async with translated(), pool.acquire() as conn:
            await check_schema(conn, where, target, need)
        yield OperatorStore(pool)



def check_scratch(settings: Settings, name: str, default: str, command: str) -> None:
    """Refuse to let ``command`` drop and recreate a database that is not a scratch one:
    the harvester's own (``harvester``, or the one HARVESTER_DATABASE_URL names) or the
    server's ``postgres``."""
    configured = (urlsplit(settings.database_url.get_secret_value()).path.lstrip("/")
                  if settings.database_url is not None else None)
    if name in ("", DEFAULT_DATABASE, "postgres", configured):
        raise UserError(f"--database: {command} drops and recreates its database; {name!r} "
                        f"is not a scratch database (default {default})")
