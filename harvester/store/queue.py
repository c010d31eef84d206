"""The engine's queue in PostgreSQL: claim, write, release, the heartbeat.

The adapter behind :class:`~harvester.ports.StorePort`, on the road's middle stretch
(queue → claim → … → write → mirror). It claims due jobs in batches (``FOR UPDATE SKIP
LOCKED`` in a materialized CTE, a lease, a fencing token) and writes a batch of outcomes
in one statement, so one transaction (job states, mirror upserts, stuck records,
notifications). Its statements are the blocks of ``queries/queue.sql``; the only SQL
built here are the ``unnest`` column lists of a batch (:class:`Columns`). LISTEN and
NOTIFY are :mod:`harvester.store.listen`'s; the engine reaches them through this class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg

from harvester.errors import ValueRefused
from harvester.policy import Fail, Job, Land, Retry, Stuck
from harvester.ports import Outcome, ReleaseRow, WorkerState, WriteReport
from harvester.store import listen, queries
from harvester.store.connect import Connection, translated


@dataclass(frozen=True, slots=True)
class Columns:
    """The columns of one ``unnest($n::type[], ...) AS alias(name, ...)`` in a batch
    statement, named once: the SQL and the parameter arrays both come from here, so a
    column can never be sent in the wrong position."""

    alias: str
    columns: tuple[tuple[str, str], ...]
    first: int = 1
    """Number of the first parameter ($n)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def after(self) -> int:
        """The first parameter number after these columns."""
        return self.first + len(self.columns)

    def unnest(self) -> str:
        arrays = ", ".join(f"${self.first + i}::{kind}[]"
                           for i, (_, kind) in enumerate(self.columns))
        return f"unnest({arrays}) AS {self.alias}({', '.join(self.names)})"

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        return [[row[name] for row in rows] for name in self.names]


JOB_COLUMNS: Final = Columns("u", (
    ("job_id", "uuid"), ("lease_seq", "bigint"), ("state", "text"), ("delay", "float8"),
    ("polled", "int"), ("status", "int"), ("error", "text"), ("keep_answer", "bool"),
    ("attempt", "int"), ("c500", "int"), ("c403", "int"), ("failed_reason", "text"),
    ("step", "text"), ("seen", "text"), ("due_at", "timestamptz"),
))
RESULT_COLUMNS: Final = Columns("r", (
    ("job_id", "uuid"), ("id", "uuid"), ("org_id", "uuid"), ("domain", "text"),
    ("schema_id", "text"), ("data_type", "text"), ("raw_blob_key", "text"),
    ("quality_completeness", "float8"), ("quality_validation", "float8"),
    ("quality_composite", "float8"), ("latency_ms", "int"), ("delivered_at", "timestamptz"),
    ("created_at", "timestamptz"), ("payload_text", "text"),
), first=JOB_COLUMNS.after)
STUCK_COLUMNS: Final = Columns("st", (
    ("job_id", "uuid"), ("status", "int"), ("body", "text"), ("newly", "bool"),
), first=RESULT_COLUMNS.after)
RELEASE_COLUMNS: Final = Columns("u", (
    ("job_id", "uuid"), ("lease_seq", "bigint"), ("delay", "float8"), ("polled", "int"),
    ("status", "int"), ("error", "text"),
))

SQL: Final = queries.load("queue", job_columns=JOB_COLUMNS.unnest(),
                          result_columns=RESULT_COLUMNS.unnest(),
                          stuck_columns=STUCK_COLUMNS.unnest(),
                          release_columns=RELEASE_COLUMNS.unnest())
CLAIM_SQL: Final = SQL["claim"]
# Status checks due within a second are worth asking about now, in a batch-status call
# that has room: one call instead of two (README "How a job is followed").
CLAIM_SOON_SQL: Final = CLAIM_SQL.replace(
    "AND next_poll_at <= now()",
    "AND next_poll_at <= now() + make_interval(secs => $4) AND next_step = 'status'")


