"""The embedded PostgreSQL: a real server from the ``pgserver`` wheel.

Used when ``HARVESTER_DATABASE_URL`` is unset, so that the demo, the tests and a first
try work on a machine with nothing running. The cluster lives under
``HARVESTER_DATA_DIR/pgdata``; data survives restarts. pgserver reference-counts the
processes using one data directory and stops the server when the last one exits. It is
started through :mod:`harvester.private_cluster`, which keeps its socket where no other
user of the machine can reach it and changes no permission outside the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from harvester.errors import EmbeddedDatabaseError
from harvester.migrations import migrate
from harvester.settings import Settings

MISSING_MESSAGE = (
    "HARVESTER_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
    "pip install 'harvester[embedded]', or set HARVESTER_DATABASE_URL"
)
DEFAULT_DATABASE = "harvester"


def _cluster() -> Any:
    """:mod:`harvester.private_cluster` (it imports pgserver), or the one-line error
    saying how to install it."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver copes.
            warnings.simplefilter("ignore")
            from harvester import private_cluster  # noqa: PLC0415 - optional extra
    except ImportError:
        raise EmbeddedDatabaseError(MISSING_MESSAGE) from None
    return private_cluster


def require_installed() -> None:
    """Raise the one-line error when the embedded PostgreSQL is not installed."""
    _cluster()


class EmbeddedPostgres:
    """A handle on the pgserver cluster in one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self._server: Any = None

    @property
    def exists(self) -> bool:
        """Whether a cluster was ever initialised here (start() would create one)."""
        return (self.pgdata / "PG_VERSION").exists()

    def start(self) -> None:
        """Start the cluster, or attach to the one already running (blocking)."""
        cluster = _cluster()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._server = cluster.get_private_server(self.pgdata)
        except EmbeddedDatabaseError:
            raise
        except Exception as exc:
            log = self.pgdata / "log"
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL in {self.pgdata} did not start ({type(exc).__name__}); "
                f"see {log}"
            ) from exc

    def uri(self, database: str = DEFAULT_DATABASE) -> str:
        if self._server is None:
            raise EmbeddedDatabaseError("the embedded PostgreSQL is not started")
        return str(self._server.get_uri(database))

    @property
    def pid(self) -> int | None:
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Drop this process's handle; the server stops when it was the last one (and
        a socket directory made for it outside the data directory goes too)."""
        if self._server is not None:
            socket_dir = self._server.get_postmaster_info().socket_dir
            self._server.cleanup()
            self._server = None
            if not (self.pgdata / "postmaster.pid").exists():
                _cluster().remove_socket_dir(socket_dir)


async def ensure_database(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Identifiers cannot be bound parameters; quote it the PostgreSQL way.
            quoted = await conn.fetchval("SELECT quote_ident($1)", name)
            # Another process may create it between our check and our create.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


async def recreate_database(admin_dsn: str, name: str) -> str:
    """Drop ``name`` if it exists, create it empty and migrate it; returns its DSN.

    For the scratch databases of ``demo`` and ``bench``, never for the harvester's own."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        quoted = await admin.fetchval("SELECT quote_ident($1)", name)
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await admin.close()
    await ensure_database(admin_dsn, name)
    dsn = urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


@asynccontextmanager
async def database_url(settings: Settings, database: str = DEFAULT_DATABASE, *,
                       create: bool = True) -> AsyncIterator[str]:
    """Yield a DSN: the configured one, or the embedded server's (started for the block).

    ``create=False`` is for commands that only read or feed: they must not leave an
    empty database behind where they looked (connecting to a missing one fails)."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    await asyncio.to_thread(embedded.start)
    try:
        if create:
            await ensure_database(embedded.uri("postgres"), database)
        yield embedded.uri(database)
    finally:
        await asyncio.to_thread(embedded.stop)
