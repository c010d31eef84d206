"""``harvester run``: wire the store, upstream, engine and admin server, then wait.

Everything here is assembly and lifecycle; the logic lives in the engine. The database
may be away when the daemon starts (a pod scheduled before its database): transient
failures are retried with backoff and logged; a DSN that cannot work (a wrong password,
a database that does not exist, ``sslmode=bogus``, a missing CA file, a role without
the privileges the daemon needs) or an admin address that cannot be bound stops it with
one clear line and exit status 2 (README "The database's faults"). SIGTERM
is acted on at once in every phase: connecting, waiting for the migration lock,
migrating, waiting for someone else's migration (``--no-migrate``) and running;
``daemon.exit`` is logged whatever the way out, except a mistake of the user's (a
:class:`~harvester.errors.UserError`), which the command line says in its one line.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
import prometheus_client

from harvester import __version__
from harvester.admin import Admin
from harvester.batching import wait_set
from harvester.dsn import with_database
from harvester.embedded import DEFAULT_DATABASE, database_url
from harvester.engine import Engine
from harvester.errors import HarvesterError, StoreError, StoreUnavailable, UserError
from harvester.logs import QuietLoopErrors, get_logger
from harvester.metrics import Metrics
from harvester.migrations import (
    MIGRATION_LOCK_KEY,
    migrate,
    newer_versions,
    pending_migrations,
)
from harvester.ports import OperatorPort
from harvester.privileges import check_privileges
from harvester.retention import Purger, Retention
from harvester.settings import Settings
from harvester.store import ConnectTarget, create_pool, translated
from harvester.store.operators import OperatorStore
from harvester.store.purge import PurgeStore
from harvester.store.queue import QueueStore
from harvester.upstream import Upstream
from harvester.waits import backoff

log = get_logger("harvester.daemon")

MIGRATIONS_RECHECK: Final = 30.0
SCHEMA_WAIT_RECHECK: Final = 5.0
POOL_CLOSE_TIMEOUT: Final = 5.0
GC_THRESHOLDS: Final = (20_000, 50, 100)
"""The cyclic collector's thresholds while the daemon runs (CPython's are 700, 10, 10)."""
T = TypeVar("T")


def collect_less() -> None:
    """Tune the cyclic garbage collector for a long-running loop (README "Performance").

    Nearly everything a job allocates is freed by reference counting the moment it is
    done; at CPython's default the collector still ran every 700 allocations, walking
    the young objects and, every hundred runs, everything the daemon holds. What exists
    once the modules are loaded is frozen out of its sight (``gc.freeze``, as Instagram
    does for its workers) and it runs every 20,000 allocations: in ``harvester bench``
    (b), 40,000 jobs, three alternated runs each, the daemon's CPU per job went from
    181-186 µs to 167-172 µs with the same peak RSS (71-73 MiB)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def until_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when ``stop`` is set first: ``work`` (a connection
    attempt, a wait for the migration lock) is then cancelled, so that SIGTERM is acted
    on at once rather than after a connect timeout or another replica's migration."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
    try:
        # Finished before the cancel landed: the result is the caller's to clean up.
        return await task
    except (asyncio.CancelledError, HarvesterError) as exc:
        if not stop.is_set():
            raise
        if isinstance(exc, HarvesterError):
            log.debug("daemon.abandoned_on_stop", error=str(exc))
        return None


