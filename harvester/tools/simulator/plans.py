"""The simulated upstream's pure part: the mixes, each job's plan, the rows it serves.

Each job's fate is drawn deterministically from its ID and a seed according to a
:class:`Mix` (how many 202s before landing, the Retry-After style, shares of stuck,
404, 403, malformed, slow and faulting jobs), or scripted step by step (:class:`Step`,
:class:`Plan`). Nothing here opens a socket or imports aiohttp: the in-memory fakes of
the tests (tests/fakes.py) serve the same rows (:func:`result_row`) without a server.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

ORG_ID: Final = UUID("0b9d3a52-7c2e-4d1f-9a57-3c1f0e6b8a21")
ROW_NAMESPACE: Final = UUID("6f1c2b7e-3d44-4a9b-8e0f-2a7c9b1d5e63")
DOMAINS: Final = ("shop.example.com", "news.example.org", "jobs.example.net",
                  "travel.example.io", "docs.example.dev")
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


# ---------------------------------------------------------------- --set


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
