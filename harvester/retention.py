"""Retention: the queue keeps the working set, not history (README "Retention").

Beside the road (feed → queue → claim → poll → decide → write → mirror), each daemon
runs a purge that deletes what has left it: queue rows of jobs that landed or failed
longer ago than ``HARVESTER_FINISHED_RETENTION`` (their closed stuck records go with
them), and, when ``HARVESTER_RESULT_RETENTION`` is set, mirror rows harvested longer ago
than that. It deletes about 1,000 rows per statement, each statement its own short
transaction; while it is behind it goes on after a short pause, deleting at most a tenth
of the time (some 3,800 rows/s on an idle server, less on a busy one), and once caught
up it looks again every tenth of the retention period (1 s to 1 min). One replica
deletes at a time: a run (the batches until caught up) holds an advisory lock, and a
replica refused it leaves the work to the one holding it. A database outage is waited
out; a statement the database refuses (a missing privilege, or one cut by
``statement_timeout``/``lock_timeout``, which would likely cut it again) is logged,
counted and tried again later; neither stops the daemon (README "The database's
faults").

When to run the next batch is decided by pure functions (:func:`pause_after`,
:meth:`Retention.idle`, :func:`refused_pause`); the SQL and the lock are the store's,
behind :class:`~harvester.ports.RetentionPort`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from harvester.errors import StoreError, StoreTimedOut, StoreUnavailable
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.outage import Retrying
from harvester.policy import Random
from harvester.ports import PurgeBatches, RetentionPort
from harvester.settings import Settings
from harvester.waits import backoff, clamp

log = get_logger("harvester.retention")

BATCH: Final = 1000
"""Rows deleted by one statement at most."""
SPACING: Final = 0.5
"""Seconds between two batches while the purge is behind, at the least ..."""
BUSY_SHARE: Final = 0.1
"""... and longer if batches are slow: the purge deletes at most this share of the time.
At full pace it then costs PostgreSQL about 10 µs of CPU per deleted row, under 2 % of
a core, and harvesting is as fast as without it (``scripts/retention-bench claims``,
README "Retention")."""
IDLE_MIN: Final = 1.0
IDLE_MAX: Final = 60.0
REFUSED_BASE, REFUSED_CAP = 5.0, 300.0
"""Backoff after a statement the database refused: it will likely refuse it again."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished queue rows and mirror rows are kept (seconds; None: for ever)."""

    finished: float | None
    results: float | None
    batch: int = BATCH

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(finished=settings.finished_retention or None,
                   results=settings.result_retention or None)

    @property
    def enabled(self) -> bool:
        return self.finished is not None or self.results is not None

    def idle(self) -> float:
        """How long to wait once caught up before looking again: a tenth of the shortest
        retention, between 1 s and 1 min. A row is then deleted within 10 % (at most a
        minute) of its time, and an idle purge costs one cheap statement a minute."""
        periods = [p for p in (self.finished, self.results) if p]
        return clamp(min(periods, default=IDLE_MAX * 10) / 10, IDLE_MIN, IDLE_MAX)


def pause_after(deleted: int, limit: int, took: float, idle: float) -> float:
    """Seconds until the next batch of the same table.

    A full batch means more rows are waiting: go on after :data:`SPACING`, or after
    longer if the batch was slow, so that the purge keeps at most :data:`BUSY_SHARE` of
    one database connection busy however loaded the server is. A short batch means the
    purge has caught up: look again after ``idle``."""
    if deleted < limit:
        return idle
    slow = max(took, 0.0) * (1.0 - BUSY_SHARE) / BUSY_SHARE
    return min(max(SPACING, slow), idle)


def refused_pause(refusals: int, rand: float) -> float:
    """Seconds to wait after the ``refusals``-th refused statement in a row (1 for the
    first). An outage is waited out as claims and writes wait it out
    (:class:`~harvester.outage.Retrying`)."""
    return backoff(refusals - 1, base=REFUSED_BASE, cap=REFUSED_CAP, rand=rand)


@dataclass(slots=True)
class _Table:
    """One table's purge: what it deletes, when its next batch is due, and how its
    current run is going (for the one log line per run)."""

    name: str
    keep: float
    batch: Callable[[PurgeBatches], Callable[[float, int], Awaitable[int]]]
    due: float = 0.0
    refusals: int = 0
    run_rows: int = 0
    run_batches: int = 0
    run_started: float = 0.0