async def connect_with_retry(dsn: str, stop: asyncio.Event, max_size: int) -> asyncpg.Pool | None:
    """A pool, waiting out an unreachable database; None if stopped while waiting.

    A DSN that can never work raises :class:`~harvester.errors.DatabaseConfigError`
    (from the store) on the first attempt instead of being retried."""
    target = ConnectTarget.parse(dsn)
    log.info("store.connecting", where=target.where, connect_timeout=target.timeout)
    attempt = 0
    while not stop.is_set():
        try:
            return await until_stopped(
                stop, create_pool(dsn, min_size=2, max_size=max_size, wait_for_flush=False,
                                   queue_plans=True))
        except StoreUnavailable as exc:
            attempt += 1
            delay = backoff(attempt, base=0.5, cap=30.0)
            log.warning("store.connect_failed", error=str(exc), attempt=attempt,
                        retry_in=delay)
            await wait_set(stop, delay)
    return None


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully, but never wait on a database that stopped answering."""
    try:
        await asyncio.wait_for(pool.close(), timeout=POOL_CLOSE_TIMEOUT)
    except (TimeoutError, StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        pool.terminate()


class Startup:
    """What /readyz says before the engine runs: not ready, and which part is missing
    (the database not reached yet, or a schema not yet current)."""

    def __init__(self) -> None:
        self.database = False

    async def checks(self) -> dict[str, bool]:
        return {"database": self.database, "migrations_current": False, "running": False}


async def prepare_schema(pool: asyncpg.Pool, apply_migrations: bool) -> None:
    """Migrate (under the advisory lock), or with ``--no-migrate`` wait for whoever
    migrates (the migrate Job, README "Upgrades")."""
    if apply_migrations:
        async with translated(), pool.acquire() as conn:
            # Say so when another replica holds the lock: its migration may take a while.
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
            else:
                log.info("migrate.waiting_for_lock",
                         note="another harvester is migrating this database")
            for m in await migrate(conn):
                log.info("migrate.applied", version=m.version, name=m.name)
    else:
        await wait_for_current_schema(pool)
    async with translated(), pool.acquire() as conn:
        newer = await newer_versions(conn)
    if newer:
        log.warning("migrate.schema_newer", versions=newer,
                    note="a newer harvester migrated this database; running on it")


async def wait_for_current_schema(pool: asyncpg.Pool) -> None:
    """Return once the schema is current, re-checking every few seconds meanwhile.

    A rollout may start the new daemons before the migrate Job has run, or before an
    administrator has granted the runtime role its tables (deploy/runtime-role.sql):
    either way they wait, not ready (readiness says ``migrations_current: false``),
    instead of crash-looping, and start on the first check that finds the schema
    current. Each state is logged once, when it begins."""
    said = ""
    while True:
        async with translated(), pool.acquire() as conn:
            try:
                pending = [f"{m.version:03d}_{m.name}" for m in await pending_migrations(conn)]
                refused = ""
            except asyncpg.InsufficientPrivilegeError as exc:
                pending, refused = [], str(exc).splitlines()[0]
        if not pending and not refused:
            if said:
                log.info("migrate.schema_current", note="migrated elsewhere; starting")
            return
        state = "unreadable" if refused else "behind"
        if state != said:
            said = state
            if refused:
                log.warning("migrate.schema_unreadable", error=refused,
                            recheck_in=SCHEMA_WAIT_RECHECK,
                            note="this role may not read the schema: grant it what "
                                 "deploy/runtime-role.sql grants")
            else:
                log.warning("migrate.schema_behind", pending=pending,
                            recheck_in=SCHEMA_WAIT_RECHECK,
                            note="run --no-migrate: not ready until `harvester migrate` "
                                 "(the migrate Job) has applied these")
        await asyncio.sleep(SCHEMA_WAIT_RECHECK)


async def run_daemon(settings: Settings, *, apply_migrations: bool = True,
                     database: str | None = None) -> None:
    """``database``: another database on the same server (``run --database NAME``)."""
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
    QuietLoopErrors().install(loop)
    # Counters without their *_created twins: fewer series, nothing lost.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = Metrics()
    # The admin server comes first: liveness holds while the daemon waits for its
    # database or for another replica's migration; readiness says it is not ready.
    startup = Startup()
    admin = Admin(settings, None, metrics, startup.checks)
    failure: BaseException | None = None
    try:
        await admin.start()
        async with database_url(settings, database or DEFAULT_DATABASE) as configured:
            dsn = with_database(configured, database) if database else configured
            pool = await connect_with_retry(dsn, stop, max_size=8)
            if pool is None:
                return
            startup.database = True
            try:
                await until_stopped(stop, _with_retry(
                    "migrate", stop, lambda: prepare_schema(pool, apply_migrations)))
                await until_stopped(stop, _with_retry(
                    "privileges", stop, lambda: check_privileges(pool)))
                if stop.is_set():
                    return
                store = QueueStore(pool, dsn=dsn)
                operators = OperatorStore(pool)
                metrics.attach_queue_gauges(operators.queue_gauges)
                retention = Retention.from_settings(settings)
                background = {}
                if retention.enabled:
                    background["retention"] = Purger(retention, PurgeStore(pool), metrics).run
                else:
                    log.info("retention.off", note="HARVESTER_FINISHED_RETENTION is 0 and "
                             "HARVESTER_RESULT_RETENTION unset: nothing is deleted")
                async with Upstream(settings) as upstream:
                    engine = Engine(settings, store, upstream, metrics, background=background)
                    admin.attach(operators, _readiness(engine, operators, pool))
                    if stop.is_set():
                        engine.stop()
                    await engine.run()
            finally:
                await close_pool(pool)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        await admin.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        reason = ("error" if failure is not None else
                  "signal" if stop.is_set() else "engine_stopped")
        # A mistake is the command line's one line (README "Commands"), no log event.
        if not isinstance(failure, UserError):
            log.info("daemon.exit", version=__version__, reason=reason,
                     **({"error": type(failure).__name__} if failure is not None else {}))


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
            delay = backoff(attempt, base=0.5, cap=30.0)
            log.warning("store.unavailable", during=what, error=str(exc), retry_in=delay)
            await wait_set(stop, delay)


def _readiness(engine: Engine, store: OperatorPort, pool: asyncpg.Pool
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
