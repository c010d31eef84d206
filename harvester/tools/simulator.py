"""The simulated upstream: the justcrawl API's paths, statuses, headers and bodies.

Each job's fate is drawn deterministically from its ID and a seed according to a
:class:`Mix` (how many 202s before landing, the Retry-After style, shares of stuck,
404, 403, malformed, slow and faulting jobs), or scripted step by step through the
control API. Jobs can also live a timeline, as jobs fed when their crawl starts do:
from the first time the simulator hears of a job it runs for a drawn time (404, and
``running`` in batch-status), then indexes (202 + Retry-After, ``extraction_done``),
then has its row (``completed``); batch-status answers from the same timeline. A gateway
limit (a token bucket over every request, 429 + Retry-After beyond it) can sit in
front, and windows of 401 (a revoked token), 429 and outage can be opened while it runs.
Its clock can be set apart from the machine's (``clock_skew``): the Date header and every
HTTP-date it sends are then on that clock, as a real upstream's would be, while its own
bookkeeping stays on the machine's.
It records what it served and checks the client's manners as it goes: polls earlier
than the Retry-After it gave, two requests in flight for one job at once, requests
sent while it had just asked for a pause.
The tests, the demo and the benchmark use it; so can anyone trying the daemon without
a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import math
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

from aiohttp import web

from harvester.api import BATCH_STATUS_LIMIT, BATCH_STATUS_PATH, RESULTS_PREFIX

ORG_ID: Final = UUID("0b9d3a52-7c2e-4d1f-9a57-3c1f0e6b8a21")
ROW_NAMESPACE: Final = UUID("6f1c2b7e-3d44-4a9b-8e0f-2a7c9b1d5e63")
DOMAINS: Final = ("shop.example.com", "news.example.org", "jobs.example.net",
                  "travel.example.io", "docs.example.dev")
EARLY_TOLERANCE: Final = 0.005
SIM_TOKEN: Final = "sim-token"  # noqa: S105 - the simulator's own fake token, not a secret


@dataclass(frozen=True)
class Mix:
    """Shares of behaviours; each job draws one fate. Shares that do not add up to 1
    leave the remainder to plain jobs (``pending`` 202s, then the row)."""

    pending_min: int = 0
    pending_max: int = 0
    retry_after: float = 1.0
    retry_after_style: str = "header"  # header | date | body | none | mixed
    stuck: float = 0.0                # 500 forever
    stuck_then_land: float = 0.0      # 500 × stuck_streak, then the row
    stuck_streak: int = 4
    not_found_failed: float = 0.0     # 404; batch-status says failed
    not_found_running: float = 0.0    # 404 and "running" for not_found_seconds, then the row
    not_found_unknown: float = 0.0    # 404; absent from batch-status
    forbidden: float = 0.0            # 403 with missing permissions
    gone: float = 0.0                 # 410 (another 4xx)
    malformed: float = 0.0            # a bad 200 (html, bad JSON, wrong job, bad field), then the row
    fault: float = 0.0                # 502/503/504 or a reset, then the row
    fault_polls: int = 2
    slow: float = 0.0                 # answers after slow_seconds, then the row
    slow_seconds: float = 3.0
    truncated: float = 0.0            # a body cut short, then the row
    huge: float = 0.0                 # a 50 MB body, then the row
    huge_bytes: int = 50 * 1024 * 1024
    latency: float = 0.0              # added to every answer
    done_share: float = 1.0           # timelines: share of jobs already finished when first heard of
    run_min: float = 0.0              # timelines: the others run this long (uniform draw) …
    run_max: float = 0.0              # … 404 and "running"; 0 means no timelines
    index_seconds: float = 0.0        # … then index this long: 202 + Retry-After, "extraction_done"
    not_found_seconds: float = 2.0    # not_found_running jobs: 404 and "running" this long
    rate_limit: float = 0.0           # gateway: requests/s over all clients (0: none)
    rate_burst: float = 30.0          # gateway: bucket size
    rate_retry_after: float = 1.0     # gateway: Retry-After of its 429s
    rate_retry_after_style: str = "header"  # 429s (gateway, 429 window, scripted): header | date
    clock_skew: float = 0.0           # its clock minus the machine's (s): Date, HTTP-dates
    seed: int = 1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Mix:
        presets: dict[str, dict[str, Any]] = {
            "first-poll": {},
            # Fed when the crawl starts: a quarter already finished, the rest finishing
            # 2–120 s later, then 4 s of indexing behind 202s (Retry-After 5).
            "lifecycle": {"done_share": 0.25, "run_min": 2.0, "run_max": 120.0,
                          "index_seconds": 4.0, "retry_after": 5.0},
            "pending": {"pending_min": 0, "pending_max": 5, "retry_after": 1.0},
            # Fed as crawls start: 30 % already finished, the rest finishing within 12 s,
            # then 2 s of indexing; a few of every kind of trouble.
            "demo": {"done_share": 0.3, "run_min": 1.0, "run_max": 12.0, "index_seconds": 2.0,
                     "pending_min": 0, "pending_max": 0, "retry_after": 1.0,
                     "retry_after_style": "mixed", "stuck": 0.03, "stuck_then_land": 0.01,
                     "not_found_failed": 0.02, "not_found_running": 0.03,
                     "not_found_unknown": 0.0, "forbidden": 0.005, "malformed": 0.01,
                     "fault": 0.02, "latency": 0.005},
            "chaos": {"pending_min": 0, "pending_max": 2, "retry_after": 1.0,
                      "retry_after_style": "mixed", "stuck": 0.03, "stuck_then_land": 0.02,
                      "not_found_failed": 0.02, "not_found_running": 0.02,
                      "forbidden": 0.01, "gone": 0.01, "malformed": 0.06, "fault": 0.12,
                      "slow": 0.02, "truncated": 0.03, "huge": 0.005, "latency": 0.002},
        }
        if name not in presets:
            raise ValueError(f"unknown mix {name!r}; choose from {', '.join(presets)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown mix field(s): {', '.join(sorted(unknown))}")
        mix = cls(**{**presets[name], **overrides})
        for field_name, allowed in (("retry_after_style", RETRY_AFTER_STYLES),
                                    ("rate_retry_after_style", PAUSE_STYLES)):
            if getattr(mix, field_name) not in allowed:
                raise ValueError(f"{field_name} must be one of {', '.join(allowed)} "
                                 f"(got {getattr(mix, field_name)!r})")
        return mix


RETRY_AFTER_STYLES: Final = ("header", "date", "body", "none", "mixed")
"""How a 202 names its wait: delta-seconds, an HTTP-date, only the body, nothing; or each
job one of the four."""
PAUSE_STYLES: Final = ("header", "date")
"""How a 429 (or a scripted 503) names its wait: delta-seconds or an HTTP-date."""


# ---------------------------------------------------------------- rows


def result_row(job_id: UUID, seed: int = 1) -> dict[str, Any]:
    """The row the simulator serves for ``job_id`` (deterministic; tests compare to it)."""
    h = hashlib.blake2b(job_id.bytes + seed.to_bytes(8, "big"), digest_size=16).digest()
    n = int.from_bytes(h, "big")
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n % 10_000_000)
    quality = [(n >> shift) % 1000 / 1000 for shift in (0, 10, 20)]
    return {
        "id": str(uuid.uuid5(ROW_NAMESPACE, str(job_id))),
        "orgId": str(ORG_ID),
        "jobId": str(job_id),
        "domain": DOMAINS[n % len(DOMAINS)],
        "schemaId": None if n % 7 == 0 else f"schema-{n % 13}",
        "dataType": ("product", "article", "listing")[n % 3],
        "normalized": {
            "title": f"Item {n % 100_000}",
            "price": {"amount": (n % 100_000) / 100, "currency": "EUR"},
            "tags": ["sim", f"t{n % 5}"],
            "inStock": bool(n & 1),
        },
        "rawBlobKey": None if n % 5 == 0 else f"raw/{job_id}.html.gz",
        "qualityCompleteness": quality[0],
        "qualityValidation": quality[1],
        "qualityComposite": round((quality[0] + quality[1]) / 2, 6),
        "latencyMs": None if n % 11 == 0 else int(n % 20_000),
        "deliveredAt": None if n % 3 == 0 else (created + timedelta(seconds=n % 600)).isoformat(),
        "createdAt": created.isoformat(),
        "simulatorExtra": {"seed": seed, "note": "unknown fields are kept in payload"},
    }


# ---------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class Step:
    """One answer. ``kind`` is an HTTP status as text, or ``slow``/``reset``/``truncated``/
    ``huge``/``html``/``badjson``/``mismatch``/``badfield``/``textplain``."""

    kind: str
    retry_after: float | None = None
    style: str = "header"

    @classmethod
    def parse(cls, text: str) -> Step:
        """``202``, ``202:3``, ``202:3:date``, ``429:2``, ``slow:4``, ``500``, ``200``…"""
        parts = text.strip().split(":")
        kind = parts[0]
        ra = float(parts[1]) if len(parts) > 1 and parts[1] else None
        style = parts[2] if len(parts) > 2 else "header"
        return cls(kind, ra, style)


@dataclass(slots=True)
class Plan:
    steps: list[Step]
    batch_status: str | None = "completed"
    """What batch-status says once the timeline is over (None: the job is left out)."""
    fate: str = "plain"
    run: float = 0.0
    """Seconds the job runs after the simulator first hears of it (404, ``running``)."""
    index: float = 0.0
    """Then seconds of indexing (202 + Retry-After, ``extraction_done``)."""
    statuses: list[str | None] | None = None
    """Scripted batch-status answers, one per call that asks about the job (the last
    repeats; None: left out); overrides the timeline and ``batch_status``."""


def _draw(job_id: UUID, seed: int, salt: int) -> float:
    digest = hashlib.blake2b(job_id.bytes + seed.to_bytes(8, "big") + salt.to_bytes(2, "big"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def plan_for(job_id: UUID, mix: Mix) -> Plan:
    """The deterministic fate of one job under ``mix``."""
    pick = _draw(job_id, mix.seed, 0)
    span = max(0, mix.pending_max - mix.pending_min)
    pending = mix.pending_min + int(_draw(job_id, mix.seed, 1) * (span + 1))
    styles = ("header", "date", "body", "none")
    style = (styles[int(_draw(job_id, mix.seed, 2) * 4)] if mix.retry_after_style == "mixed"
             else mix.retry_after_style)
    waits = [Step("202", mix.retry_after, style) for _ in range(pending)]
    row = Step("200")
    variant = int(_draw(job_id, mix.seed, 3) * 1000)

    shares = [
        ("stuck", mix.stuck), ("stuck_then_land", mix.stuck_then_land),
        ("not_found_failed", mix.not_found_failed), ("not_found_running", mix.not_found_running),
        ("not_found_unknown", mix.not_found_unknown), ("forbidden", mix.forbidden),
        ("gone", mix.gone), ("malformed", mix.malformed), ("fault", mix.fault),
        ("slow", mix.slow), ("truncated", mix.truncated), ("huge", mix.huge),
    ]
    fate = "plain"
    edge = 0.0
    for name, share in shares:
        edge += share
        if pick < edge:
            fate = name
            break

    run, index = _timeline(job_id, mix)
    if fate == "stuck":
        return Plan([*waits, Step("500")], fate=fate)
    if fate == "stuck_then_land":
        return Plan([*waits, *[Step("500")] * mix.stuck_streak, row], fate=fate)
    if fate == "not_found_failed":
        return Plan([Step("404")], batch_status="failed", fate=fate)
    if fate == "not_found_running":
        return Plan([*waits, row], fate=fate, run=mix.not_found_seconds)
    if fate == "not_found_unknown":
        return Plan([Step("404")], batch_status=None, fate=fate)
    if fate == "forbidden":
        return Plan([Step("403")], fate=fate)
    if fate == "gone":
        return Plan([Step("410")], fate=fate)
    if fate == "malformed":
        bad = ("html", "badjson", "mismatch", "badfield", "textplain")[variant % 5]
        return Plan([*waits, Step(bad), row], fate=f"malformed:{bad}", run=run, index=index)
    if fate == "fault":
        kind = ("502", "503", "504", "reset")[variant % 4]
        return Plan([*[Step(kind)] * mix.fault_polls, *waits, row], fate=f"fault:{kind}",
                    run=run, index=index)
    if fate == "slow":
        return Plan([Step("slow", mix.slow_seconds), *waits, row], fate=fate, run=run,
                    index=index)
    if fate == "truncated":
        return Plan([*waits, Step("truncated"), row], fate=fate, run=run, index=index)
    if fate == "huge":
        return Plan([*waits, Step("huge"), row], fate=fate, run=run, index=index)
    return Plan([*waits, row], fate=fate, run=run, index=index)


def _timeline(job_id: UUID, mix: Mix) -> tuple[float, float]:
    """(running, indexing) seconds of a job under ``mix``; (0, 0) when already finished."""
    if mix.run_max <= 0 or _draw(job_id, mix.seed, 4) < mix.done_share:
        return 0.0, 0.0
    span = max(0.0, mix.run_max - mix.run_min)
    return mix.run_min + _draw(job_id, mix.seed, 5) * span, mix.index_seconds


# ---------------------------------------------------------------- state


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


# ---------------------------------------------------------------- the app


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _retry_after(seconds: float, style: str, default: float, skew: float = 0.0
                 ) -> tuple[dict[str, str], float]:
    """The Retry-After header for a 202 (if its style has one) and the exact wait a
    polite client must observe: delta-seconds are whole, an HTTP-date names the next
    whole second (on upstream's clock, ``skew`` seconds ahead of the machine's), a
    body-only or silent 202 means the body value or the default."""
    if style in ("header", "date"):
        return _pause_header(seconds, style, skew)
    if style == "body":
        return {}, seconds
    return {}, default


def _pause_header(seconds: float, style: str, skew: float = 0.0) -> tuple[dict[str, str], float]:
    """``Retry-After`` as delta-seconds (whole, rounded up) or as an HTTP-date naming the
    next whole second at least ``seconds`` away on upstream's clock; and the exact wait."""
    if style == "date":
        upstream_now = time.time() + skew
        # The next whole second (a moment named again, for an early poll, is not pushed
        # to the second after it by the microseconds the clocks drift apart).
        when = math.ceil(upstream_now + seconds - 0.01)
        return ({"Retry-After": email.utils.formatdate(when, usegmt=True)},
                when - upstream_now)
    whole = max(0, math.ceil(seconds))
    return {"Retry-After": str(whole)}, float(whole)


