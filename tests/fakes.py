"""In-memory fakes of the engine's two ports, for fast in-process engine tests.

:class:`MemoryStore` keeps the queue in a dict with the same rules as the SQL (a job is
due when open, its next poll time has passed and no live lease holds it; every claim
bumps the fencing token; a write with a stale token is fenced off). :class:`ScriptedUpstream`
answers from per-job scripts. Neither knows asyncpg or aiohttp, so the engine runs over
them in seconds (README "Test it"); the real adapters are tested against a real
PostgreSQL and a real HTTP server elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from harvester.errors import StoreError, StoreUnavailable
from harvester.policy import (
    Answer,
    Fail,
    Hold,
    Job,
    Land,
    Response,
    Retry,
    StatusAnswer,
    Stuck,
)
from harvester.ports import Outcome, ReleaseRow, WorkerState, WriteReport
from harvester.tools.simulator.plans import result_row


@dataclass
class Row:
    job_id: UUID
    state: str = "pending"
    next_poll: float = 0.0
    enqueued_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    polls: int = 0
    attempt: int = 0
    consecutive_500s: int = 0
    consecutive_403s: int = 0
    lease_seq: int = 0
    leased_until: float = 0.0
    next_step: str = "status"
    upstream_status: str | None = None
    status_checks: int = 0
    last_status: int | None = None
    last_error: str | None = None
    failed_reason: str | None = None


class MemoryStore:
    """The queue in a dict (monotonic time for due times and leases)."""

    def __init__(self) -> None:
        self.rows: dict[UUID, Row] = {}
        self.mirror: dict[UUID, str] = {}
        self.writes: list[list[Outcome]] = []
        self.releases: list[ReleaseRow] = []
        self.fenced_writes = 0
        self.heartbeats: list[WorkerState] = []
        self.fail_writes: Callable[[Sequence[Outcome]], Exception | None] | None = None
        self.unavailable = False
        self.fault: StoreError | None = None
        """Raised by every operation while set (``unavailable``: a plain outage)."""
        self.claims = 0
        self.announced: list[str] = []
        self._on_fed: Callable[[], None] | None = None
        self._on_pace: list[Callable[[str], None]] = []

    # ------------------------------------------------------------ test helpers

    def feed(self, ids: Sequence[UUID], *, step: str = "status") -> None:
        for job_id in ids:
            self.rows.setdefault(job_id, Row(job_id, next_poll=time.monotonic(), next_step=step))
        if self._on_fed is not None:
            self._on_fed()

    def states(self) -> dict[str, int]:
        counts = {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
        for row in self.rows.values():
            counts[row.state] += 1
        return counts

    def steal(self, job_id: UUID) -> None:
        """Another daemon claims the job (its lease lapsed): this daemon's write is stale."""
        self.rows[job_id].lease_seq += 1

    # ------------------------------------------------------------ the port

    def _check(self) -> None:
        if self.unavailable:
            raise StoreUnavailable("database unavailable: the fake is away")
        if self.fault is not None:
            raise self.fault

    async def claim(self, limit: int, lease_seconds: float, worker_id: str) -> list[Job]:
        self._check()
        self.claims += 1
        now = time.monotonic()
        due = sorted((r for r in self.rows.values()
                      if r.state in ("pending", "stuck") and r.next_poll <= now
                      and r.leased_until <= now), key=lambda r: r.next_poll)[:limit]
        jobs = []
        for row in due:
            row.lease_seq += 1
            row.leased_until = now + lease_seconds
            jobs.append(Job(job_id=row.job_id, state=row.state, age_origin=row.enqueued_at,
                            polls=row.polls, attempt=row.attempt,
                            consecutive_500s=row.consecutive_500s, lease_seq=row.lease_seq,
                            next_step=row.next_step,  # type: ignore[arg-type]
                            upstream_status=row.upstream_status,
                            consecutive_403s=row.consecutive_403s))
        return jobs

    async def claim_soon(self, limit: int, lease_seconds: float, worker_id: str,
                         within: float) -> list[Job]:
        soon = [r for r in self.rows.values() if r.next_step == "status"
                and time.monotonic() < r.next_poll <= time.monotonic() + within]
        for row in soon:  # claim() takes what is due now: make these due now
            row.next_poll = time.monotonic()
        return await self.claim(limit, lease_seconds, worker_id)

    async def next_due_at(self) -> datetime | None:
        self._check()
        now = time.monotonic()
        due = [r.next_poll for r in self.rows.values()
               if r.state in ("pending", "stuck") and r.leased_until <= now]
        if not due:
            return None
        return datetime.now(UTC) + timedelta(seconds=min(due) - now)

    async def write(self, outcomes: Sequence[Outcome]) -> WriteReport:
        self._check()
        if self.fail_writes is not None:
            problem = self.fail_writes(outcomes)
            if problem is not None:
                raise problem
        self.writes.append(list(outcomes))
        report = WriteReport()
        now = time.monotonic()
        for outcome in outcomes:
            row = self.rows[outcome.job.job_id]
            if row.lease_seq != outcome.job.lease_seq:
                report.fenced.add(row.job_id)
                self.fenced_writes += 1
                continue
            report.written.add(row.job_id)
            row.leased_until = 0.0
            row.polls += int(outcome.polled)
            if outcome.seen is not None:
                row.upstream_status = outcome.seen
                row.status_checks += 1
            d = outcome.decision
            if isinstance(d, Land):
                row.state, row.last_status, row.consecutive_403s = "landed", 200, 0
                self.mirror[row.job_id] = d.payload
                report.landed += 1
            elif isinstance(d, Fail):
                row.state, row.failed_reason, row.last_error = "failed", d.reason, d.error
            elif isinstance(d, Stuck):
                row.state, row.next_poll = "stuck", now + d.delay
                row.consecutive_500s, row.attempt, row.next_step = (
                    d.consecutive_500s, d.attempt, "result")
            elif isinstance(d, Retry):
                row.state, row.next_poll = d.state, now + d.delay
                row.attempt, row.consecutive_500s, row.next_step = (
                    d.attempt, d.consecutive_500s, d.step)
                if not d.keep_last_answer:
                    row.last_status, row.last_error = d.status, d.error
                    row.consecutive_403s = 0
            elif isinstance(d, Hold):
                row.next_poll = now + d.delay
                row.last_status, row.last_error = d.status, d.error
                row.consecutive_403s = d.consecutive_403s
        return report

    async def release(self, rows: Sequence[ReleaseRow]) -> set[UUID]:
        self._check()
        self.releases.extend(rows)
        done = set()
        now = time.monotonic()
        for release in rows:
            row = self.rows[release.job.job_id]
            if row.lease_seq != release.job.lease_seq:
                continue
            row.leased_until = 0.0
            row.next_poll = now + release.delay
            row.polls += int(release.polled)
            done.add(row.job_id)
        return done

    async def heartbeat(self, state: WorkerState) -> None:
        self._check()
        self.heartbeats.append(state)

    async def forget_worker(self, worker_id: str) -> None:
        return None

    async def announce_pace(self, payload: str) -> None:
        """Every engine listening on this store hears it (the sender too, as from
        PostgreSQL)."""
        self._check()
        self.announced.append(payload)
        for on_pace in list(self._on_pace):
            on_pace(payload)

    async def listen_for_jobs(self, on_fed: Callable[[], None],
                              on_listening: Callable[[bool], None],
                              on_pace: Callable[[str], None]) -> None:
        self._on_fed = on_fed
        self._on_pace.append(on_pace)
        on_listening(True)
        try:
            await asyncio.Event().wait()
        finally:
            self._on_fed = None
            self._on_pace.remove(on_pace)