class QueueStore:
    """The database as the engine sees it (:class:`~harvester.ports.StorePort`).

    ``dsn`` is needed only to LISTEN (a dedicated connection outside the pool)."""

    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None) -> None:
        self.pool = pool
        self.dsn = dsn

    # ------------------------------------------------------------ claim path

    async def claim(self, limit: int, lease_seconds: float, worker_id: str) -> list[Job]:
        async with translated(self.pool):
            rows = await self.pool.fetch(CLAIM_SQL, limit, lease_seconds, worker_id)
        return [_job(r) for r in rows]

    async def claim_soon(self, limit: int, lease_seconds: float, worker_id: str,
                         within: float) -> list[Job]:
        """Like :meth:`claim`, for jobs whose status check is due within ``within`` s."""
        async with translated(self.pool):
            rows = await self.pool.fetch(CLAIM_SOON_SQL, limit, lease_seconds, worker_id, within)
        return [_job(r) for r in rows]

    async def next_due_at(self) -> datetime | None:
        async with translated():
            value: datetime | None = await self.pool.fetchval(SQL["next_due"])
        return value

    # ------------------------------------------------------------ write path

    async def write(self, outcomes: Sequence[Outcome]) -> WriteReport:
        """Write a batch in one statement (so one transaction). A row the database
        refuses (a value it cannot hold: README "The database's faults") is retried
        alone so that the rest of the batch still lands, and comes back in
        ``rejected``; any other fault is raised for the whole batch."""
        report = WriteReport()
        if not outcomes:
            return report
        try:
            async with translated(self.pool), self.pool.acquire() as conn:
                await self._write(conn, outcomes, report)
            return report
        except ValueRefused as exc:
            if len(outcomes) == 1:
                return WriteReport(rejected={outcomes[0].job.job_id: str(exc)})
        report = WriteReport()
        for outcome in outcomes:
            try:
                async with translated(self.pool), self.pool.acquire() as conn:
                    await self._write(conn, [outcome], report)
            except ValueRefused as exc:
                report.rejected[outcome.job.job_id] = str(exc)
        return report

    async def _write(self, conn: Connection, outcomes: Sequence[Outcome],
                     report: WriteReport) -> None:
        results = [_result_row(o.job.job_id, o.decision) for o in outcomes
                   if isinstance(o.decision, Land)]
        stucks = [_stuck_row(o.job.job_id, o.decision) for o in outcomes
                  if isinstance(o.decision, Stuck)]
        row = await conn.fetchrow(SQL["write"], *JOB_COLUMNS.arrays([_job_row(o) for o in outcomes]),
                                  *RESULT_COLUMNS.arrays(results), *STUCK_COLUMNS.arrays(stucks))
        assert row is not None
        written = set(row["written"])
        report.written |= written
        report.fenced |= {o.job.job_id for o in outcomes} - written
        report.landed += sum(1 for r in results if r["job_id"] in written)

    async def release(self, rows: Sequence[ReleaseRow]) -> set[UUID]:
        """Give jobs back without charging an attempt (shutdown, auth circuit, pause)."""
        if not rows:
            return set()
        values = [{"job_id": r.job.job_id, "lease_seq": r.job.lease_seq, "delay": r.delay,
                   "polled": int(r.polled), "status": r.status, "error": r.error} for r in rows]
        async with translated(self.pool):
            result = await self.pool.fetch(SQL["release"], *RELEASE_COLUMNS.arrays(values))
        return {r["job_id"] for r in result}

    # ------------------------------------------------------------ daemons

    async def heartbeat(self, state: WorkerState) -> None:
        async with translated(self.pool):
            await self.pool.execute(
                SQL["heartbeat"],
                state.worker_id, state.hostname, state.pid, state.version, state.auth_circuit,
                state.paused_until, state.in_flight, state.send_rate, state.permission_circuit,
                state.upstream_alarm, state.upstream_clock_skew,
            )

    async def forget_worker(self, worker_id: str) -> None:
        async with translated():
            await self.pool.execute(SQL["forget_worker"], worker_id)
            await self.pool.execute(SQL["forget_stale_workers"])

    # ------------------------------------------------------------ notifications

    async def announce_pace(self, payload: str) -> None:
        """NOTIFY the other daemons that upstream refused this one (README "Pace")."""
        await listen.announce_pace(self.pool, payload)

    async def listen_for_jobs(self, on_fed: Callable[[], None],
                              on_listening: Callable[[bool], None],
                              on_pace: Callable[[str], None]) -> None:
        """LISTEN for fed jobs and the other daemons' refusals until cancelled
        (:func:`harvester.store.listen.listen_for_jobs`)."""
        await listen.listen_for_jobs(self.dsn, on_fed, on_listening, on_pace)