class Purger:
    """The retention purge of one daemon; :meth:`run` until cancelled (the engine owns
    it as a background task).

    A run starts when a table is due: it takes the purge lock (or, when another replica
    holds it, leaves the work to that one and looks again later), deletes batch after
    batch until every table it started with has caught up, and gives the lock back."""

    def __init__(self, retention: Retention, store: RetentionPort, metrics: Metrics, *,
                 rand: Random = random.random,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.retention = retention
        self.store = store
        self.metrics = metrics
        self.rand = rand
        self.clock = clock
        self.sleep = sleep
        self.tables: list[_Table] = []
        if retention.finished is not None:
            self.tables.append(_Table("jobs", retention.finished,
                                      lambda batches: batches.purge_finished))
        if retention.results is not None:
            self.tables.append(_Table("extraction_results", retention.results,
                                      lambda batches: batches.purge_results))
        self.outage = Retrying("retention", metrics, rand)
        self.current: _Table | None = None
        metrics.finished_retention.set(retention.finished or 0.0)
        metrics.result_retention.set(retention.results or 0.0)

    async def run(self) -> None:
        log.info("retention.started", finished_retention=self.retention.finished,
                 result_retention=self.retention.results, batch=self.retention.batch)
        if not self.tables:
            await asyncio.Event().wait()  # nothing to delete; the owner cancels us
        while True:
            await self._sleep_until(min(t.due for t in self.tables))
            await self.turn()

    async def turn(self) -> None:
        """One attempt: a run if this replica gets the lock, else nothing. Failures are
        counted, logged and turned into a later due time, never raised."""
        self.current = None
        try:
            async with self.store.purging() as batches:
                if batches is None:
                    self._postpone(self.retention.idle())
                    log.debug("retention.busy", note="another replica is purging")
                    return
                await self._run(batches)
        except StoreTimedOut as exc:
            self._refused(exc)
            return
        except StoreUnavailable as exc:
            self._postpone(self.outage.failed(exc))
            return
        except StoreError as exc:
            self._refused(exc)
            return
        self.outage.succeeded()

    async def _run(self, batches: PurgeBatches) -> None:
        now = self.clock()
        behind = [t for t in self.tables if t.due <= now]
        while behind:
            table = min(behind, key=lambda t: t.due)
            await self._sleep_until(table.due)
            self.current = table
            started = self.clock()
            deleted = await table.batch(batches)(table.keep, self.retention.batch)
            took = self.clock() - started
            if table.refusals:
                log.info("retention.recovered", table=table.name,
                         after_failures=table.refusals)
                table.refusals = 0
            self._account(table, deleted, started, took)
            table.due = self.clock() + pause_after(deleted, self.retention.batch, took,
                                                   self.retention.idle())
            if deleted < self.retention.batch:
                behind.remove(table)

    def _refused(self, exc: StoreError) -> None:
        """The database refused a statement: likely again, so back off (to 5 min)."""
        failing = [self.current] if self.current is not None else self.tables
        for table in failing:
            table.refusals += 1
            self.metrics.retention_failures.labels(table.name).inc()
            pause = refused_pause(table.refusals, self.rand())
            table.due = self.clock() + pause
            log.error("retention.failed", table=table.name, error=str(exc),
                      failures=table.refusals, retry_in=round(pause, 1))

    def _postpone(self, seconds: float) -> None:
        """Every table due now waits ``seconds`` more."""
        now = self.clock()
        for table in self.tables:
            table.due = max(table.due, now + seconds)

    def _account(self, table: _Table, deleted: int, started: float, took: float) -> None:
        """Count the rows; log one line per run of a table (its batches until caught up)."""
        if deleted:
            self.metrics.retention_deleted.labels(table.name).inc(deleted)
            if not table.run_batches:
                table.run_started = started
            table.run_rows += deleted
            table.run_batches += 1
        if deleted < self.retention.batch and table.run_rows:
            log.info("retention.purged", table=table.name, rows=table.run_rows,
                     batches=table.run_batches,
                     seconds=round(started + took - table.run_started, 2),
                     older_than=table.keep)
            table.run_rows = table.run_batches = 0

    async def _sleep_until(self, due: float) -> None:
        wait = due - self.clock()
        if wait > 0:
            await self.sleep(wait)
