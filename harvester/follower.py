"""The status follower: claimed jobs that are not known to be finished, asked about in
batches through batch-status (README "How a job is followed").

The dispatcher hands it jobs whose next step is ``status``; it gathers up to 100 of them
(waiting at most :data:`LINGER` for a batch to fill), asks the gate for a slot like any
request, and carries out :func:`~harvester.status_policy.decide_status` for each job: a job
that has its row goes straight on to a result GET under the same lease (nothing is
written in between), the others are written back with their next check time. When
batch-status itself fails, the batch falls back to result GETs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from harvester.api import BATCH_STATUS_LIMIT
from harvester.batching import gather_batch
from harvester.observer import Observer
from harvester.pacing import Released
from harvester.policy import (
    UNKNOWN,
    Fetch,
    Job,
    PolicyConfig,
    Random,
)
from harvester.ports import Outcome, ReleaseRow, UpstreamPort
from harvester.status_policy import decide_status, judge_status_call, with_status
from harvester.upstream_view import UpstreamView

LINGER: Final = 0.02
"""Seconds a batch may wait for more jobs: claims arrive in bursts, so batches fill."""
CALLS: Final = 4
"""batch-status calls in flight at once."""
TOP_UP_WITHIN: Final = 1.0
"""A call with room also asks about jobs whose check is due within this many seconds
(every check interval is at least 2 s longer, so no job is asked about more often than
HARVESTER_STATUS_MIN_INTERVAL): fuller calls, fewer of them."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job in the daemon's hands, with what was learned about it in this round."""

    job: Job
    claimed_at: float
    seen: str | None = None
    """What batch-status said about it in this round (None: not asked)."""
    status_usable: bool = True


class StatusFollower:
    def __init__(self, upstream: UpstreamPort, view: UpstreamView, observer: Observer,
                 config: PolicyConfig, rand: Random, *,
                 fetch: Callable[[Claimed], None],
                 write: Callable[[Outcome], Awaitable[None]],
                 hand_back: Callable[[ReleaseRow], Awaitable[None]],
                 patience: Callable[[Claimed], float],
                 top_up: Callable[[int], Awaitable[list[Job]]] | None = None) -> None:
        self.upstream = upstream
        self.view = view
        self.gate = view.gate
        self.observer = observer
        self.config = config
        self.rand = rand
        self._fetch = fetch
        self._write = write
        self._hand_back = hand_back
        self._patience = patience
        self._top_up = top_up
        self.inbox: asyncio.Queue[Claimed] = asyncio.Queue()
        self._asking: dict[int, list[Claimed]] = {}

    @property
    def holding(self) -> int:
        """Jobs waiting for or inside a batch-status call."""
        return self.inbox.qsize() + sum(len(b) for b in self._asking.values())

    def follow(self, item: Claimed) -> None:
        self.inbox.put_nowait(item)

    def unasked(self) -> list[Claimed]:
        """Shutdown: every job not yet decided, taken out of the follower."""
        jobs = [c for batch in self._asking.values() for c in batch]
        self._asking.clear()
        while not self.inbox.empty():
            jobs.append(self.inbox.get_nowait())
        return jobs

    async def run(self, caller: int) -> None:
        """One of :data:`CALLS` loops, each with at most one call in flight."""
        while True:
            first = await self.inbox.get()
            batch = self._asking[caller] = []
            await gather_batch(self.inbox, first, BATCH_STATUS_LIMIT, LINGER, batch)
            if self._top_up is not None and len(batch) < BATCH_STATUS_LIMIT:
                claimed_at = time.monotonic()
                batch.extend(Claimed(job, claimed_at)
                             for job in await self._top_up(BATCH_STATUS_LIMIT - len(batch)))
            try:
                await self._ask(batch)
            finally:
                self._asking.pop(caller, None)

    async def _ask(self, batch: list[Claimed]) -> None:
        try:
            sent = await self.gate.admit(min(self._patience(c) for c in batch), "status")
        except Released as released:
            for item in batch:
                await self._hand_back(ReleaseRow(item.job, released.delay))
            return
        answer = await self.upstream.batch_status([c.job.job_id for c in batch])
        self.observer.dated(answer.date, self.gate.now() - sent)
        now = datetime.now(UTC)
        call = judge_status_call(answer, self.config, now, self.rand,
                                 self.observer.clock.floor)
        changes = self.view.status_answered(answer.status, sent, call, jobs=len(batch))
        self.observer.status_answered(len(batch), call, changes)
        if call.kind == "rate_limited":
            self.observer.rate_limited()
        if call.kind in ("unauthorized", "rate_limited"):
            delay = call.pause_for or 0.0
            for item in batch:
                await self._hand_back(ReleaseRow(item.job, delay))
            return
        if answer.statuses is None:
            # batch-status is failing: today's result polling, with backoff on 404s.
            for item in batch:
                self._fetch(Claimed(item.job, item.claimed_at, status_usable=False))
            return
        wall = time.time()
        for item in batch:
            seen = answer.statuses.get(item.job.job_id, UNKNOWN)
            decision = decide_status(item.job, seen, self.config, now)
            if isinstance(decision, Fetch):
                self._fetch(Claimed(with_status(item.job, seen, now), item.claimed_at, seen))
            else:
                await self._write(Outcome(item.job, decision, seen=seen, polled=False,
                                          answered_at=wall))
