"""The pure core: what to do with an upstream answer.

Given an answer (a response or a transport failure), the job's history and the policy
configuration, :func:`decide` returns a decision value; the engine only carries it out.
Nothing here touches a socket, a database or the clock: ``now`` and the random source
are arguments, so every row of SPEC section 4 is tested from a table, and the numeric
edges (Retry-After of ``-5``, ``1.5``, a date in 2100, attempt 10,000) with hypothesis.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from uuid import UUID

from pydantic import ValidationError

from harvester.model import ExtractionResult

Random = Callable[[], float]
"""A source of uniform floats in [0, 1): ``random.random`` in production."""

JITTER: Final = 0.05
"""Positive jitter on upstream-given delays: never earlier than asked, at most 5 % later.

SPEC allows up to 10 %; 5 % already spreads a herd of jobs that got the same 202 at the
same second (0.25 s over a 5 s Retry-After) while keeping the landing lag after a
Retry-After well inside half a second."""
FAULT_BACKOFF_BASE: Final = 1.0
FAULT_BACKOFF_CAP: Final = 300.0
NOT_FOUND_BACKOFF_BASE: Final = 5.0
NOT_FOUND_BACKOFF_CAP: Final = 300.0
NEARLY_READY_DELAY: Final = 1.0
ERROR_TEXT_LIMIT: Final = 500
STUCK_BODY_LIMIT: Final = 2000

IN_PROGRESS: Final = frozenset({"pending", "running", "waiting_retry", "extracting"})
NEARLY_READY: Final = frozenset({"extraction_done", "completed"})

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The settings the policy reads (a pure subset of :class:`harvester.settings.Settings`)."""

    default_retry_after: float = 5.0
    min_poll_interval: float = 1.0
    max_poll_interval: float = 3600.0
    not_found_timeout: float = 86400.0
    stuck_after: int = 3
    stuck_recheck: float = 900.0
    max_age: float = 7 * 86400.0

    @classmethod
    def from_settings(cls, settings: Any) -> PolicyConfig:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Job:
    """What the policy knows of a job: its history, as claimed."""

    job_id: UUID
    state: str
    age_origin: datetime
    """``requeued_at`` if set, else ``enqueued_at``: age limits count from here."""
    polls: int = 0
    attempt: int = 0
    consecutive_500s: int = 0
    lease_seq: int = 0


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer, its body already read within the size limit."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No usable HTTP answer: timeout, refused or reset connection, oversized body."""

    kind: Literal["timeout", "connection", "too_large", "protocol"]
    detail: str


Answer = Response | TransportFailure

# ---------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Land:
    """200 with a valid row for this job: upsert it and mark the job landed."""

    result: ExtractionResult
    payload: str
    status: int = 200


@dataclass(frozen=True, slots=True)
class Retry:
    """Poll again after ``delay`` seconds; the job stays open in ``state``."""

    delay: float
    status: int | None
    error: str | None
    attempt: int
    consecutive_500s: int
    state: Literal["pending", "stuck"] = "pending"
    upstream_status: str | None = None
    fault: bool = False
    """An upstream fault (5xx, transport): feeds the fleet-wide fault throttle."""


@dataclass(frozen=True, slots=True)
class Stuck:
    """Repeated 500s: the job is stuck; record it and re-check every STUCK_RECHECK."""

    delay: float
    status: int
    body: str
    consecutive_500s: int
    attempt: int
    newly: bool
    """True on the transition into ``stuck`` (the moment to notify and log)."""


@dataclass(frozen=True, slots=True)
class Fail:
    """Final: the job will not land. ``reason`` is machine-readable, ``error`` human."""

    reason: str
    error: str
    status: int | None
    upstream_status: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """No attempt charged: release the job, due again after ``delay``.

    ``auth_failed`` opens the auth circuit; ``pause_for`` pauses all dispatch.
    """

    delay: float
    status: int
    error: str
    auth_failed: bool = False
    pause_for: float | None = None