def _named_moment(retry_after: str | None, skew: float = 0.0) -> float | None:
    """The machine's wall-clock moment a Retry-After HTTP-date names (None for
    delta-seconds): the date is on upstream's clock, ``skew`` seconds ahead."""
    if retry_after is None or retry_after.strip().isdigit():
        return None
    return email.utils.parsedate_to_datetime(retry_after).timestamp() - skew


class Simulator:
    """The aiohttp application and its state."""

    def __init__(self, mix: Mix, token: str | None = SIM_TOKEN, record: bool = True,
                 default_retry_after: float = 5.0) -> None:
        self.state = SimulatorState(mix=mix, token=token, record=record)
        self.default_retry_after = default_retry_after
        self._auth_header = f"Bearer {token}" if token else None
        self.skew = mix.clock_skew
        """Upstream's clock minus the machine's (Mix ``clock_skew``)."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        if self.skew:
            app.on_response_prepare.append(self._date_header)
        app.router.add_get(RESULTS_PREFIX + "{job_id}", self.result)
        app.router.add_post(BATCH_STATUS_PATH, self.batch_status)
        app.router.add_get("/_sim/stats", self.stats)
        app.router.add_get("/_sim/log", self.served_log)
        app.router.add_get("/_sim/ready", self.ready_times)
        app.router.add_post("/_sim/script", self.script)
        app.router.add_post("/_sim/control", self.control)
        app.router.add_get("/", self.dashboard)
        return app

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's Date on upstream's clock (aiohttp adds the machine's otherwise)."""
        response.headers["Date"] = email.utils.formatdate(time.time() + self.skew, usegmt=True)

    # ------------------------------------------------------------ control

    def set_token(self, token: str | None) -> None:
        self.state.token = token
        self._auth_header = f"Bearer {token}" if token else None

    def apply_control(self, document: dict[str, Any]) -> None:
        now = time.monotonic()
        if "token" in document:
            self.set_token(document["token"])
        if "unauthorized_for" in document:
            self.state.unauthorized_until = now + float(document["unauthorized_for"])
        if "forbidden_for" in document:
            self.state.forbidden_until = now + float(document["forbidden_for"])
        if "status_outage_for" in document:
            self.state.status_outage_until = now + float(document["status_outage_for"])
            self.state.status_outage_status = int(document.get("status", 500))
        if "rate_limit_for" in document:
            self.state.rate_limited_until = now + float(document["rate_limit_for"])
            self.state.rate_limit_retry_after = float(document.get("retry_after", 1.0))
            style = document.get("retry_after_style", self.state.mix.rate_retry_after_style)
            self.state.rate_limit_style = style if style in PAUSE_STYLES else "header"
        if "outage_for" in document:
            self.state.outage_until = now + float(document["outage_for"])
            self.state.outage_status = int(document.get("status", 502))
        if "record" in document:
            self.state.record = bool(document["record"])
        if "rate_limit" in document:
            # The gateway limit changes (0 removes it); a fresh bucket at the new rate.
            rate = float(document["rate_limit"])
            burst = float(document.get("rate_burst", self.state.mix.rate_burst))
            self.state.gateway = Gateway(rate, burst) if rate > 0 else None

    def apply_script(self, document: dict[str, Any]) -> None:
        """Jobs scripted step by step: ``jobs`` {id: [result steps]}, and optionally
        ``batch_status`` {id: status or null}, ``status`` {id: [one status per batch-status
        call]}, ``run`` / ``index`` {id: seconds of running / indexing}."""
        single = document.get("batch_status", {})
        sequences = document.get("status", {})
        runs, indexes = document.get("run", {}), document.get("index", {})
        for raw_id, steps in document.get("jobs", {}).items():
            job_id = UUID(raw_id)
            sequence = sequences.get(raw_id)
            self.state.scripts[job_id] = Plan(
                [Step.parse(s) for s in steps],
                batch_status=single.get(raw_id, "completed"), fate="scripted",
                run=float(runs.get(raw_id, 0.0)), index=float(indexes.get(raw_id, 0.0)),
                statuses=list(sequence) if sequence is not None else None)

    async def control(self, request: web.Request) -> web.Response:
        self.apply_control(await request.json())
        return _json({"ok": True}, 200)

    async def script(self, request: web.Request) -> web.Response:
        self.apply_script(await request.json())
        return _json({"ok": True}, 200)

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.state.stats(), 200)

    async def ready_times(self, request: web.Request) -> web.Response:
        """{job_id: wall-clock time upstream first had its row} for jobs whose row was
        served: the end of the job's timeline, or when the last 202 allowed the poll."""
        ready: dict[str, float] = {}
        for job_id, record in self.state.jobs.items():
            if not record.served_rows:
                continue
            plan = self.state.plan(job_id)
            if plan.run + plan.index > 0:
                ready[str(job_id)] = record.first_seen_wall + plan.run + plan.index
            elif record.ready_wall is not None:
                ready[str(job_id)] = self._effective_ready(record.ready_wall)
        return _json(ready, 200)

    def _effective_ready(self, ready: float) -> float:
        """A job ready during a global pause could only be polled once the pause ended."""
        for start, end in self.state.pauses:
            if start <= ready < end:
                ready = end
        return ready

    async def served_log(self, request: web.Request) -> web.Response:
        return _json([asdict(s) for s in self.state.log], 200)

    async def dashboard(self, request: web.Request) -> web.Response:
        # The old dashboard host answers unknown paths with its web page: so do we.
        return web.Response(text="<!doctype html><html><body>justcrawl dashboard</body></html>",
                            content_type="text/html")

    # ------------------------------------------------------------ API

    def _authorized(self, request: web.Request) -> bool:
        if time.monotonic() < self.state.unauthorized_until:
            return False
        return self._auth_header is None or request.headers.get("Authorization") == self._auth_header

    async def result(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        started = time.monotonic()
        state.requests += 1
        try:
            job_id = UUID(request.match_info["job_id"])
        except ValueError:
            state.statuses[400] += 1
            return _json({"error": "invalid job id"}, 400)
        record = state.record_for(job_id)
        if record.in_flight:
            state.overlaps += 1
        if started + EARLY_TOLERANCE < record.not_before:
            state.early_polls += 1
            if len(state.early_examples) < 50:
                state.early_examples.append({"job_id": str(job_id),
                                             "early_by": round(record.not_before - started, 3)})
        record.in_flight += 1
        status, kind, announced, named = 0, "", None, None
        try:
            if state.mix.latency:
                await asyncio.sleep(state.mix.latency)
            response, kind, announced = await self._answer(request, job_id, record)
            status = response.status
            named = _named_moment(response.headers.get("Retry-After"), self.skew)
            return response
        finally:
            record.in_flight -= 1
            finished = time.monotonic()
            if announced is not None and named is not None:
                # An HTTP-date names a moment, not a wait: a client may come back at that
                # second however long this answer took to leave (both clocks read here).
                announced = named - time.time()
            if announced is not None:
                record.not_before = finished + announced
                if kind in ("429", "503"):
                    self._announce_pause(announced)
                if kind == "202":
                    record.ready_wall = time.time() + announced
            elif kind != "200":
                # Any other answer in between (a fault, a 429) restarts the clock: the
                # landing lag measures how closely a client follows a 202's Retry-After.
                record.ready_wall = None
            record.last_status = status or None
            state.statuses[status] += 1
            if state.record:
                state.log.append(Served(str(job_id), started, finished, status, kind, announced,
                                        status != 401))

    def _announce_pause(self, seconds: float) -> None:
        wall = time.time()
        self.state.pauses.append((wall, wall + seconds))
        self.state.pause_until = max(self.state.pause_until, time.monotonic() + seconds)

    def _limited(self, now: float) -> tuple[web.Response, float] | None:
        """The gateway's (or a 429 window's) answer, if this request is refused."""
        state = self.state
        if now < state.pause_until:
            state.during_pause += 1
        if now < state.rate_limited_until:
            wait, style = float(math.ceil(state.rate_limit_retry_after)), state.rate_limit_style
        elif state.gateway is not None and not state.gateway.admit(now):
            state.rate_limited += 1
            wait, style = float(math.ceil(state.mix.rate_retry_after)), state.mix.rate_retry_after_style
        else:
            return None
        state.answered_429 += 1
        headers, exact = _pause_header(wait, style, self.skew)
        return _json({"error": "rate limited"}, 429, headers), exact

    async def _answer(self, request: web.Request, job_id: UUID, record: JobRecord
                      ) -> tuple[web.StreamResponse, str, float | None]:
        state = self.state
        now = time.monotonic()
        if not self._authorized(request):
            return _json({"error": "invalid or missing API token"}, 401), "401", None
        if now < state.forbidden_until:
            return _json({"error": "insufficient permissions", "missing": ["jobs:read"]},
                         403), "403", None
        limited = self._limited(now)
        if limited is not None:
            return limited[0], "429", limited[1]
        if now < state.outage_until:
            return _json({"error": "upstream outage"}, state.outage_status), "outage", None

        plan = state.plan(job_id)
        phase = state.phase(plan, record, now)
        if phase == "running":
            return _json({"error": "job not found"}, 404), "404", None
        if phase == "indexing":
            seconds = state.mix.retry_after
            headers, wait = _retry_after(seconds, "header", self.default_retry_after, self.skew)
            return _json({"indexingPending": True, "status": "extraction_done",
                          "retryAfterSeconds": seconds, "message": "result is being indexed"},
                         202, headers), "202", wait
        if record.polls and record.last_status == 202 and now + EARLY_TOLERANCE < record.not_before:
            # Back before the Retry-After it was given: still indexing, as a real upstream
            # would be, so a 202 again, naming the same moment (an early poll costs a
            # request, not a step).
            last = plan.steps[min(record.polls - 1, len(plan.steps) - 1)]
            step = replace(last, retry_after=record.not_before - now)
        else:
            step = plan.steps[min(record.polls, len(plan.steps) - 1)]
            record.polls += 1
        kind = step.kind

        if kind == "200":
            record.served_rows += 1
            return _json(result_row(job_id, state.mix.seed), 200), kind, None
        if kind == "202":
            seconds = step.retry_after if step.retry_after is not None else state.mix.retry_after
            body: dict[str, Any] = {"indexingPending": True, "status": "extraction_done",
                                    "message": "result is being indexed"}
            if step.style in ("header", "date", "body"):
                body["retryAfterSeconds"] = seconds
            headers, wait = _retry_after(seconds, step.style, self.default_retry_after, self.skew)
            return _json(body, 202, headers), kind, wait
        if kind in ("429", "503") and step.retry_after is not None:
            headers, wait = _pause_header(step.retry_after, step.style, self.skew)
            return _json({"error": "slow down"}, int(kind), headers), kind, wait
        if kind == "401":
            return _json({"error": "invalid token"}, 401), kind, None
        if kind == "403":
            return _json({"error": "insufficient permissions", "missing": ["jobs:read"]}, 403), kind, None
        if kind == "404":
            return _json({"error": "job not found"}, 404), kind, None
        if kind == "500":
            return _json({"error": "job is completed but no extraction_results row landed"}, 500), kind, None
        if kind == "slow":
            await asyncio.sleep(step.retry_after or 3.0)
            return _json(result_row(job_id, state.mix.seed), 200), kind, None
        if kind == "html":
            return web.Response(text="<!doctype html><html><body>dashboard</body></html>",
                                content_type="text/html"), kind, None
        if kind == "textplain":
            return web.Response(text="ok", content_type="text/plain"), kind, None
        if kind == "badjson":
            return web.Response(text='{"id": "oops", ', content_type="application/json"), kind, None
        if kind == "mismatch":
            return _json(result_row(uuid.uuid4(), state.mix.seed), 200), kind, None
        if kind == "badfield":
            row = result_row(job_id, state.mix.seed)
            row["createdAt"] = 12345
            row["qualityComposite"] = "high"
            return _json(row, 200), kind, None
        if kind == "truncated":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"id": "' + b"x" * 100)
            if request.transport is not None:
                request.transport.close()
            return resp, kind, None
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=599), kind, None
        if kind == "huge":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = b" " * 65536
            sent = 0
            with contextlib.suppress(ConnectionError, RuntimeError):
                while sent < state.mix.huge_bytes:
                    await resp.write(chunk)
                    sent += len(chunk)
                await resp.write_eof()
            return resp, kind, None
        if kind.isdigit():
            return _json({"error": f"simulated {kind}"}, int(kind)), kind, None
        return _json({"error": f"unknown simulated step {kind}"}, 500), kind, None

    async def batch_status(self, request: web.Request) -> web.Response:
        """POST batch-status; recorded in the log under job ``batch-status``."""
        started = time.monotonic()
        response = await self._batch_status(request, started)
        if self.state.record:
            announced = self.state.pause_until - started if response.status == 429 else None
            self.state.log.append(Served("batch-status", started, time.monotonic(),
                                         response.status, "status", announced,
                                         response.status != 401))
        return response

    async def _batch_status(self, request: web.Request, now: float) -> web.Response:
        state = self.state
        state.batch_requests += 1
        if not self._authorized(request):
            return _json({"error": "invalid or missing API token"}, 401)
        if now < state.forbidden_until:
            return _json({"error": "insufficient permissions", "missing": ["jobs:read"]}, 403)
        limited = self._limited(now)
        if limited is not None:
            self._announce_pause(limited[1])
            return limited[0]
        if now < state.outage_until:
            return _json({"error": "upstream outage"}, state.outage_status)
        if now < state.status_outage_until:
            return _json({"error": "batch-status unavailable"}, state.status_outage_status)
        try:
            document = await request.json()
            ids = [UUID(i) for i in document["jobIds"]]
        except (ValueError, KeyError, TypeError):
            return _json({"error": "body must be {\"jobIds\": [uuid, ...]}"}, 400)
        if len(ids) > BATCH_STATUS_LIMIT:
            return _json({"error": f"at most {BATCH_STATUS_LIMIT} jobIds"}, 400)
        state.batch_ids += len(ids)
        state.batch_sizes[max(0, len(ids) - 1) // 10] += 1
        updated_at = (datetime.now(UTC) + timedelta(seconds=self.skew)).isoformat()
        answer = []
        for job_id in ids:
            status = self._status_of(job_id, now)
            if status is None:
                continue
            answer.append({"id": str(job_id), "status": status, "currentNodeId": "extract",
                           "updatedAt": updated_at})
        return _json(answer, 200)

    def _status_of(self, job_id: UUID, now: float) -> str | None:
        """What batch-status says about a job right now (None: left out)."""
        state = self.state
        plan = state.plan(job_id)
        record = state.record_for(job_id)
        record.status_asks += 1
        if plan.statuses is not None:
            return plan.statuses[min(record.status_asks, len(plan.statuses)) - 1]
        phase = state.phase(plan, record, now)
        if phase == "running":
            return "running"
        if phase == "indexing":
            return "extraction_done"
        return plan.batch_status


async def serve(simulator: Simulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the simulator; returns the runner and the bound port."""
    runner = web.AppRunner(simulator.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound


# ---------------------------------------------------------------- the command


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs typed after the Mix field they name."""
    types = {f.name: f.type for f in fields(Mix)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(types)}")
        kind = str(types[name])
        try:
            overrides[name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
        except ValueError:
            raise ValueError(f"--set {pair!r}: {name} takes a {kind}") from None
    return overrides


def cmd_simulate(args: Any) -> int:
    from harvester.errors import UserError  # noqa: PLC0415

    try:
        mix = Mix.preset(args.mix, **parse_overrides(args.set))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    simulator = Simulator(mix, token=args.token or None, record=not args.no_record)

    async def main() -> None:
        runner, port = await serve(simulator, args.host, args.port)
        print(f"HARVESTER_API_BASE_URL=http://{args.host}:{port}", flush=True)
        if args.token:
            print(f"HARVESTER_API_TOKEN={args.token}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal  # noqa: PLC0415

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    return 0
