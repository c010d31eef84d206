"""The engine's two ports, the purge's, the operators', and the values that cross them.

The engine talks to the database and to upstream only through these protocols
(implemented by :class:`harvester.store.queue.QueueStore` and
:class:`harvester.upstream.Upstream`, and in the tests by in-memory fakes), so it imports
neither asyncpg nor aiohttp and is tested in-process in seconds. The retention purge
(:mod:`harvester.retention`) sees the database through :class:`RetentionPort` in the same
way, and the operators' surfaces (the admin API, readiness, /metrics, the commands)
through :class:`OperatorPort`: each adapter of :mod:`harvester.store` loads only its own
statements, so the engine's never holds the operators' SQL.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from harvester.policy import Answer, Decision, Job, StatusAnswer

__all__ = ["AckReport", "JobCursor", "OperatorPort", "Outcome", "PurgeBatches", "ReleaseRow",
           "RequeueReport", "RetentionPort", "Selection", "StatusAnswer", "StorePort",
           "UpstreamPort", "WorkerState", "WriteReport", "json_default"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision for one claimed job, ready to be written under its fence.

    ``seen`` is what batch-status said about the job in this round (``unknown`` when it
    left it out; None: not asked); ``polled`` is False when no result GET was made;
    ``answered_at`` is the Unix time of the answer that decided it."""

    job: Job
    decision: Decision
    seen: str | None = None
    polled: bool = True
    answered_at: float | None = None


@dataclass(slots=True)
class WriteReport:
    """What a batch write did: which jobs were written, which were fenced off."""

    written: set[UUID] = field(default_factory=set)
    fenced: set[UUID] = field(default_factory=set)
    rejected: dict[UUID, str] = field(default_factory=dict)
    landed: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """A job given back without a decision, due again after ``delay`` seconds."""

    job: Job
    delay: float
    polled: bool = False
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One daemon as ``harvester status`` shows it (the heartbeat)."""

    worker_id: str
    hostname: str
    pid: int
    version: str
    auth_circuit: str
    permission_circuit: str
    paused_until: datetime | None
    in_flight: int
    send_rate: float | None
    upstream_alarm: str | None
    upstream_clock_skew: float | None = None
    """Upstream's clock minus ours, in seconds (None: not measured yet)."""


@dataclass(slots=True)
class RequeueReport:
    """What a requeue did; ``landed`` and ``unknown`` are filled when IDs were given:
    ``landed`` are IDs that had landed (their queue row landed, or gone with retention
    while the mirror keeps their row) and are polled again on purpose; ``unknown`` are
    IDs neither in the queue nor in the mirror (nothing to requeue)."""

    requeued: int = 0
    landed: list[UUID] = field(default_factory=list)
    unknown: list[UUID] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Selection:
    """Which jobs a requeue without IDs aims at: a state, and optionally failure reasons
    and an age window. Age is how long the job has been in its state: since it failed,
    or since its open stuck record was first seen."""

    state: Literal["failed", "stuck"]
    reasons: tuple[str, ...] = ()
    older_than: float | None = None  # seconds
    newer_than: float | None = None