def _job_row(outcome: Outcome) -> dict[str, Any]:
    """The jobs-table columns an outcome writes (README "How upstream answers are handled")."""
    job, d = outcome.job, outcome.decision
    row: dict[str, Any] = {
        "job_id": job.job_id, "lease_seq": job.lease_seq, "polled": int(outcome.polled),
        "seen": outcome.seen, "keep_answer": False, "attempt": job.attempt,
        "c500": job.consecutive_500s, "c403": 0, "failed_reason": None, "step": None,
        "delay": 0.0, "status": None, "error": None, "due_at": None,
    }
    if isinstance(d, Land):
        row.update(state="landed", status=d.status, attempt=0, c500=0)
    elif isinstance(d, Retry):
        row.update(state=d.state, delay=d.delay, status=d.status, error=d.error,
                   keep_answer=d.keep_last_answer, attempt=d.attempt, c500=d.consecutive_500s,
                   step=d.step, due_at=d.due_at,
                   c403=job.consecutive_403s if d.keep_last_answer else 0)
    elif isinstance(d, Stuck):
        row.update(state="stuck", delay=d.delay, status=d.status, step="result",
                   error=f"stuck: {d.consecutive_500s} consecutive 500s", attempt=d.attempt,
                   c500=d.consecutive_500s)
    elif isinstance(d, Fail):
        row.update(state="failed", status=d.status, error=d.error, failed_reason=d.reason,
                   c403=job.consecutive_403s)
    else:  # Hold: no attempt charged, state unchanged; the request still counts as a poll.
        row.update(state=job.state, delay=d.delay, status=d.status, error=d.error,
                   c403=d.consecutive_403s)
    return row


def _job(r: asyncpg.Record) -> Job:
    return Job(job_id=r["job_id"], state=r["state"], age_origin=r["age_origin"],
               polls=r["polls"], attempt=r["attempt"], consecutive_500s=r["consecutive_500s"],
               lease_seq=r["lease_seq"], next_step=r["next_step"],
               upstream_status=r["upstream_status"], status_since=r["status_since"],
               finished_seen_at=r["finished_seen_at"], consecutive_403s=r["consecutive_403s"])


def _result_row(job_id: UUID, land: Land) -> dict[str, Any]:
    r = land.result
    return {"job_id": job_id, "id": r.id, "org_id": r.org_id, "domain": r.domain,
            "schema_id": r.schema_id, "data_type": r.data_type, "raw_blob_key": r.raw_blob_key,
            "quality_completeness": r.quality_completeness,
            "quality_validation": r.quality_validation,
            "quality_composite": r.quality_composite, "latency_ms": r.latency_ms,
            "delivered_at": r.delivered_at, "created_at": r.created_at,
            "payload_text": land.payload}


def _stuck_row(job_id: UUID, stuck: Stuck) -> dict[str, Any]:
    return {"job_id": job_id, "status": stuck.status, "body": stuck.body, "newly": stuck.newly}

