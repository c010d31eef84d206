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
from collections.abc import Awaitable, Callable
from typing import Final

import asyncpg
import prometheus_client

from harvester import __version__
from harvester.admin import Admin
from harvester.embedded import database_url
from harvester.engine import Engine
from harvester.errors import ConfigError, MigrationError, StoreError, StoreUnavailable
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.migrations import migrate, newer_versions, pending_migrations
from harvester.settings import Settings
from harvester.store import Store, create_pool, translated
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
            return await create_pool(dsn, min_size=2, max_size=max_size, wait_for_flush=False)
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


async def prepare_schema(pool: asyncpg.Pool, apply_migrations: bool) -> None:
    """Migrate (under the advisory lock) or check that the schema is current."""
    async with translated(), pool.acquire() as conn:
        if apply_migrations:
            for m in await migrate(conn):
                log.info("migrate.applied", version=m.version, name=m.name)
        elif await pending_migrations(conn):
            raise MigrationError(
                "the database schema is behind this harvester; run `harvester "
                "migrate` or start without --no-migrate")
        newer = await newer_versions(conn)
    if newer:
        log.warning("migrate.schema_newer", versions=newer,
                    note="a newer harvester migrated this database; running on it")


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
    # Counters without their *_created twins: fewer series, nothing lost.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = Metrics()
    # The admin server comes first: liveness holds while the daemon waits for its
    # database or for another replica's migration; readiness says it is not ready.
    admin = Admin(settings, None, metrics)
    try:
        await admin.start()
        async with database_url(settings) as dsn:
            pool = await connect_with_retry(dsn, stop, max_size=8)
            if pool is None:
                return
            try:
                await _with_retry("migrate", stop, lambda: prepare_schema(pool, apply_migrations))
                if stop.is_set():
                    return
                store = Store(pool, dsn=dsn)
                metrics.attach_queue_gauges(store.queue_gauges)
                async with Upstream(settings) as upstream:
                    engine = Engine(settings, store, upstream, metrics)
                    admin.attach(store, _readiness(engine, store, pool))
                    if stop.is_set():
                        engine.stop()
                    await engine.run()
            finally:
                await pool.close()
    finally:
        await admin.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("daemon.exit", version=__version__)


async def _with_retry(what: str, stop: asyncio.Event,
                      step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` until it succeeds, waiting out an unavailable database."""
    attempt = 0
    while not stop.is_set():
        try:
            await step()
            return
        except StoreUnavailable as exc:
            attempt += 1
            delay = min(30.0, 0.5 * 2 ** min(attempt, 6))
            log.warning("store.unavailable", during=what, error=str(exc), retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


def _readiness(engine: Engine, store: Store, pool: asyncpg.Pool
               ) -> Callable[[], Awaitable[dict[str, bool]]]:
    migrations_ok_at: float | None = None

    async def checks() -> dict[str, bool]:
        nonlocal migrations_ok_at
        database = True
        migrations = migrations_ok_at is not None
        try:
            # Bounded as a whole: a saturated pool must not hang the probe past the
            # kubelet's timeout.
            async with asyncio.timeout(2.0):
                await store.ping()
                if migrations_ok_at is None or time.monotonic() - migrations_ok_at > MIGRATIONS_RECHECK:
                    async with pool.acquire() as conn:
                        migrations = not await pending_migrations(conn)
                    migrations_ok_at = time.monotonic() if migrations else None
        except (StoreError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            database = False
        return {"database": database, "migrations_current": migrations, **engine.health()}

    return checks