@dataclass(slots=True)
class AckReport:
    """What acknowledging stuck records did, ID by ID."""

    acknowledged: list[UUID] = field(default_factory=list)
    closed_already: list[tuple[UUID, str, str | None]] = field(default_factory=list)
    never_stuck: list[UUID] = field(default_factory=list)
    unknown: list[UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class JobCursor:
    """Where the next page of a job list starts: the sort time and job_id of the last
    row shown. Its text form is opaque to users (``harvester jobs --after``)."""

    at: datetime
    job_id: UUID

    def __str__(self) -> str:
        raw = f"{self.at.isoformat()}|{self.job_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> JobCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            at, _, job_id = raw.partition("|")
            parsed = datetime.fromisoformat(at)
            if parsed.tzinfo is None:
                raise ValueError("naive time")
            return cls(parsed, UUID(job_id))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("not a cursor from a previous page") from exc


def json_default(value: Any) -> Any:
    """The store's values that JSON lacks (timestamps, UUIDs), for ``json.dumps`` in the
    CLI's ``--json`` and the admin API."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(type(value).__name__)


class UpstreamPort(Protocol):
    """What the engine needs of upstream."""

    async def fetch_result(self, job_id: UUID) -> Answer: ...

    async def batch_status(self, job_ids: Sequence[UUID]) -> StatusAnswer: ...


class StorePort(Protocol):
    """What the engine needs of the database."""

    async def claim(self, limit: int, lease_seconds: float, worker_id: str) -> list[Job]: ...

    async def claim_soon(self, limit: int, lease_seconds: float, worker_id: str,
                         within: float) -> list[Job]:
        """Claim jobs whose status check is due within ``within`` seconds."""
        ...

    async def next_due_at(self) -> datetime | None: ...

    async def write(self, outcomes: Sequence[Outcome]) -> WriteReport: ...

    async def release(self, rows: Sequence[ReleaseRow]) -> set[UUID]: ...

    async def heartbeat(self, state: WorkerState) -> None: ...

    async def forget_worker(self, worker_id: str) -> None: ...

    async def announce_pace(self, payload: str) -> None:
        """Tell the other daemons sharing the database (their ``on_pace``)."""
        ...

    async def listen_for_jobs(self, on_fed: Callable[[], None],
                              on_listening: Callable[[bool], None],
                              on_pace: Callable[[str], None]) -> None:
        """Run until cancelled, calling ``on_fed`` when jobs are fed, ``on_listening``
        when notifications start or stop arriving (the engine polls meanwhile), and
        ``on_pace`` with what another daemon announced."""
        ...


class PurgeBatches(Protocol):
    """The purge's batches while this replica holds the purge lock: each call is one
    transaction deleting at most ``limit`` rows older than ``older_than`` seconds, and
    returns how many it deleted."""

    async def purge_finished(self, older_than: float, limit: int) -> int: ...

    async def purge_results(self, older_than: float, limit: int) -> int: ...


class RetentionPort(Protocol):
    """What the retention purge needs of the database."""

    def purging(self) -> AbstractAsyncContextManager[PurgeBatches | None]:
        """This replica's turn to purge, held until the context ends; None while
        another replica's purge runs."""
        ...


class OperatorPort(Protocol):
    """What the operators' surfaces need of the database: the commands, the admin API's
    job endpoints, readiness and the queue gauges of /metrics.

    The adapter (:class:`harvester.store.operators.OperatorStore`) also takes a
    connection in a transaction for its writes, so that a command streaming IDs commits
    once; the admin API and the daemon never need that."""

    async def enqueue(self, job_ids: Sequence[UUID]) -> int:
        """Insert new jobs, due now; how many were new."""
        ...

    async def requeue(self, *, job_ids: Sequence[UUID] | None = None,
                      state: Literal["failed", "stuck"] | None = None,
                      selection: Selection | None = None,
                      dry_run: bool = False) -> RequeueReport: ...

    async def acknowledge_stuck(self, job_ids: Sequence[UUID], by: str,
                                note: str) -> AckReport: ...

    async def status(self) -> dict[str, Any]:
        """The numbers `harvester status` prints."""
        ...

    async def queue_gauges(self) -> dict[str, float]:
        """The queue's numbers for /metrics."""
        ...

    async def stuck_records(self, which: Literal["open", "resolved", "all"] = "open",
                            limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Stuck records (at most ``limit``) and how many there are in all."""
        ...

    async def list_jobs(self, state: str, *, reasons: Sequence[str] = (), limit: int = 100,
                        after: JobCursor | None = None
                        ) -> tuple[list[dict[str, Any]], JobCursor | None]:
        """One page of jobs in ``state`` and the cursor of the next page (None: last)."""
        ...

    async def job(self, job_id: UUID) -> dict[str, Any] | None:
        """One job as the admin API shows it, or None."""
        ...

    async def ping(self) -> None:
        """Raise :class:`~harvester.errors.StoreError` unless the database answers."""
        ...
