"""The retention purge's database side: the purge lock and the batches it deletes.

The adapter behind :class:`~harvester.ports.RetentionPort`, beside the road: when to
delete is :mod:`harvester.retention`'s pure schedule; what one batch deletes, and how one
replica at a time holds the right to delete, is here (README "Retention"). Its
statements are the blocks of ``queries/purge.sql``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import asyncpg

from harvester.store import queries
from harvester.store.connect import Connection, translated

RETENTION_LOCK_KEY: Final = int.from_bytes(b"hv-purge", "big")
"""Session advisory lock of the purge: one replica purges at a time. Fixed forever."""

SQL: Final = queries.load("purge")
PURGE_FINISHED_SQL: Final = SQL["purge_finished"]
PURGE_RESULTS_SQL: Final = SQL["purge_results"]


class PurgeStore:
    """The database as the retention purge sees it (:class:`~harvester.ports.RetentionPort`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def purging(self) -> AsyncIterator[PurgeSession | None]:
        """This replica's turn to purge (README "Retention"), or None while another
        replica's purge runs.

        A session advisory lock, held on one pooled connection for a whole run (the
        batches until the purge has caught up, and the pauses between them), so that
        one replica purges at a time whatever the number of replicas, and the purge's
        load on the database does not grow with them. A lock per batch
        (``pg_try_advisory_xact_lock``) would let every replica slip its batches into
        the others' pauses. The lock is released explicitly on the way out (or the
        connection closed): the pool's reset does not."""
        async with translated(), self.pool.acquire() as conn:
            if not await conn.fetchval(SQL["purge_lock"], RETENTION_LOCK_KEY):
                yield None
                return
            try:
                yield PurgeSession(conn)
            finally:
                await _unlock_or_close(conn)


class PurgeSession:
    """The purge's connection while this replica holds the purge lock (see
    :meth:`PurgeStore.purging`); each call is one batch in its own transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def purge_finished(self, older_than: float, limit: int) -> int:
        """At most ``limit`` queue rows of jobs that landed or failed more than
        ``older_than`` seconds ago; returns how many were deleted."""
        async with translated():
            return int(await self.conn.fetchval(PURGE_FINISHED_SQL, older_than, limit))

    async def purge_results(self, older_than: float, limit: int) -> int:
        """At most ``limit`` mirror rows harvested more than ``older_than`` seconds ago."""
        async with translated():
            return int(await self.conn.fetchval(PURGE_RESULTS_SQL, older_than, limit))


async def _unlock_or_close(conn: Connection) -> None:
    """Give the purge lock back before the connection goes back to the pool, whose reset
    runs nothing: a session lock left behind would stop every replica's purge for as long
    as that connection lives. When the unlock cannot be confirmed (the connection broke,
    or the task is being cancelled) the connection is closed instead, and the server
    drops the lock with the session."""
    try:
        unlocked = await asyncio.wait_for(
            conn.fetchval(SQL["purge_unlock"], RETENTION_LOCK_KEY), timeout=5.0)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:  # whatever happened, the session must not keep the lock
        conn.terminate()
        return
    if not unlocked:  # pragma: no cover - the lock was taken on this very session
        conn.terminate()