@dataclass(frozen=True, slots=True)
class CheckUpstream:
    """404: not final on its own; ask batch-status, then :func:`decide_not_found`."""

    status: int = 404


Decision = Land | Retry | Stuck | Fail | Hold | CheckUpstream

# ---------------------------------------------------------------- numbers


def clamp(value: float, low: float, high: float) -> float:
    if math.isnan(value):
        return low
    return min(max(value, low), high)


def backoff(attempt: int, *, base: float, cap: float, rand: float) -> float:
    """Exponential backoff with full jitter, floored at ``base``, capped at ``cap``.

    Safe for any attempt: the exponent is bounded before it is computed, so attempt
    10,000 (or a negative one) never overflows.
    """
    exponent = min(max(attempt, 0), 62)
    ceiling = min(cap, base * float(2**exponent))
    return base + (ceiling - base) * clamp(rand, 0.0, 1.0)


def doubling(attempt: int, *, base: float, cap: float) -> float:
    """Deterministic doubling from ``base`` to ``cap`` (the 404 in-progress schedule)."""
    exponent = min(max(attempt, 0), 62)
    return min(cap, base * float(2**exponent))


_DELTA_SECONDS = re.compile(r"(\d+)(?:\.(\d*))?", re.ASCII)
_HUGE = 1e12
_HUGE_DIGITS = 12
"""Whole seconds with more significant digits than this are at least ``_HUGE``."""


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait according to a Retry-After header value, or None if unusable.

    delta-seconds (``5``; a decimal such as ``1.5`` or ``5.`` is tolerated), or an
    HTTP-date (a past date means "now"). Negative numbers and garbage are unusable.
    A delta with more digits than any sane delay is still a request to wait, so it is
    returned as a huge number for the caller to clamp: were it "unusable", the caller
    would fall back to a default and poll earlier than upstream asked.
    """
    if value is None:
        return None
    text = value.strip()
    delta = _DELTA_SECONDS.fullmatch(text)
    if delta is not None:
        whole, fraction = delta.group(1).lstrip("0") or "0", delta.group(2) or ""
        if len(whole) > _HUGE_DIGITS:
            return _HUGE
        # Only the leading digits matter; float() never sees an absurdly long string.
        return min(float(f"{whole}.{fraction[:9] or 0}"), _HUGE)
    if not text or len(text) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return clamp((when - now).total_seconds(), 0.0, _HUGE)


def body_retry_after(document: Any) -> float | None:
    """``retryAfterSeconds`` from a JSON body, if it is a sane non-negative number."""
    if not isinstance(document, dict):
        return None
    raw = document.get("retryAfterSeconds")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    seconds = float(raw)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _HUGE)


def upstream_delay(
    header: str | None, document: Any, config: PolicyConfig, now: datetime, rand: float
) -> float:
    """The wait upstream asked for: header, else body, else default; clamped; jittered."""
    seconds = parse_retry_after(header, now)
    if seconds is None:
        seconds = body_retry_after(document)
    if seconds is None:
        seconds = config.default_retry_after
    bounded = clamp(seconds, config.min_poll_interval, config.max_poll_interval)
    return bounded * (1.0 + JITTER * clamp(rand, 0.0, 1.0))


def fault_delay(attempt: int, config: PolicyConfig, rand: float) -> float:
    base = max(FAULT_BACKOFF_BASE, config.min_poll_interval)
    return backoff(attempt, base=base, cap=max(base, FAULT_BACKOFF_CAP), rand=rand)


def not_found_delay(attempt: int, config: PolicyConfig, rand: float) -> float:
    base = max(NOT_FOUND_BACKOFF_BASE, config.min_poll_interval)
    return doubling(attempt, base=base, cap=max(base, NOT_FOUND_BACKOFF_CAP)) * (
        1.0 + JITTER * clamp(rand, 0.0, 1.0)
    )


# ---------------------------------------------------------------- helpers


def shorten(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """One printable line of at most ``limit`` characters (NULs cannot go to PostgreSQL)."""
    cleaned = text.replace("\x00", "\\0").replace("\r", " ").replace("\n", " ").strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def body_text(body: bytes, limit: int = STUCK_BODY_LIMIT) -> str:
    return shorten(body[: limit * 4].decode("utf-8", errors="replace"), limit)


def _json(response: Response) -> Any:
    """The body as JSON, or None. Deeply nested garbage (``[[[[…``) makes the json
    module raise RecursionError rather than ValueError; it must not escape and kill
    the worker that called :func:`decide`."""
    try:
        return json.loads(response.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _error_message(document: Any, fallback: str) -> str:
    if isinstance(document, dict):
        message = document.get("error") or document.get("message")
        if isinstance(message, str) and message.strip():
            return shorten(message, 200)
    return fallback


def is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def looks_like_html(response: Response) -> bool:
    """The old dashboard host answers unknown API paths with its web page."""
    media = (response.content_type or "").split(";", 1)[0].strip().lower()
    return response.status == 200 and (
        media == "text/html" or response.body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html"))
    )


def age_seconds(job: Job, now: datetime) -> float:
    return (now - job.age_origin).total_seconds()


# ---------------------------------------------------------------- the decision


def decide(
    answer: Answer, job: Job, config: PolicyConfig, now: datetime, rand: Random
) -> Decision:
    """The next step for ``job`` after ``answer`` (SPEC section 4, row by row)."""
    decision = _decide(answer, job, config, now, rand)
    if isinstance(decision, (Retry, Stuck)) and age_seconds(job, now) >= config.max_age:
        return Fail(
            reason="expired",
            error=f"unresolved {age_seconds(job, now) / 86400:.1f} days after enqueue "
            f"(HARVESTER_MAX_AGE); last answer: {_summary(decision)}",
            status=decision.status,
        )
    return decision


def _summary(decision: Retry | Stuck) -> str:
    if isinstance(decision, Stuck):
        return f"HTTP {decision.status} (stuck)"
    return decision.error or (f"HTTP {decision.status}" if decision.status else "no answer")


def _fault(job: Job, config: PolicyConfig, rand: Random, status: int | None, error: str) -> Retry:
    """A fault says nothing about the job: its state and 500 streak are kept."""
    attempt = job.attempt + 1
    state: Literal["pending", "stuck"] = "stuck" if job.state == "stuck" else "pending"
    delay = fault_delay(attempt - 1, config, rand())
    if state == "stuck":
        delay = max(delay, config.stuck_recheck)
    return Retry(delay=delay, status=status, error=shorten(error), attempt=attempt,
                 consecutive_500s=job.consecutive_500s, state=state, fault=True)


def _decide(answer: Answer, job: Job, config: PolicyConfig, now: datetime, rand: Random
            ) -> Decision:
    if isinstance(answer, TransportFailure):
        return _fault(job, config, rand, None, f"{answer.kind}: {answer.detail}")

    status = answer.status
    if status == 200:
        return _decide_200(answer, job, config, rand)

    if status == 202:
        delay = upstream_delay(answer.retry_after, _json(answer), config, now, rand())
        return Retry(delay=delay, status=202, error=None, attempt=0, consecutive_500s=0)

    if status == 401:
        return Hold(delay=0.0, status=401,
                    error=_error_message(_json(answer), "401: the API token was rejected"),
                    auth_failed=True)

    if status == 403:
        document = _json(answer)
        missing = document.get("missing") if isinstance(document, dict) else None
        names = [str(m) for m in missing] if isinstance(missing, list) else []
        detail = _error_message(document, "forbidden")
        if names:
            detail = f"{detail} (missing: {', '.join(names)})"
        return Fail(reason="forbidden", error=shorten(detail), status=403)

    if status == 404:
        return CheckUpstream()

    if status == 500:
        streak = job.consecutive_500s + 1
        text = body_text(answer.body)
        if streak >= config.stuck_after:
            return Stuck(delay=config.stuck_recheck, status=500, body=text,
                         consecutive_500s=streak, attempt=job.attempt + 1,
                         newly=job.state != "stuck")
        delay = fault_delay(job.attempt, config, rand())
        return Retry(delay=delay, status=500,
                     error=shorten(f"500 ({streak} of {config.stuck_after} before stuck): "
                                   f"{_error_message(_json(answer), text or 'no body')}"),
                     attempt=job.attempt + 1, consecutive_500s=streak, state="pending")

    if status in (429, 503):
        pause = parse_retry_after(answer.retry_after, now)
        if status == 503 and pause is None:
            return _fault(job, config, rand, status, "503 service unavailable")
        # A 429 without Retry-After is still a request to slow down, not a verdict
        # on the job: pause for the default rather than failing it.
        seconds = config.default_retry_after if pause is None else pause
        delay = clamp(seconds, config.min_poll_interval, config.max_poll_interval) * (
            1.0 + JITTER * clamp(rand(), 0.0, 1.0))
        return Hold(delay=delay, status=status, pause_for=delay,
                    error=f"{status}: upstream asked to slow down for {delay:.1f}s")

    if 400 <= status < 500:
        detail = _error_message(_json(answer), body_text(answer.body, 200) or "no body")
        return Fail(reason=f"http_{status}", error=shorten(f"{status}: {detail}"), status=status)

    if 500 <= status < 600:
        return _fault(job, config, rand, status, f"{status}: {body_text(answer.body, 200) or 'no body'}")

    return _fault(job, config, rand, status, f"unexpected HTTP status {status}")


def _decide_200(answer: Response, job: Job, config: PolicyConfig, rand: Random) -> Decision:
    def invalid(why: str) -> Retry:
        retry = _fault(job, config, rand, 200, why)
        # Garbage is not an upstream outage: it must not slow the fleet down.
        return Retry(delay=retry.delay, status=200, error=retry.error, attempt=retry.attempt,
                     consecutive_500s=retry.consecutive_500s, state=retry.state, fault=False)

    if looks_like_html(answer):
        return invalid("200 with an HTML page, not a result: is HARVESTER_API_BASE_URL the API host?")
    if not is_json_content_type(answer.content_type):
        return invalid(f"200 with content-type {answer.content_type or 'none'!s}, not JSON")
    try:
        payload = answer.body.decode("utf-8")
        result = ExtractionResult.model_validate_json(payload)
    except UnicodeDecodeError:
        return invalid("200 body is not UTF-8")
    except ValidationError as exc:
        return invalid(f"200 body is not a valid result: {_validation_summary(exc)}")
    if result.job_id != job.job_id:
        return invalid(f"200 body is for job {result.job_id}, not {job.job_id}")
    unstorable = jsonb_obstacle(answer.body)
    if unstorable:
        return invalid(f"200 body cannot be stored as PostgreSQL jsonb: {unstorable}")
    return Land(result=result, payload=payload)


def jsonb_obstacle(body: bytes) -> str | None:
    """Why PostgreSQL's jsonb would refuse this (valid) JSON, or None.

    Python's json and pydantic accept NaN and Infinity, and ``\\u0000`` in strings;
    jsonb accepts neither. Caught here, the job keeps polling with a clear last_error
    and is bounded by MAX_AGE, rather than failing inside the batch write. The cheap
    byte scan keeps the common body free of a second parse.
    """
    if b"NaN" not in body and b"Infinity" not in body and b"\\u0000" not in body:
        return None

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        document = json.loads(body, parse_constant=refuse)
    except ValueError as exc:
        return f"it holds {exc.args[0] if exc.args else 'a non-finite number'}"
    except RecursionError:
        return "it is nested too deeply"
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a string holds \\u0000"
        elif isinstance(item, dict):
            for key, value in item.items():
                if "\x00" in key:
                    return "a key holds \\u0000"
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def store_refused(job: Job, error: str, config: PolicyConfig, now: datetime, rand: Random
                  ) -> Decision:
    """The database refused to write this job's outcome (rare: a value it cannot hold).

    Treated like a bad answer: poll again with backoff, bounded by MAX_AGE."""
    retry = _fault(job, config, rand, None, f"the database refused the result: {error}")
    decision = Retry(delay=retry.delay, status=None, error=retry.error, attempt=retry.attempt,
                     consecutive_500s=retry.consecutive_500s, state=retry.state, fault=False)
    if age_seconds(job, now) >= config.max_age:
        return Fail(reason="expired", status=None,
                    error=f"unresolved after HARVESTER_MAX_AGE; last: {decision.error}")
    return decision


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return shorten(f"{where}: {first.get('msg', 'invalid')}{more}", 300)


def decide_not_found(
    job: Job,
    upstream_status: str | None,
    asked: bool,
    config: PolicyConfig,
    now: datetime,
    rand: Random,
) -> Decision:
    """After a 404: what batch-status said (``asked`` is False when it could not be asked)."""
    age = age_seconds(job, now)
    attempt = job.attempt + 1
    if upstream_status == "failed":
        return Fail(reason="upstream_failed", error="404; upstream reports the job failed",
                    status=404, upstream_status="failed")
    if upstream_status in NEARLY_READY:
        delay = max(NEARLY_READY_DELAY, config.min_poll_interval)
        return _expire_or(Retry(delay=delay, status=404, upstream_status=upstream_status,
                                error=f"404 while upstream reports {upstream_status}",
                                attempt=attempt, consecutive_500s=0), job, config, now)
    if upstream_status is not None:
        # In progress (or a status this version does not know: treat it as in progress).
        return _expire_or(Retry(delay=not_found_delay(job.attempt, config, rand()), status=404,
                                upstream_status=upstream_status,
                                error=f"404; upstream reports {shorten(upstream_status, 40)}",
                                attempt=attempt, consecutive_500s=0), job, config, now)
    if age >= config.not_found_timeout:
        why = "absent from batch-status" if asked else "batch-status unavailable"
        return Fail(reason="not_found",
                    error=f"404 for {age / 3600:.1f} h after enqueue ({why}); "
                    "HARVESTER_NOT_FOUND_TIMEOUT passed",
                    status=404)
    why = "unknown upstream" if asked else "batch-status unavailable"
    return _expire_or(Retry(delay=not_found_delay(job.attempt, config, rand()), status=404,
                            error=f"404 ({why}); waiting up to HARVESTER_NOT_FOUND_TIMEOUT",
                            attempt=attempt, consecutive_500s=0), job, config, now)


def _expire_or(decision: Retry, job: Job, config: PolicyConfig, now: datetime) -> Decision:
    if age_seconds(job, now) >= config.max_age:
        return Fail(reason="expired", error=f"unresolved after HARVESTER_MAX_AGE; last: {decision.error}",
                    status=decision.status, upstream_status=decision.upstream_status)
    return decision


def parse_batch_status(body: bytes) -> Mapping[UUID, str]:
    """The batch-status answer as {job_id: status}; raises ValueError on garbage."""
    from harvester.model import BatchStatusEntry  # noqa: PLC0415

    try:
        document = json.loads(body)
    except RecursionError:
        # Deeply nested garbage: the caller handles ValueError, not this.
        raise ValueError("batch-status answer is nested too deeply") from None
    if not isinstance(document, list):
        raise ValueError("batch-status answer is not a JSON array")
    statuses: dict[UUID, str] = {}
    for item in document:
        try:
            entry = BatchStatusEntry.model_validate(item)
        except ValidationError:
            continue  # one odd element does not spoil the others
        statuses[entry.id] = entry.status
    return statuses