FORBIDDEN = Response(403, b'{"error": "insufficient permissions", "missing": ["jobs:read"]}',
                     "application/json")


def row_answer(job_id: UUID) -> Response:
    return Response(200, json.dumps(result_row(job_id)).encode(), "application/json")


class ScriptedUpstream:
    """Answers from scripts: ``results[job]`` a list of answers (the last repeats; a
    row by default), ``statuses[job]`` a list of batch-status answers (None: left out;
    ``completed`` by default), ``status_call`` a whole-call answer overriding them;
    ``refuse_all``: every GET answers 403, as to a token without jobs:read."""

    def __init__(self) -> None:
        self.refuse_all = False
        self.results: dict[UUID, list[Answer]] = {}
        self.statuses: dict[UUID, list[str | None]] = {}
        self.status_call: StatusAnswer | None = None
        self.latency = 0.0
        self.gets: list[UUID] = []
        self.calls: list[list[UUID]] = []
        self.in_flight = 0
        self.release = asyncio.Event()
        self.release.set()

    async def fetch_result(self, job_id: UUID) -> Answer:
        self.gets.append(job_id)
        self.in_flight += 1
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            await self.release.wait()
        finally:
            self.in_flight -= 1
        if self.refuse_all:
            return FORBIDDEN
        script = self.results.get(job_id)
        if not script:
            return row_answer(job_id)
        return script.pop(0) if len(script) > 1 else script[0]

    async def batch_status(self, job_ids: Sequence[UUID]) -> StatusAnswer:
        self.calls.append(list(job_ids))
        if self.status_call is not None:
            return self.status_call
        statuses: dict[UUID, str] = {}
        for job_id in job_ids:
            script = self.statuses.get(job_id)
            status: str | None = "completed"
            if script:
                status = script.pop(0) if len(script) > 1 else script[0]
            if status is not None:
                statuses[job_id] = status
        return StatusAnswer(statuses)


def answers_by(job_ids: Mapping[UUID, list[Answer]]) -> dict[UUID, list[Answer]]:
    return {k: list(v) for k, v in job_ids.items()}


__all__ = ["MemoryStore", "Row", "ScriptedUpstream", "StoreError", "row_answer"]
