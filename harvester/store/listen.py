"""LISTEN/NOTIFY: fed jobs wake the daemons, and the daemons hear each other's pace.

Beside the road: a job fed by any path (``harvester enqueue``, the admin API, plain SQL)
fires a notification (a trigger on harvester.jobs, and requeue), so an idle daemon claims
it within milliseconds instead of at its next poll (README "Feeding jobs"); a daemon that
upstream refused tells the others on a second channel (README "Pace",
:mod:`harvester.fleet`). The engine reaches both through
:class:`~harvester.store.queue.QueueStore`, never through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

import asyncpg

from harvester.batching import wait_set
from harvester.errors import StoreError
from harvester.logs import get_logger
from harvester.store import queries
from harvester.store.connect import ConnectTarget, translated
from harvester.waits import backoff

CHANNEL_JOBS: Final = "harvester_jobs"
"""Sent once per INSERT statement into harvester.jobs (a trigger), and by requeue."""
CHANNEL_PACE: Final = "harvester_pace"
"""Refusals of one daemon, heard by the others (:mod:`harvester.fleet`)."""
LISTEN_KEEPALIVE: Final = 10.0
LISTEN_RETRY_CAP: Final = 30.0
log = get_logger("harvester.store")

SQL: Final = queries.load("listen")


async def announce_pace(pool: asyncpg.Pool, payload: str) -> None:
    """NOTIFY the other daemons that upstream refused this one (README "Pace")."""
    async with translated():
        await pool.execute(SQL["announce_pace"], CHANNEL_PACE, payload)


async def listen_for_jobs(dsn: str | None, on_fed: Callable[[], None],
                          on_listening: Callable[[bool], None],
                          on_pace: Callable[[str], None]) -> None:
    """LISTEN for fed jobs until cancelled (README "Feeding jobs": picked up within
    milliseconds), and for the other daemons' refusals (``on_pace`` with the payload;
    README "Pace"). A dedicated connection, checked every 10 s with a query (a silent
    network drop sends no termination), reconnected with backoff when lost; while it
    is away ``on_listening(False)`` tells the engine to poll instead."""
    failures = 0
    while dsn is None:  # nothing to listen with: the engine polls
        on_listening(False)
        await asyncio.Event().wait()
    while True:
        lost = asyncio.Event()
        conn: asyncpg.Connection | None = None
        try:
            async with translated():
                # connect_timeout is the client's, not the server's
                target = ConnectTarget.parse(dsn)
                conn = await asyncpg.connect(
                    target.dsn, timeout=target.timeout or 365 * 86400.0,
                    server_settings={"application_name": "harvester-listen"})
                await conn.add_listener(CHANNEL_JOBS, lambda *_args: on_fed())
                await conn.add_listener(
                    CHANNEL_PACE, lambda *args: on_pace(str(args[-1])))
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            if failures:
                log.info("listen.reconnected", after_failures=failures)
            else:
                log.info("listen.started", channel=CHANNEL_JOBS)
            failures = 0
            on_listening(True)
            on_fed()  # anything fed while nobody listened
            while not lost.is_set():
                await wait_set(lost, LISTEN_KEEPALIVE)
                if not lost.is_set():
                    async with translated():
                        await asyncio.wait_for(conn.fetchval(SQL["keepalive"]), timeout=5.0)
            failures = 1
            log.warning("listen.lost", error="connection closed",
                        fallback="polling every second")
        except StoreError as exc:
            failures += 1
            if failures == 1:
                log.warning("listen.lost", error=str(exc), fallback="polling every second")
        finally:
            on_listening(False)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2.0)
        await asyncio.sleep(backoff(failures, base=0.5, cap=LISTEN_RETRY_CAP))

