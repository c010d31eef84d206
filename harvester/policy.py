"""The pure core: what to do with an upstream answer.

Two questions are answered here, each by one function returning a decision value that
the engine only carries out:

- :func:`decide`: a result GET came back (a response or a transport failure);
- :func:`~harvester.status_policy.decide_status`: batch-status said something about a
  job (README "How a job is followed"), beside it in :mod:`harvester.status_policy`.

Nothing here touches a socket, a database or the clock: ``now`` and the random source
are arguments, so every row of the README's answer table is tested from a table, and
the numeric edges (Retry-After of ``-5``, ``1.5``, a date in 2100, attempt 10,000) with
hypothesis. The follow cadence lives beside it in :mod:`harvester.cadence`, the numbers
for waiting (backoff, jitter, Retry-After) in :mod:`harvester.waits`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from uuid import UUID

from pydantic import ValidationError

from harvester.api import FINISHED
from harvester.cadence import follow_interval
from harvester.model import ExtractionResult
from harvester.waits import backoff, body_retry_after, clamp, jittered, parse_retry_after

Random = Callable[[], float]
"""A source of uniform floats in [0, 1): ``random.random`` in production."""

FAULT_BACKOFF_BASE: Final = 1.0
FAULT_BACKOFF_CAP: Final = 300.0
NOT_FOUND_BACKOFF_BASE: Final = 5.0
NOT_FOUND_BACKOFF_CAP: Final = 300.0
FORBIDDEN_AFTER: Final = 3
"""403s for one job before it fails ``forbidden`` (the last known to be about the job)."""
ERROR_TEXT_LIMIT: Final = 500
STUCK_BODY_LIMIT: Final = 2000
UNKNOWN: Final = "unknown"
"""Our word (not upstream's) for a job batch-status leaves out of its answer."""

Step = Literal["status", "result"]
Refusal = Literal["job", "token", "unknown"]
"""Whose a 403 is, as far as the daemon knows when it decides (:mod:`harvester.refusals`)."""
ControlResult = Literal["readable", "refused", "inconclusive"]
READABLE: Final = frozenset({200, 202, 404})
"""Answers to a result GET that only a token allowed to read results gets: the row, the
indexing notice, "no such job in this org". A 403 to another request sent about then is
about that request's job."""

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
    status_min_interval: float = 1.0
    status_max_interval: float = 60.0

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
    next_step: Step = "status"
    upstream_status: str | None = None
    """What batch-status last said (``unknown``: it left the job out), or None."""
    status_since: datetime | None = None
    """When the daemon first saw ``upstream_status``."""
    finished_seen_at: datetime | None = None
    consecutive_403s: int = 0


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer, its body already read within the size limit.

    ``date`` is its Date header as sent: the moment of the answer on upstream's clock,
    against which upstream's HTTP-dates (Retry-After) are read."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    retry_after: str | None = None
    date: str | None = None


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No usable HTTP answer: timeout, refused or reset connection, oversized body."""

    kind: Literal["timeout", "connection", "too_large", "protocol"]
    detail: str


Answer = Response | TransportFailure


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """What one batch-status call came back with.

    ``statuses`` is set only for a 200 that was understood ({job_id: status}; jobs upstream
    does not know are absent). Otherwise ``status`` is the HTTP status (None: no answer)
    and ``error`` says why the answer is no use.
    """

    statuses: Mapping[UUID, str] | None
    status: int | None = 200
    error: str | None = None
    retry_after: str | None = None
    html: bool = False
    date: str | None = None
    """The Date header, as on :class:`Response`."""


@dataclass(frozen=True, slots=True)
class Context:
    """What the engine knows beyond the job and the answer when it decides.

    ``seen``: what batch-status said about this job in this round (None: not asked).
    ``status_usable``: batch-status can be asked at all (False while it fails, so the
    daemon falls back to polling results). ``refusal``: whose a 403 is (README "How
    upstream answers are handled"): this job's (a request known to be readable was
    answered about then), the token's (the permission circuit is open), or not known.
    ``trust_not_found``: False while the base URL is suspect (every path answers 404),
    so that no job is failed ``not_found`` because of a configuration mistake.
    ``clock_floor``: how far upstream's clock is at least ahead of ours, from earlier
    answers' Date headers (None: not known); an HTTP-date in Retry-After is read
    closer with it (:func:`~harvester.waits.parse_retry_after`).
    """

    seen: str | None = None
    status_usable: bool = True
    refusal: Refusal = "unknown"
    trust_not_found: bool = True
    clock_floor: float | None = None


ASKED_NOTHING: Final = Context()

# ---------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Land:
    """200 with a valid row for this job: upsert it and mark the job landed."""

    result: ExtractionResult
    payload: str
    status: int = 200


@dataclass(frozen=True, slots=True)
class Retry:
    """Ask again after ``delay`` seconds; the job stays open in ``state``.

    ``step`` says how: GET the result again, or follow the job through batch-status.
    ``status``/``error`` describe the answer that led here (None: keep the last ones).
    """

    delay: float
    status: int | None
    error: str | None
    attempt: int
    consecutive_500s: int
    state: Literal["pending", "stuck"] = "pending"
    step: Step = "result"
    fault: bool = False
    """An upstream fault (5xx, transport): feeds the fleet-wide fault throttle."""
    keep_last_answer: bool = False
    """Only batch-status was asked: ``last_status``/``last_error`` keep the last GET's."""
    due_at: datetime | None = None
    """For a status check on the shared grid: the exact instant (the daemon's clock), so
    that every job checked at it comes due together and shares one call. Never used for
    a wait upstream asked for, which counts from the database's clock."""


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


@dataclass(frozen=True, slots=True)
class Hold:
    """No attempt charged: release the job, due again after ``delay``.

    ``auth_failed`` opens the auth circuit; ``refused``: a 403, its refusals counted in
    ``consecutive_403s``; ``pause_for`` pauses all dispatch and lowers the send rate.
    """

    delay: float
    status: int
    error: str
    auth_failed: bool = False
    refused: bool = False
    consecutive_403s: int = 0
    pause_for: float | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """batch-status says the row is there (or does not know the job): GET it now, under
    the same lease, without writing anything first."""


Decision = Land | Retry | Stuck | Fail | Hold
"""What can be written for a job."""
StatusDecision = Fetch | Retry | Fail

# ---------------------------------------------------------------- numbers


def upstream_delay(
    header: str | None, document: Any, config: PolicyConfig, now: datetime, rand: float,
    date: str | None = None, floor: float | None = None,
) -> float:
    """The wait upstream asked for: header (an HTTP-date read against the answer's
    ``date`` and the clock's ``floor``), else body, else default; clamped; jittered."""
    seconds = parse_retry_after(header, now, date, floor)
    if seconds is None:
        seconds = body_retry_after(document)
    if seconds is None:
        seconds = config.default_retry_after
    return jittered(clamp(seconds, config.min_poll_interval, config.max_poll_interval), rand)


def fault_delay(attempt: int, config: PolicyConfig, rand: float) -> float:
    """Exponential backoff with full jitter, 1 s → 5 min, for faults and bad answers."""
    base = max(FAULT_BACKOFF_BASE, config.min_poll_interval)
    return backoff(attempt, base=base, cap=max(base, FAULT_BACKOFF_CAP), rand=rand)


def not_found_delay(attempt: int, config: PolicyConfig, rand: float) -> float:
    """5 s doubling to 5 min: 404s while batch-status cannot be asked."""
    base = max(NOT_FOUND_BACKOFF_BASE, config.min_poll_interval)
    return jittered(backoff(attempt, base=base, cap=max(base, NOT_FOUND_BACKOFF_CAP)), rand)


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
    """The old dashboard host answers unknown paths with its web page."""
    media = (response.content_type or "").split(";", 1)[0].strip().lower()
    return media == "text/html" or response.body.lstrip()[:15].lower().startswith(
        (b"<!doctype", b"<html"))


def age_seconds(job: Job, now: datetime) -> float:
    return (now - job.age_origin).total_seconds()


def _expire(decision: Any, job: Job, config: PolicyConfig, now: datetime) -> Any:
    """The one expiry rule: a job that would stay open past MAX_AGE fails ``expired``.

    Holds are exempt: they say nothing about the job (a rejected token, a pause), and a
    week-long outage must not fail the whole backlog."""
    if not isinstance(decision, (Retry, Stuck)):
        return decision
    age = age_seconds(job, now)
    if age < config.max_age:
        return decision
    return Fail(reason="expired",
                error=f"unresolved {age / 86400:.1f} days after enqueue (HARVESTER_MAX_AGE); "
                      f"last: {_summary(decision)}",
                status=decision.status)


def _summary(decision: Retry | Stuck) -> str:
    if isinstance(decision, Stuck):
        return f"HTTP {decision.status} (stuck)"
    return decision.error or (f"HTTP {decision.status}" if decision.status else "no answer")


# ---------------------------------------------------------------- a result answer


def decide(answer: Answer, job: Job, config: PolicyConfig, now: datetime, rand: Random,
           context: Context = ASKED_NOTHING) -> Decision:
    """The next step for ``job`` after a result GET (README "How upstream answers are
    handled", row by row)."""
    return _expire(_decide(answer, job, config, now, rand, context), job, config, now)  # type: ignore[no-any-return]


def _fault(job: Job, config: PolicyConfig, rand: Random, status: int | None, error: str,
           *, fault: bool = True) -> Retry:
    """A fault says nothing about the job: its state and 500 streak are kept."""
    attempt = job.attempt + 1
    state: Literal["pending", "stuck"] = "stuck" if job.state == "stuck" else "pending"
    delay = fault_delay(attempt - 1, config, rand())
    if state == "stuck":
        delay = max(delay, config.stuck_recheck)
    return Retry(delay=delay, status=status, error=shorten(error), attempt=attempt,
                 consecutive_500s=job.consecutive_500s, state=state, fault=fault)


def _decide(answer: Answer, job: Job, config: PolicyConfig, now: datetime, rand: Random,
            context: Context) -> Decision:
    if isinstance(answer, TransportFailure):
        return _fault(job, config, rand, None, f"{answer.kind}: {answer.detail}")

    status = answer.status
    if status == 200:
        return _decide_200(answer, job, config, rand)

    if status == 202:
        delay = upstream_delay(answer.retry_after, _json(answer), config, now, rand(),
                               answer.date, context.clock_floor)
        return Retry(delay=delay, status=202, error=None, attempt=0, consecutive_500s=0)

    if status == 401:
        return Hold(delay=0.0, status=401,
                    error=_error_message(_json(answer), "401: the API token was rejected"),
                    auth_failed=True, consecutive_403s=job.consecutive_403s)

    if status == 403:
        return _decide_403(answer, job, config, rand, context)

    if status == 404:
        return _decide_404(job, config, now, rand, context)

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
        pause = parse_retry_after(answer.retry_after, now, answer.date, context.clock_floor)
        if status == 503 and pause is None:
            return _fault(job, config, rand, status, "503 service unavailable")
        return replace(rate_limited(status, pause, config, rand),
                       consecutive_403s=job.consecutive_403s)

    if 400 <= status < 500:
        detail = _error_message(_json(answer), body_text(answer.body, 200) or "no body")
        return Fail(reason=f"http_{status}", error=shorten(f"{status}: {detail}"), status=status)

    if 500 <= status < 600:
        return _fault(job, config, rand, status, f"{status}: {body_text(answer.body, 200) or 'no body'}")

    return _fault(job, config, rand, status, f"unexpected HTTP status {status}")


def rate_limited(status: int, pause: float | None, config: PolicyConfig, rand: Random) -> Hold:
    """429 (or 503 with Retry-After): pause everything for the time asked, charge nothing.

    A 429 without Retry-After is still a request to slow down, not a verdict on the job:
    pause for the default delay rather than failing it."""
    seconds = config.default_retry_after if pause is None else pause
    delay = jittered(clamp(seconds, config.min_poll_interval, config.max_poll_interval), rand())
    return Hold(delay=delay, status=status, pause_for=delay,
                error=f"{status}: upstream asked to slow down for {delay:.1f}s")


def _decide_403(answer: Response, job: Job, config: PolicyConfig, rand: Random,
                context: Context) -> Decision:
    """A 403 is about the job unless the token is refused too (README "How upstream
    answers are handled"; :mod:`harvester.refusals` says which).

    About the token (the permission circuit is open): nothing is charged, the job waits
    for the circuit. Otherwise the refusal counts, and the job backs off; it fails
    ``forbidden`` at the third, if that one is known to be about the job. A refusal
    nobody could tell about still counts, up to two, so that the next one known to be
    about the job ends it: when the token lost the permission, the circuit opens before
    any job collects a third."""
    document = _json(answer)
    missing = document.get("missing") if isinstance(document, dict) else None
    names = [str(m) for m in missing] if isinstance(missing, list) else []
    detail = _error_message(document, "forbidden")
    if names:
        detail = f"{detail} (missing: {', '.join(names)})"
    detail = shorten(f"403: {detail}")
    if context.refusal == "token":
        return Hold(delay=0.0, status=403, error=detail, refused=True,
                    consecutive_403s=job.consecutive_403s)
    refusals = job.consecutive_403s + 1
    if context.refusal == "job" and refusals >= FORBIDDEN_AFTER:
        return Fail(reason="forbidden", status=403,
                    error=shorten(f"{detail}; refused {refusals} times while other requests "
                                  "were answered"))
    counted = refusals if context.refusal == "job" else min(refusals, FORBIDDEN_AFTER - 1)
    return Hold(delay=fault_delay(counted, config, rand()), status=403, error=detail,
                refused=True, consecutive_403s=counted)


def _decide_404(job: Job, config: PolicyConfig, now: datetime, rand: Random,
                context: Context) -> Decision:
    """404 is not final on its own: the job exists but is not finished, or it failed, or
    it never existed. It is followed through batch-status from here on."""
    attempt = job.attempt + 1
    known = context.seen if context.seen is not None else job.upstream_status
    if not context.trust_not_found:
        # Every path answers 404 (a base URL with a path, say): wait, burn nothing.
        return Hold(delay=fault_delay(attempt, config, rand()), status=404,
                    error="404 while the base URL is suspect (see upstream.base_url_suspect)")
    if known in FINISHED:
        # batch-status said finished, the result endpoint disagrees: a moment's race.
        delay = backoff(job.attempt, base=config.status_min_interval,
                        cap=config.status_max_interval)
        return Retry(delay=delay, status=404, attempt=attempt, consecutive_500s=0,
                     step="status", error=f"404 although batch-status said {known}")
    age = age_seconds(job, now)
    if not context.status_usable:
        if age >= config.not_found_timeout:
            return _not_found(age, "batch-status unavailable")
        return Retry(delay=not_found_delay(job.attempt, config, rand()), status=404,
                     attempt=attempt, consecutive_500s=0, step="status",
                     error="404 (batch-status unavailable); waiting up to HARVESTER_NOT_FOUND_TIMEOUT")
    if known in (None, UNKNOWN) and age >= config.not_found_timeout:
        return _not_found(age, "unknown to batch-status")
    why = f"upstream reports {shorten(known, 40)}" if known and known != UNKNOWN else \
        "unknown to batch-status"
    delay = follow_interval(age, config, now)
    return Retry(delay=delay, status=404, attempt=attempt, consecutive_500s=0, step="status",
                 error=f"404; {why}", due_at=now + timedelta(seconds=delay))


def _not_found(age: float, why: str) -> Fail:
    return Fail(reason="not_found", status=404,
                error=f"404 for {age / 3600:.1f} h after enqueue ({why}); "
                      "HARVESTER_NOT_FOUND_TIMEOUT passed")


def _decide_200(answer: Response, job: Job, config: PolicyConfig, rand: Random) -> Decision:
    def invalid(why: str) -> Retry:
        # Garbage is not an upstream outage: it must not slow the fleet down.
        return _fault(job, config, rand, 200, why, fault=False)

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
    retry = _fault(job, config, rand, None, f"the database refused the result: {error}",
                   fault=False)
    return _expire(retry, job, config, now)  # type: ignore[no-any-return]


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return shorten(f"{where}: {first.get('msg', 'invalid')}{more}", 300)
