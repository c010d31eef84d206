"""The change feed: every row that landed in (or changed in, or left) the mirror, once,
in the order of the transactions that wrote them, after a consumer's cursor.

Beside the road, after the mirror: what downstream systems read (README "Querying the
mirror", ``harvester changes``). The order, the horizon below which no row can still
appear, and the tombstones of deleted rows are the SQL function
``harvester.changes_after`` (migration 006), so SQL consumers and this module read the
same feed. Here: a page after a cursor, and following the feed for ever on one
connection, where a ``harvester_landed`` notification only wakes the next read.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg

from harvester.batching import wait_set
from harvester.errors import StoreUnavailable
from harvester.logs import get_logger
from harvester.store import queries
from harvester.store.connect import Connection, ConnectTarget, translated
from harvester.waits import backoff

CHANNEL_LANDED: Final = "harvester_landed"
"""Sent by each write that landed or changed a row: a wake-up, never the data."""
FOLLOW_POLL: Final = 1.0
"""A following consumer reads again at least this often, notification or not: a row
held back by an older open transaction is released by that transaction's end, which
sends nothing."""
READ_TIMEOUT: Final = 60.0
RETRY_CAP: Final = 30.0
MAX_PAGE: Final = 10_000
_CURSOR: Final = re.compile(r"([0-9]{1,20})/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                            r"[0-9a-f]{4}-[0-9a-f]{12})")
_XID8_MAX: Final = 2**64 - 1

SQL: Final = queries.load("changes")
log = get_logger("harvester.changes")


class BadCursor(ValueError):
    """Not a cursor the feed printed."""


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """Where a consumer stands: the writing transaction's id and the job_id of the
    last entry it took. Printed as ``<xid>/<job_id>``, which consumers treat as opaque."""

    xid: int
    job_id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.xid}/{self.job_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = _CURSOR.fullmatch(text)
        if match is None or int(match[1]) > _XID8_MAX:
            raise BadCursor(text)
        return cls(int(match[1]), uuid.UUID(match[2]))


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the feed: a row as it is now (``body``, the row's columns as a JSON
    object) or, ``deleted``, a row that is gone (``body`` None)."""

    cursor: str
    job_id: uuid.UUID
    deleted: bool
    body: str | None


async def read_changes(conn: Connection, after: str | None, limit: int) -> list[Change]:
    """At most ``limit`` entries after ``after`` (None: from the first row kept)."""
    async with translated():
        rows = await conn.fetch(SQL["changes_after"], after, limit, timeout=READ_TIMEOUT)
    return [Change(r["cursor"], r["job_id"], r["deleted"], r["body"]) for r in rows]


async def follow_changes(dsn: str, after: str | None, limit: int,
                         emit: Callable[[Sequence[Change]], None], *,
                         poll: float = FOLLOW_POLL) -> None:
    """``emit`` every page of the feed after ``after``, for ever (until cancelled).

    One connection both LISTENs and reads: a notification on ``harvester_landed`` (or
    ``poll`` seconds without one) starts the next read, which takes pages until one
    comes back short. A lost connection is reconnected with backoff and the feed
    resumes from the last entry emitted: nothing is skipped, nothing repeated. Errors
    other than the database being away (a missing right, a bad cursor) end it."""
    failures = 0
    target = ConnectTarget.parse(dsn)
    while True:
        wake = _Wake()
        woken, lost = wake.woken, wake.lost
        conn: asyncpg.Connection | None = None
        try:
            async with translated():
                conn = await asyncpg.connect(
                    target.dsn, timeout=target.timeout or 365 * 86400.0,
                    server_settings={"application_name": "harvester-changes"})
                await conn.add_listener(CHANNEL_LANDED, wake.notified)
                conn.add_termination_listener(wake.terminated)
            if failures:
                log.info("changes.reconnected", after_failures=failures)
            failures = 0
            while not lost.is_set():
                woken.clear()
                page = await read_changes(conn, after, limit)
                if page:
                    emit(page)
                    after = page[-1].cursor
                if len(page) == limit:
                    continue
                # The next read, at least every ``poll`` seconds, is also the keepalive:
                # a connection that died quietly fails it (within READ_TIMEOUT). (A
                # wake-up and a cancel, Ctrl-C, arriving together still stop it:
                # harvester.batching.)
                await wait_set(woken, poll)
            failures = 1
            log.warning("changes.lost", error="connection closed")
        except StoreUnavailable as exc:
            failures += 1
            if failures == 1:
                log.warning("changes.lost", error=str(exc))
        finally:
            if conn is not None:
                conn.terminate()
        await asyncio.sleep(backoff(failures, base=0.5, cap=RETRY_CAP))


class _Wake:
    """What ends a following consumer's wait: a notification, or the connection's end."""

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.lost = asyncio.Event()

    def notified(self, *_args: object) -> None:
        self.woken.set()

    def terminated(self, _conn: object) -> None:
        self.lost.set()
        self.woken.set()
