"""The engine's two ports, the purge's, and the values that cross them.

The engine talks to the database and to upstream only through these protocols
(implemented by :class:`harvester.store.Store` and :class:`harvester.upstream.Upstream`,
and in the tests by in-memory fakes), so it imports neither asyncpg nor aiohttp and is
tested in-process in seconds. The retention purge (:mod:`harvester.retention`) sees the
database through :class:`RetentionPort` in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from uuid import UUID

from harvester.policy import Answer, Decision, Job, StatusAnswer

__all__ = ["Outcome", "PurgeBatches", "ReleaseRow", "RetentionPort", "StatusAnswer",
           "StorePort", "UpstreamPort", "WorkerState", "WriteReport"]


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
