"""``harvester run``: wire the store, upstream, engine and admin server, then wait.

Everything here is assembly and lifecycle; the logic lives in the engine. The database
may be away when the daemon starts (a pod scheduled before its database): transient
failures are retried with backoff and logged; a wrong password or database name stops
it with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Final

import asyncpg

from harvester import __version__
from harvester.admin import Admin
from harvester.embedded import database_url
from harvester.engine import Engine
from harvester.errors import ConfigError, MigrationError, StoreError, StoreUnavailable
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.migrations import migrate, pending_migrations
from harvester.settings import Settings
from harvester.store import Store, create_pool
from harvester.upstream import Upstream

log = get_logger("harvester.daemon")

FATAL_CONNECT_ERRORS: Final = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)
MIGRATIONS_RECHECK: Final = 30.0


async def connect_with_retry(dsn: str, stop: asyncio.Event, max_size: int) -> asyncpg.Pool | None:
    """A pool, waiting out an unreachable database; None if stopped while waiting."""
    attempt = 0
    while not stop.is_set():
        try:
            return await create_pool(dsn, min_size=2, max_size=max_size)
        except StoreUnavailable as exc:
            attempt += 1
            delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
            log.warning("store.connect_failed", error=str(exc), attempt=attempt,
                        retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, FATAL_CONNECT_ERRORS):
                raise ConfigError(f"HARVESTER_DATABASE_URL: {type(cause).__name__}: "
                                  f"{str(cause).splitlines()[0]}") from None
            raise
    return None


async def run_daemon(settings: Settings, *, apply_migrations: bool = True) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    engine: Engine | None = None

    def on_signal(signame: str) -> None:
        log.info("daemon.signal", signal=signame)
        stop.set()
        if engine is not None:
            engine.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        async with database_url(settings) as dsn:
            pool = await connect_with_retry(dsn, stop, max_size=8)
            if pool is None:
                return
            try:
                async with pool.acquire() as conn:
                    if apply_migrations:
                        done = await migrate(conn)
                        for m in done:
                            log.info("migrate.applied", version=m.version, name=m.name)
                    elif await pending_migrations(conn):
                        raise MigrationError(
                            "the database schema is behind this harvester; run `harvester "
                            "migrate` or start without --no-migrate")
                store = Store(pool)
                metrics = Metrics()
                metrics.attach_queue_gauges(store.queue_gauges)
                async with Upstream(settings) as upstream:
                    engine = Engine(settings, store, upstream, metrics, dsn=dsn)
                    admin = Admin(settings, store, metrics, _readiness(engine, store, pool))
                    await admin.start()
                    if stop.is_set():
                        engine.stop()
                    try:
                        await engine.run()
                    finally:
                        await admin.stop()
            finally:
                await pool.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("daemon.exit", version=__version__)


def _readiness(engine: Engine, store: Store, pool: asyncpg.Pool):  # type: ignore[no-untyped-def]
    migrations_ok_at = 0.0

    async def checks() -> dict[str, bool]:
        nonlocal migrations_ok_at
        database = True
        migrations = True
        try:
            await asyncio.wait_for(store.ping(), timeout=2.0)
            if time.monotonic() - migrations_ok_at > MIGRATIONS_RECHECK:
                async with pool.acquire() as conn:
                    migrations = not await asyncio.wait_for(pending_migrations(conn), timeout=2.0)
                if migrations:
                    migrations_ok_at = time.monotonic()
        except (StoreError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            database = False
        return {
            "database": database,
            "migrations_current": migrations,
            "auth_circuit_closed": not engine.gate.circuit.is_open,
            "running": engine.started.is_set() and not engine.stopping.is_set(),
        }

    return checks
