"""What the simulated upstream remembers while it serves: each job's record, the
gateway's token bucket, the windows of trouble opened through the control API, the
counters it reports (``/_sim/stats``) and, when recording, every request served.

No sockets here: :mod:`harvester.tools.simulator.app` serves from this state.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from harvester.tools.simulator.plans import Mix, Plan, plan_for


@dataclass(slots=True)
class Gateway:
    """A token bucket over every request, as an API gateway in front of upstream: ``rate``
    requests/s on average, ``burst`` at once; beyond it, 429 + Retry-After."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def admit(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class JobRecord:
    first_seen: float = field(default_factory=time.monotonic)
    first_seen_wall: float = field(default_factory=time.time)
    status_asks: int = 0
    polls: int = 0
    in_flight: int = 0
    not_before: float = 0.0
    ready_wall: float | None = None
    """Wall-clock time from which the last 202 allowed the next poll (landing-lag origin)."""
    served_rows: int = 0
    last_status: int | None = None


@dataclass
class Served:
    """One request as served (kept only when recording)."""

    job_id: str
    started: float
    finished: float
    status: int
    kind: str
    retry_after: float | None
    authorized: bool


@dataclass
class SimulatorState:
    mix: Mix
    token: str | None
    record: bool = True
    jobs: dict[UUID, JobRecord] = field(default_factory=dict)
    scripts: dict[UUID, Plan] = field(default_factory=dict)
    log: list[Served] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    batch_requests: int = 0
    overlaps: int = 0
    early_polls: int = 0
    early_examples: list[dict[str, Any]] = field(default_factory=list)
    unauthorized_until: float = 0.0
    forbidden_until: float = 0.0
    """Until then every request is refused 403 (a token that lost jobs:read)."""
    status_outage_until: float = 0.0
    status_outage_status: int = 500
    """Until then batch-status itself answers this status (result GETs are unaffected)."""
    rate_limited_until: float = 0.0
    rate_limit_retry_after: float = 1.0
    rate_limit_style: str = "header"
    outage_until: float = 0.0
    outage_status: int = 502
    pauses: list[tuple[float, float]] = field(default_factory=list)
    """Wall-clock windows a 429/503 Retry-After asked every client to hold off."""
    started_at: float = field(default_factory=time.monotonic)
    batch_ids: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    """batch-status calls by IDs asked about, in buckets of ten (0: 1-10, …)."""
    gateway: Gateway | None = None
    rate_limited: int = 0
    """Requests the gateway limit answered with 429."""
    answered_429: int = 0
    """Every 429 (gateway or a 429 window), result GETs and batch-status calls alike."""
    during_pause: int = 0
    """Requests that arrived while a 429/503 the simulator had just sent asked to wait."""
    pause_until: float = 0.0

    def __post_init__(self) -> None:
        if self.mix.rate_limit > 0:
            self.gateway = Gateway(self.mix.rate_limit, self.mix.rate_burst)

    def plan(self, job_id: UUID) -> Plan:
        scripted = self.scripts.get(job_id)
        return scripted if scripted is not None else plan_for(job_id, self.mix)

    def record_for(self, job_id: UUID) -> JobRecord:
        """The job's record; the first time the simulator hears of it starts its timeline."""
        record = self.jobs.get(job_id)
        if record is None:
            record = self.jobs[job_id] = JobRecord()
        return record

    def phase(self, plan: Plan, record: JobRecord, now: float) -> str:
        """Where the job's timeline is: running, indexing or done."""
        elapsed = max(0.0, now - record.first_seen)
        if elapsed < plan.run:
            return "running"
        if elapsed < plan.run + plan.index:
            return "indexing"
        return "done"

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batch_requests": self.batch_requests,
            "batch_ids": self.batch_ids,
            "batch_sizes": {f"{k * 10 + 1}-{k * 10 + 10}": v
                            for k, v in sorted(self.batch_sizes.items())},
            "rate_limited": self.rate_limited,
            "answered_429": self.answered_429,
            "during_pause": self.during_pause,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "jobs_seen": len(self.jobs),
            "rows_served": sum(r.served_rows for r in self.jobs.values()),
            "overlaps": self.overlaps,
            "early_polls": self.early_polls,
            "early_examples": self.early_examples[:10],
            "uptime": time.monotonic() - self.started_at,
        }
