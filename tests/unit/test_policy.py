"""The pure core: every row of README "How upstream answers are handled" from one table,
the numbers with hypothesis.

``now`` and the random source are fixed, so each decision is exact; the delay of a row
is checked at both ends of the random range (0 and just below 1) as a window whose ends
must be reached exactly: never earlier than asked, at most the jitter later.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester.api import FINISHED, IN_PROGRESS
from harvester.policy import (
    FAULT_BACKOFF_CAP,
    FORBIDDEN_AFTER,
    NOT_FOUND_BACKOFF_CAP,
    UNKNOWN,
    Context,
    Decision,
    Fail,
    Hold,
    Job,
    Land,
    PolicyConfig,
    Response,
    Retry,
    Stuck,
    TransportFailure,
    decide,
    fault_delay,
    not_found_delay,
    upstream_delay,
)
from harvester.status_policy import ControlAnswer, judge_control, parse_batch_status
from harvester.tools.simulator import result_row
from harvester.upstream_clock import WINDOW, UpstreamClock
from harvester.waits import JITTER, backoff, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
JOB_ID = UUID("5d2b8c1e-4f7a-4c3b-9e21-7a6f0d3c8b45")
OTHER_ID = UUID("9a1e3f6c-2b7d-4e8a-8c05-1d4f7b2e6a90")
CONFIG = PolicyConfig()
RAND_MAX = 1.0 - 2.0**-53
"""The largest value ``random.random`` can return."""
DECISION_TYPES = (Land, Retry, Stuck, Fail, Hold)

# ---------------------------------------------------------------- building answers


def job(state: str = "pending", *, attempt: int = 3, streak: int = 0,
        age: timedelta = timedelta(hours=1), upstream: str | None = None,
        refusals: int = 0) -> Job:
    return Job(job_id=JOB_ID, state=state, age_origin=NOW - age, polls=attempt + streak,
               attempt=attempt, consecutive_500s=streak, upstream_status=upstream,
               consecutive_403s=refusals)


def answer(status: int, document: Any = None, *, retry_after: str | None = None,
           content_type: str | None = "application/json", date: str | None = None) -> Response:
    body = b"" if document is None else json.dumps(document).encode()
    return Response(status=status, body=body, content_type=content_type, retry_after=retry_after,
                    date=date)


def row(job_id: UUID = JOB_ID, **changes: Any) -> dict[str, Any]:
    document = result_row(job_id)
    for key, value in changes.items():
        if value is _DROP:
            del document[key]
        else:
            document[key] = value
    return document


_DROP = object()
VALID_ROW = json.dumps(row())
INDEXING = {"indexingPending": True, "status": "extraction_done", "message": "indexing"}


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(NOW + timedelta(seconds=seconds_from_now), usegmt=True)


BEHIND = -20.0
"""Upstream's clock 20 s behind ours: its Date and its HTTP-dates both say so."""


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Expect:
    """What a row must produce. ``delay`` is the window [at rand 0, at rand just below 1];
    ``says`` are pieces the human error text must contain (case-insensitive)."""

    kind: type[Any]
    fields: Mapping[str, object] = field(default_factory=dict)
    delay: tuple[float, float] | None = None
    says: tuple[str, ...] = ()


ASKED = Context()
ABOUT_THE_JOB = Context(refusal="job")
"""A request known to be readable was answered about when this one was refused."""
ABOUT_THE_TOKEN = Context(refusal="token")
"""The permission circuit is open: the token itself is refused."""
STATUS_DOWN = Context(status_usable=False)


def fault(lo: float = 1.0, hi: float = 8.0, *, status: int | None, state: str = "pending",
          attempt: int = 4, streak: int = 0, says: tuple[str, ...] = ()) -> Expect:
    """A fault: backoff from attempt 3 by default (1 s, up to 2**3 s), job kept as it was."""
    return Expect(Retry, {"status": status, "state": state, "attempt": attempt,
                          "consecutive_500s": streak, "fault": True}, (lo, hi), says)


def invalid_200(*says: str, state: str = "pending", lo: float = 1.0, hi: float = 8.0,
                streak: int = 0) -> Expect:
    """A 200 that is no result: stays due as it was, backoff, not an upstream fault."""
    return Expect(Retry, {"status": 200, "state": state, "attempt": 4, "consecutive_500s": streak,
                          "fault": False}, (lo, hi), says)


def waiting_202(lo: float, hi: float) -> Expect:
    return Expect(Retry, {"status": 202, "state": "pending", "attempt": 0, "consecutive_500s": 0,
                          "error": None, "fault": False}, (lo, hi))


def followed(lo: float, hi: float, *says: str, attempt: int = 4) -> Expect:
    """A 404 not final: followed through batch-status from now on."""
    return Expect(Retry, {"status": 404, "state": "pending", "attempt": attempt,
                          "consecutive_500s": 0, "step": "status", "fault": False}, (lo, hi), says)


def failed(reason: str, status: int | None, *says: str, **fields: object) -> Expect:
    return Expect(Fail, {"reason": reason, "status": status, **fields}, None, says)


def hold(lo: float, hi: float, status: int, *says: str) -> Expect:
    """429/503 with Retry-After: no attempt charged, all dispatch paused for the delay."""
    return Expect(Hold, {"status": status, "auth_failed": False}, (lo, hi), says)


OLD = timedelta(days=8)  # beyond MAX_AGE (7 days)
DAY = timedelta(hours=24)

P = pytest.param
TABLE = [
    # ------------------------------------------------------------ 200
    P(answer(200, row()), job(), ASKED,
      Expect(Land, {"status": 200, "payload": VALID_ROW}), id="200-valid-row-lands"),
    P(answer(200, row(), content_type="application/json; charset=utf-8"), job("stuck", streak=5),
      None, Expect(Land, {"status": 200, "payload": VALID_ROW}), id="200-valid-row-lands-a-stuck-job"),
    P(answer(200, row()), job(age=OLD), ASKED, Expect(Land, {"status": 200}),
      id="200-valid-row-lands-even-past-max-age"),
    P(Response(200, b'{"id": "oops", ', "application/json"), job(), ASKED,
      invalid_200("not a valid result", "json"), id="200-not-json"),
    P(Response(200, b"\xff\xfe{}", "application/json"), job(), ASKED,
      invalid_200("not utf-8"), id="200-not-utf8"),
    P(Response(200, b"<!doctype html><html><body>dashboard</body></html>", "text/html"), job(), ASKED,
      invalid_200("html", "HARVESTER_API_BASE_URL"), id="200-text-html-dashboard"),
    P(Response(200, b"<!DOCTYPE html><html></html>", "application/json"), job(), ASKED,
      invalid_200("html"), id="200-html-page-labelled-json"),
    P(Response(200, b"ok", "text/plain"), job(), ASKED,
      invalid_200("text/plain", "not json"), id="200-text-plain"),
    P(Response(200, VALID_ROW.encode(), None), job(), ASKED,
      invalid_200("content-type none", "not json"), id="200-no-content-type"),
    P(answer(200, row(createdAt=12345, qualityComposite="high")), job(), ASKED,
      invalid_200("not a valid result", "qualityComposite", "+1 more"), id="200-wrong-types"),
    P(answer(200, row(qualityValidation=True)), job(), ASKED,
      invalid_200("not a valid result", "qualityValidation"), id="200-bool-for-float"),
    P(answer(200, row(domain=_DROP)), job(), ASKED,
      invalid_200("not a valid result", "domain", "required"), id="200-missing-field"),
    P(answer(200, [row()]), job(), ASKED,
      invalid_200("not a valid result"), id="200-array-not-object"),
    P(answer(200, row(OTHER_ID)), job(), ASKED,
      invalid_200(f"for job {OTHER_ID}", f"not {JOB_ID}"), id="200-jobid-mismatch"),
    P(answer(200, row(OTHER_ID)), job("stuck", streak=4), ASKED,
      invalid_200("for job", state="stuck", lo=900.0, hi=900.0, streak=4),
      id="200-jobid-mismatch-keeps-a-stuck-job-stuck"),
    # ------------------------------------------------------------ 202
    P(answer(202, {**INDEXING, "retryAfterSeconds": 3}, retry_after="7"), job(), ASKED,
      waiting_202(7.0, 7.0 * (1 + JITTER)), id="202-retry-after-delta-wins-over-body"),
    P(answer(202, INDEXING, retry_after=http_date(42)), job(), ASKED,
      waiting_202(42.0, 42.0 * (1 + JITTER)), id="202-retry-after-http-date"),
    P(answer(202, INDEXING, retry_after=http_date(BEHIND + 3), date=http_date(BEHIND)), job(),
      ASKED, waiting_202(3.0, 3.0 * (1 + JITTER)),
      id="202-http-date-is-read-against-the-date-header-of-a-clock-behind"),
    P(answer(202, INDEXING, retry_after=http_date(-BEHIND + 3), date=http_date(-BEHIND)), job(),
      ASKED, waiting_202(3.0, 3.0 * (1 + JITTER)),
      id="202-http-date-is-read-against-the-date-header-of-a-clock-ahead"),
    P(answer(202, INDEXING, retry_after=http_date(42), date="yesterday"), job(), ASKED,
      waiting_202(42.0, 42.0 * (1 + JITTER)), id="202-http-date-with-a-garbage-date-header"),
    P(answer(202, {**INDEXING, "retryAfterSeconds": 12}), job(), ASKED,
      waiting_202(12.0, 12.0 * (1 + JITTER)), id="202-body-retry-after-seconds"),
    P(answer(202, {**INDEXING, "retryAfterSeconds": 12}, retry_after="soon"), job(), ASKED,
      waiting_202(12.0, 12.0 * (1 + JITTER)), id="202-garbage-header-falls-back-to-body"),
    P(answer(202, INDEXING), job(), ASKED, waiting_202(5.0, 5.0 * (1 + JITTER)),
      id="202-no-delay-named-default"),
    P(answer(202, None), job(), ASKED, waiting_202(5.0, 5.0 * (1 + JITTER)), id="202-empty-body-default"),
    P(answer(202, INDEXING, retry_after="1.5"), job(), ASKED,
      waiting_202(1.5, 1.5 * (1 + JITTER)), id="202-decimal-retry-after"),
    P(answer(202, INDEXING, retry_after="0"), job(), ASKED,
      waiting_202(1.0, 1.0 * (1 + JITTER)), id="202-zero-clamped-to-min-poll-interval"),
    P(answer(202, INDEXING, retry_after=http_date(-3600)), job(), ASKED,
      waiting_202(1.0, 1.0 * (1 + JITTER)), id="202-past-date-clamped-to-min-poll-interval"),
    P(answer(202, INDEXING, retry_after="86400"), job(), ASKED,
      waiting_202(3600.0, 3600.0 * (1 + JITTER)), id="202-day-clamped-to-max-poll-interval"),
    P(answer(202, INDEXING, retry_after="9" * 10_000), job(), ASKED,
      waiting_202(3600.0, 3600.0 * (1 + JITTER)), id="202-10000-digits-waits-the-longest-not-the-default"),
    P(answer(202, INDEXING, retry_after="7"), job("stuck", streak=4), ASKED,
      waiting_202(7.0, 7.0 * (1 + JITTER)), id="202-for-a-stuck-job-is-pending-again"),
    # ------------------------------------------------------------ 401, 403
    P(answer(401, {"error": "invalid token"}), job(), ASKED,
      Expect(Hold, {"status": 401, "auth_failed": True, "pause_for": None}, (0.0, 0.0),
             ("invalid token",)), id="401-hold-auth-failed"),
    P(answer(401, None), job(age=OLD), ASKED,
      Expect(Hold, {"status": 401, "auth_failed": True}, (0.0, 0.0), ("token",)),
      id="401-is-about-the-token-even-for-an-old-job"),
    P(answer(403, {"error": "insufficient permissions", "missing": ["jobs:read", "results:read"]}),
      job(refusals=1), ABOUT_THE_TOKEN,
      Expect(Hold, {"status": 403, "refused": True, "consecutive_403s": 1}, (0.0, 0.0),
             ("insufficient permissions", "jobs:read", "results:read")),
      id="403-while-the-token-is-refused-charges-nothing-and-waits-for-the-circuit"),
    P(answer(403, None), job(), ABOUT_THE_JOB,
      Expect(Hold, {"status": 403, "refused": True, "consecutive_403s": 1}, (1.0, 2.0),
             ("forbidden",)), id="403-about-the-job-counts-against-it"),
    P(answer(403, None), job(refusals=1), ABOUT_THE_JOB,
      Expect(Hold, {"status": 403, "refused": True, "consecutive_403s": 2}, (1.0, 4.0)),
      id="403-about-the-job-backs-off"),
    P(answer(403, {"error": "no", "missing": ["jobs:read"]}), job(refusals=2), ABOUT_THE_JOB,
      failed("forbidden", 403, "jobs:read", "3 times"), id="403-third-refusal-fails-forbidden"),
    P(answer(403, None), job(), ASKED,
      Expect(Hold, {"status": 403, "refused": True, "consecutive_403s": 1}, (1.0, 2.0)),
      id="403-nobody-could-tell-about-still-counts"),
    P(answer(403, None), job(refusals=2), ASKED,
      Expect(Hold, {"status": 403, "refused": True, "consecutive_403s": 2}, (1.0, 4.0)),
      id="403-nobody-could-tell-about-never-fails-the-job"),
    P(answer(403, None), job(refusals=7), ASKED,
      Expect(Hold, {"status": 403, "consecutive_403s": 2}, (1.0, 4.0)),
      id="403-nobody-could-tell-about-counts-at-most-two"),
    P(answer(403, None), job(refusals=2, age=OLD), ABOUT_THE_TOKEN,
      Expect(Hold, {"status": 403, "consecutive_403s": 2}, (0.0, 0.0)),
      id="403-about-the-token-never-expires-a-job"),
    P(answer(401, None), job(refusals=2), ASKED,
      Expect(Hold, {"status": 401, "consecutive_403s": 2}, (0.0, 0.0)),
      id="401-keeps-the-403-count"),
    P(answer(429, None, retry_after="3"), job(refusals=2), ASKED,
      Expect(Hold, {"status": 429, "consecutive_403s": 2}, (3.0, 3.0 * (1 + JITTER))),
      id="429-keeps-the-403-count"),
    # ------------------------------------------------------------ 404: followed by status
    P(answer(404), job(), ASKED, followed(60.0, 60.0, "unknown to batch-status"),
      id="404-followed-at-the-cadence-of-its-age"),
    P(answer(404), job(upstream="running"), ASKED, followed(60.0, 60.0, "reports running"),
      id="404-while-running-followed"),
    P(answer(404), job(age=timedelta(seconds=32)), ASKED, followed(5.0, 5.0),
      id="404-young-job-checked-soon"),
    *[P(answer(404), job(), Context(seen=status), followed(8.0, 8.0, f"said {status}"),
        id=f"404-although-{status}-a-race-backs-off") for status in sorted(FINISHED)],
    P(answer(404), job(attempt=9, upstream="completed"), ASKED, followed(60.0, 60.0, attempt=10),
      id="404-race-backoff-capped-at-status-max"),
    P(answer(404), job(age=DAY - timedelta(seconds=1)), ASKED, followed(60.0, 60.0),
      id="404-unknown-before-timeout"),
    P(answer(404), job(age=DAY), ASKED,
      failed("not_found", 404, "unknown to batch-status", "HARVESTER_NOT_FOUND_TIMEOUT"),
      id="404-unknown-after-timeout"),
    P(answer(404), job(age=DAY, upstream=UNKNOWN), Context(seen=UNKNOWN),
      failed("not_found", 404, "unknown to batch-status"), id="404-absent-after-timeout"),
    P(answer(404), job(age=DAY * 2, upstream="running"), ASKED,
      followed(60.0, 60.0, "reports running"), id="404-running-never-times-out"),
    P(answer(404), job(), STATUS_DOWN,
      followed(40.0, 40.0 * (1 + JITTER), "batch-status unavailable"),
      id="404-batch-status-unavailable-backs-off"),
    P(answer(404), job(attempt=9), STATUS_DOWN,
      followed(300.0, 300.0 * (1 + JITTER), attempt=10),
      id="404-batch-status-unavailable-doubling-capped-at-5-min"),
    P(answer(404), job(age=DAY * 2), STATUS_DOWN,
      failed("not_found", 404, "batch-status unavailable"),
      id="404-batch-status-unavailable-after-timeout"),
    P(answer(404), job(age=DAY * 2), Context(trust_not_found=False),
      Expect(Hold, {"status": 404, "refused": False}, (1.0, 16.0), ("base url",)),
      id="404-while-the-base-url-is-suspect-burns-nothing"),
    P(answer(404), job(age=OLD, upstream="running"), ASKED, failed("expired", 404, "MAX_AGE"),
      id="404-in-progress-past-max-age-expires"),
    # ------------------------------------------------------------ 500
    P(answer(500, {"error": "no row landed"}), job(), ASKED,
      Expect(Retry, {"status": 500, "state": "pending", "attempt": 4, "consecutive_500s": 1,
                     "fault": False}, (1.0, 8.0), ("no row landed", "1 of 3")),
      id="500-first"),
    P(answer(500, {"error": "no row landed"}), job(streak=1), ASKED,
      Expect(Retry, {"status": 500, "state": "pending", "consecutive_500s": 2}, (1.0, 8.0),
             ("2 of 3",)), id="500-second"),
    P(answer(500, {"error": "no row landed"}), job(streak=2), ASKED,
      Expect(Stuck, {"status": 500, "consecutive_500s": 3, "attempt": 4, "newly": True},
             (900.0, 900.0), ("no row landed",)), id="500-at-stuck-after-newly-stuck"),
    P(answer(500, {"error": "no row landed"}), job("stuck", streak=7), ASKED,
      Expect(Stuck, {"status": 500, "consecutive_500s": 8, "newly": False}, (900.0, 900.0)),
      id="500-while-stuck-recheck"),
    P(answer(500, {"error": "no row landed"}), job(streak=2, age=OLD), ASKED,
      failed("expired", 500, "stuck"), id="500-stuck-past-max-age-expires"),
    # ------------------------------------------------------------ 429, 503
    P(answer(429, {"error": "slow down"}, retry_after="30"), job(), ASKED,
      hold(30.0, 30.0 * (1 + JITTER), 429, "slow down"), id="429-retry-after-pauses"),
    P(answer(503, None, retry_after="30"), job(), ASKED,
      hold(30.0, 30.0 * (1 + JITTER), 503), id="503-retry-after-pauses"),
    P(answer(503, None, retry_after=http_date(120)), job(), ASKED,
      hold(120.0, 120.0 * (1 + JITTER), 503), id="503-retry-after-http-date-pauses"),
    P(answer(429, None, retry_after=http_date(BEHIND + 2), date=http_date(BEHIND)), job(), ASKED,
      hold(2.0, 2.0 * (1 + JITTER), 429), id="429-http-date-on-a-clock-behind-pauses-as-asked"),
    P(answer(503, None, retry_after=http_date(7202), date=http_date(7200)), job(), ASKED,
      hold(2.0, 2.0 * (1 + JITTER), 503), id="503-http-date-on-a-clock-two-hours-ahead"),
    P(answer(429, None, retry_after="30"), job(age=OLD), ASKED,
      hold(30.0, 30.0 * (1 + JITTER), 429), id="429-charges-nothing-so-never-expires"),
    P(answer(429, None), job(), ASKED, hold(5.0, 5.0 * (1 + JITTER), 429),
      id="429-without-retry-after-default"),
    # ------------------------------------------------------------ faults
    P(answer(503, None), job(), ASKED, fault(status=503, says=("503",)), id="503-no-retry-after"),
    P(answer(503, None, retry_after="soon"), job(), ASKED, fault(status=503),
      id="503-garbage-retry-after"),
    *[P(answer(status, {"error": "boom"}), job(), ASKED, fault(status=status, says=(str(status),)),
        id=f"{status}-fault") for status in (502, 504, 501, 507, 599)],
    P(answer(502, None), job(streak=2), ASKED, fault(status=502, streak=2),
      id="502-keeps-the-500-streak"),
    P(answer(502, None), job("stuck", streak=4), ASKED,
      fault(900.0, 900.0, status=502, state="stuck", streak=4), id="502-keeps-a-stuck-job-stuck"),
    P(answer(502, None), job(attempt=0), ASKED, fault(1.0, 1.0, status=502, attempt=1),
      id="fault-first-attempt-1s"),
    P(answer(502, None), job(attempt=10_000), ASKED, fault(1.0, 300.0, status=502, attempt=10_001),
      id="fault-attempt-10000-capped-at-5-min"),
    *[P(TransportFailure(kind, "it broke"), job(), ASKED, fault(status=None, says=(kind, "it broke")),
        id=f"transport-{kind}") for kind in ("timeout", "connection", "too_large", "protocol")],
    *[P(answer(status, None), job(), ASKED, fault(status=status, says=("unexpected",)),
        id=f"{status}-unexpected-fault") for status in (100, 201, 204, 301, 304)],
    P(answer(502, None), job(age=OLD), ASKED, failed("expired", 502, "days"),
      id="fault-past-max-age-expires"),
    P(TransportFailure("timeout", "read"), job(age=OLD), ASKED, failed("expired", None, "timeout"),
      id="transport-past-max-age-expires"),
    # ------------------------------------------------------------ other 4xx
    *[P(answer(status, {"error": "nope"}), job(), ASKED, failed(f"http_{status}", status, "nope"),
        id=f"{status}-fail") for status in (400, 405, 410, 422)],
    P(answer(410, None), job(), ASKED, failed("http_410", 410, "no body"), id="410-no-body"),
    # ------------------------------------------------------------ MAX_AGE
    P(answer(202, INDEXING, retry_after="5"), job(age=OLD), ASKED,
      failed("expired", 202, "8.0 days", "HARVESTER_MAX_AGE"), id="202-past-max-age-expires"),
    P(answer(200, row(OTHER_ID)), job(age=OLD), ASKED, failed("expired", 200, "for job"),
      id="bad-200-past-max-age-expires"),
]


def _text(decision: Decision) -> str:
    if isinstance(decision, Stuck):
        return decision.body
    if isinstance(decision, (Retry, Fail, Hold)):
        return decision.error or ""
    return ""


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


@pytest.mark.parametrize(("case_answer", "case_job", "context", "expect"), TABLE)
def test_each_upstream_answer(case_answer: Response | TransportFailure, case_job: Job,
                              context: Context, expect: Expect) -> None:
    """README "How upstream answers are handled", row by row, at both ends of the random
    range."""
    for rand in (0.0, 0.5, RAND_MAX):
        decision = decide(case_answer, case_job, CONFIG, NOW, fixed(rand), context)
        assert type(decision) is expect.kind, decision
        for name, value in expect.fields.items():
            assert getattr(decision, name) == value, (name, decision)
        text = _text(decision)
        for piece in expect.says:
            assert piece.lower() in text.lower(), (piece, text)
        assert "\n" not in text
        if isinstance(decision, Hold) and decision.status in (429, 503):
            assert decision.pause_for == decision.delay  # all dispatch waits as long
        if expect.delay is None:
            assert not hasattr(decision, "delay")
            continue
        assert isinstance(decision, (Retry, Stuck, Hold))
        low, high = expect.delay
        assert low <= decision.delay  # never earlier, not even by rounding
        assert decision.delay <= high or decision.delay == pytest.approx(high, rel=1e-12)
        if rand == 0.0:
            assert decision.delay == pytest.approx(low, rel=1e-12)
        if rand == RAND_MAX:
            assert decision.delay == pytest.approx(high, rel=1e-9)


def test_landed_result_is_the_body() -> None:
    document = row()
    decision = decide(answer(200, document), job(), CONFIG, NOW, lambda: 0.5)
    assert isinstance(decision, Land)
    assert decision.result.job_id == JOB_ID
    assert decision.result.domain == document["domain"]
    assert json.loads(decision.payload) == document  # unknown fields included


def test_a_404_for_a_job_upstream_runs_is_never_final_before_max_age() -> None:
    """A 404 alone is never final: what batch-status says decides."""
    for days in (1, 2, 6):
        decision = decide(answer(404), job(age=timedelta(days=days), upstream="running"),
                          CONFIG, NOW, lambda: 0.5)
        assert isinstance(decision, Retry)
        assert decision.step == "status"


VERDICTS = st.sampled_from(["job", "token", "unknown"])


@given(st.lists(VERDICTS, max_size=40), st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_job_fails_forbidden_only_on_a_third_refusal_known_to_be_its_own(
        verdicts: list[str], rand: float) -> None:
    """Whatever the sequence of verdicts on its 403s: refusals while the token is refused
    change nothing and wait for the circuit; the others count and back off at least a
    second (so that, the token lost, no job collects a third before the circuit opens);
    the job fails only on a refusal known to be about it, and only at the third."""
    claimed = job(attempt=0)
    for n, verdict in enumerate(verdicts):
        decision = decide(answer(403), claimed, CONFIG, NOW, lambda: rand,
                          Context(refusal=verdict))  # type: ignore[arg-type]
        if isinstance(decision, Fail):
            assert verdict == "job"
            assert claimed.consecutive_403s + 1 >= FORBIDDEN_AFTER
            assert sum(v != "token" for v in verdicts[:n + 1]) >= FORBIDDEN_AFTER
            return
        assert isinstance(decision, Hold)
        if verdict == "token":
            assert (decision.delay, decision.consecutive_403s) == (0.0, claimed.consecutive_403s)
        else:
            assert decision.delay >= 1.0
            assert decision.consecutive_403s == min(claimed.consecutive_403s + 1,
                                                    FORBIDDEN_AFTER - 1 + (verdict == "job"))
        claimed = replace(claimed, consecutive_403s=decision.consecutive_403s)
    counted = [v for v in verdicts if v != "token"]
    assert len(counted) < FORBIDDEN_AFTER or "job" not in counted[FORBIDDEN_AFTER - 1:]


def test_three_refusals_known_to_be_the_jobs_fail_it() -> None:
    claimed, decisions = job(attempt=0), []
    for _ in range(FORBIDDEN_AFTER):
        decisions.append(decide(answer(403), claimed, CONFIG, NOW, lambda: 0.5, ABOUT_THE_JOB))
        if isinstance(decisions[-1], Hold):
            claimed = replace(claimed, consecutive_403s=decisions[-1].consecutive_403s)
    assert [type(d) for d in decisions] == [Hold, Hold, Fail]


@pytest.mark.parametrize(("control", "expected"), [
    (answer(200, row()), ControlAnswer("readable")),
    (answer(202, INDEXING, retry_after="5"), ControlAnswer("readable")),
    (answer(404), ControlAnswer("readable", gone=True)),
    (answer(403, {"error": "insufficient permissions", "missing": ["jobs:read"]}),
     ControlAnswer("refused")),
    (answer(401), ControlAnswer("inconclusive")),
    (answer(429, None, retry_after="2"), ControlAnswer("inconclusive", pause_for=2.0)),
    (answer(503, None, retry_after="3"), ControlAnswer("inconclusive", pause_for=3.0)),
    (answer(503), ControlAnswer("inconclusive", fault=True)),
    (answer(500), ControlAnswer("inconclusive", fault=True)),
    (answer(502), ControlAnswer("inconclusive", fault=True)),
    (answer(410), ControlAnswer("inconclusive", gone=True)),
    (Response(200, b"<!doctype html><html></html>", "text/html"),
     ControlAnswer("inconclusive", gone=True)),
    (TransportFailure("timeout", "no answer"), ControlAnswer("inconclusive", fault=True)),
], ids=lambda v: getattr(v, "status", None) or getattr(v, "kind", "") or repr(v)[:30])
def test_what_a_control_says_about_the_token(control: Response | TransportFailure,
                                             expected: ControlAnswer) -> None:
    """A GET of a job that landed lately, asked to tell whose a run of 403s
    is (README "How upstream answers are handled")."""
    assert judge_control(control, CONFIG, NOW, lambda: 0.0) == expected


def test_stuck_after_is_read_from_the_config() -> None:
    config = PolicyConfig(stuck_after=1, stuck_recheck=60.0)
    decision = decide(answer(500, None), job(), config, NOW, lambda: 0.5)
    assert decision == Stuck(delay=60.0, status=500, body="", consecutive_500s=1, attempt=4, newly=True)


def test_deeply_nested_json_body_does_not_escape_as_recursion_error() -> None:
    """json.loads raises RecursionError (not ValueError) for ``[[[[…``; decide must not."""
    body = b"[" * 100_000
    for status in (200, 202, 401, 403, 410, 429, 500, 502):
        decision = decide(Response(status, body, "application/json"), job(), CONFIG, NOW, lambda: 0.5)
        assert isinstance(decision, DECISION_TYPES)
    with pytest.raises(ValueError, match="nested"):
        parse_batch_status(body)


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("   \t ", None, id="whitespace"),
        pytest.param("-5", None, id="negative"),
        pytest.param("+5", None, id="signed"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("1e3", None, id="exponent"),
        pytest.param("inf", None, id="inf"),
        pytest.param("nan", None, id="nan"),
        pytest.param("1.2.3", None, id="two-dots"),
        pytest.param("\u0663", None, id="arabic-indic-digit"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("5", 5.0, id="delta"),
        pytest.param(" 7 ", 7.0, id="delta-padded"),
        pytest.param("1.5", 1.5, id="decimal"),
        pytest.param("5.", 5.0, id="trailing-dot"),
        pytest.param("0" * 9_999 + "7", 7.0, id="10000-chars-of-leading-zeros"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, id="past-http-date"),
        pytest.param(http_date(90), 90.0, id="http-date"),
        pytest.param("Sun, 01 Mar 2026 12:01:30 -0000", 90.0, id="http-date-minus-zero"),
    ],
)
def test_retry_after_edges(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


@pytest.mark.parametrize(
    ("header", "date", "expected"),
    [
        pytest.param(http_date(BEHIND + 90), http_date(BEHIND), 90.0, id="clock-20s-behind"),
        pytest.param(http_date(10_800 + 90), http_date(10_800), 90.0, id="clock-3h-ahead"),
        pytest.param(http_date(-86_400 + 5), http_date(-86_400), 5.0, id="clock-a-day-behind"),
        pytest.param(http_date(90), None, 90.0, id="no-date-header-our-clock"),
        pytest.param(http_date(90), "", 90.0, id="empty-date-header-our-clock"),
        pytest.param(http_date(90), "Tuesday-ish", 90.0, id="garbage-date-header-our-clock"),
        pytest.param(http_date(90), "5", 90.0, id="numeric-date-header-our-clock"),
        pytest.param(http_date(BEHIND - 1), http_date(BEHIND), 0.0, id="a-date-before-date"),
        pytest.param(http_date(BEHIND), http_date(BEHIND), 0.0, id="a-date-equal-to-date"),
        pytest.param("7", http_date(3600), 7.0, id="delta-seconds-ignore-date"),
        pytest.param("soon", http_date(BEHIND), None, id="garbage-stays-unusable"),
    ],
)
def test_an_http_date_is_read_on_upstreams_clock(header: str, date: str | None,
                                                 expected: float | None) -> None:
    """README "How upstream answers are handled": an HTTP-date minus the answer's Date
    header (RFC 9110 §10.2.3 with §6.6.1); our clock only when Date is missing or
    unparsable."""
    assert parse_retry_after(header, NOW, date) == expected


@given(skew=st.floats(min_value=-6 * 3600, max_value=6 * 3600),
       wait=st.floats(min_value=0.0, max_value=3600.0),
       latency=st.floats(min_value=0.0, max_value=30.0))
def test_an_http_date_never_waits_less_than_upstream_meant(skew: float, wait: float,
                                                          latency: float) -> None:
    """Upstream answers at the moment ``u`` of its clock (``skew`` from ours), says
    ``Date: floor(u)`` and names ``ceil(u + wait)``, as HTTP's 1 s resolution makes it;
    the answer reaches us ``latency`` seconds later. The wait read is at least what
    upstream meant and at most a second more, whatever the skew or the latency."""
    upstream_moment = NOW.timestamp() + skew
    date = email.utils.formatdate(math.floor(upstream_moment), usegmt=True)
    named = email.utils.formatdate(math.ceil(upstream_moment + wait), usegmt=True)
    received = NOW + timedelta(seconds=latency)
    seconds = parse_retry_after(named, received, date)
    assert seconds is not None
    meant = math.ceil(upstream_moment + wait) - upstream_moment
    assert meant <= seconds <= meant + 1.0
    assert wait - 1e-6 <= seconds <= wait + 2.0


def _answer_seen(clock: UpstreamClock, ours: float, skew: float, latency: float,
                 stamped_at: float) -> tuple[str, float]:
    """An answer sent at ``ours`` reaches us ``latency`` later, stamped ``stamped_at`` of
    the way through by a clock ``skew`` from ours; the clock sees it as the engine's
    observer does. Returns its Date and the upstream moment it was stamped at."""
    upstream = ours + stamped_at * latency + skew
    date = email.utils.formatdate(math.floor(upstream), usegmt=True)
    clock.observe(date, ours, ours + latency)
    return date, upstream


@given(skew=st.floats(min_value=-6 * 3600, max_value=6 * 3600),
       earlier=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                                  st.floats(min_value=0.0, max_value=2.0),
                                  st.floats(min_value=0.0, max_value=1.0)), max_size=WINDOW),
       wait=st.floats(min_value=0.0, max_value=3600.0),
       latency=st.floats(min_value=0.0, max_value=2.0),
       stamped_at=st.floats(min_value=0.0, max_value=1.0))
def test_an_http_date_read_with_the_clocks_floor_never_waits_less_than_meant(
        skew: float, earlier: list[tuple[float, float, float]], wait: float, latency: float,
        stamped_at: float) -> None:
    """The floor of upstream's clock (harvester.upstream_clock) from any earlier answers
    and this one: the wait read with it is never shorter than what is left of upstream's
    wait when the answer arrives, and never longer than the Date reading alone."""
    clock = UpstreamClock()
    t0 = NOW.timestamp()
    for n, (phase, trip, where) in enumerate(earlier):
        _answer_seen(clock, t0 - 1000 + 10 * n + phase, skew, trip, where)
    date, upstream = _answer_seen(clock, t0, skew, latency, stamped_at)
    named = math.ceil(upstream + wait)
    received = t0 + latency
    seconds = parse_retry_after(email.utils.formatdate(named, usegmt=True),
                                datetime.fromtimestamp(received, UTC), date, clock.floor)
    assert seconds is not None
    left = named - (received + skew)  # upstream's wait, as it stands on arrival
    assert seconds >= left - 1e-6
    dated = parse_retry_after(email.utils.formatdate(named, usegmt=True),
                              datetime.fromtimestamp(received, UTC), date)
    assert dated is not None and seconds <= dated + 1e-6


@pytest.mark.parametrize("skew", [-20.0, 0.0, 20.0])
@pytest.mark.parametrize("stamped", [0.05, 0.5, 0.95])
def test_with_the_floor_a_dated_wait_is_late_by_about_a_round_trip_not_a_second(
        skew: float, stamped: float) -> None:
    """README "How upstream answers are handled": answers at every phase of the second
    put the floor within a round trip of the skew, so a wait named as a date ends that
    close to the moment named, where Date alone may add up to a second."""
    clock = UpstreamClock()
    rng = random.Random(5)
    t0 = NOW.timestamp()
    for n in range(WINDOW):
        _answer_seen(clock, t0 - 100 + n * 0.37 + rng.random(), skew, rng.uniform(0.001, 0.02),
                     0.5)
    ours = t0 + stamped  # this answer is stamped `stamped` into upstream's second
    date, upstream = _answer_seen(clock, ours - 0.01, skew, 0.02, 0.5)
    named = math.floor(upstream) + 3
    received = ours + 0.01
    seconds = parse_retry_after(email.utils.formatdate(named, usegmt=True),
                                datetime.fromtimestamp(received, UTC), date, clock.floor)
    left = named - (received + skew)
    assert seconds is not None and left <= seconds <= left + 0.15


def test_a_wrong_floor_shortens_a_dated_wait_by_less_than_a_second() -> None:
    """A floor left too high by a stepped clock (until the next answer empties it) takes
    at most a second off what the answer's own Date says."""
    named, date = http_date(90), http_date(60)
    assert parse_retry_after(named, NOW, date, floor=0.0) == 30.0
    assert parse_retry_after(named, NOW, date, floor=1000.0) == 29.0
    assert parse_retry_after(named, NOW, None, floor=10.0) == 80.0  # no Date: our clock


DATE_HEADERS = st.one_of(st.none(), st.text(max_size=70), st.datetimes(timezones=st.just(UTC)).map(
    lambda d: email.utils.format_datetime(d, usegmt=True)))


@given(DATE_HEADERS, st.integers(min_value=-10**6, max_value=10**6))
def test_any_date_header_gives_a_usable_wait_or_falls_back(date: str | None, offset: int) -> None:
    seconds = parse_retry_after(http_date(offset), NOW, date)
    assert seconds is not None and math.isfinite(seconds) and seconds >= 0


def test_retry_after_far_future_is_huge_but_finite() -> None:
    seconds = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", NOW)
    assert seconds is not None
    assert seconds == (datetime(2100, 1, 1, tzinfo=UTC) - NOW).total_seconds()
    assert math.isfinite(seconds)
    seconds = parse_retry_after("9" * 10_000, NOW)
    assert seconds is not None
    assert math.isfinite(seconds)
    assert seconds >= 10**11
    assert parse_retry_after("0.0000000001", NOW) == pytest.approx(0.0, abs=1e-9)


NUMBERISH = st.from_regex(r"\A[ +\-]?[0-9]{0,40}(\.[0-9]{0,12})?[0-9.eE]{0,3}\s?\Z")
HTTP_DATES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                          timezones=st.just(UTC)).map(lambda d: email.utils.format_datetime(d, usegmt=True))
ANY_NOW = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                       timezones=st.just(UTC))


@given(st.one_of(st.text(), NUMBERISH, HTTP_DATES, st.text(alphabet="0123456789.", max_size=200)),
       ANY_NOW)
def test_parse_retry_after_never_raises(header: str, now: datetime) -> None:
    seconds = parse_retry_after(header, now)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@given(st.integers(min_value=0, max_value=10**40))
def test_parse_retry_after_keeps_whole_seconds(n: int) -> None:
    seconds = parse_retry_after(str(n), NOW)
    assert seconds == min(float(n), 1e12)


@st.composite
def policy_configs(draw: st.DrawFn) -> PolicyConfig:
    low = draw(st.floats(min_value=0.0, max_value=1000.0))
    high = draw(st.floats(min_value=max(low, 0.1), max_value=7 * 86400.0))
    default = draw(st.floats(min_value=0.0, max_value=86400.0))
    return PolicyConfig(default_retry_after=default, min_poll_interval=low, max_poll_interval=high)


@st.composite
def asked_delays(draw: st.DrawFn) -> tuple[str | None, Any, float | None]:
    """(header, body, what upstream asked for or None when neither names a usable delay)."""
    header_kind = draw(st.sampled_from(["none", "delta", "decimal", "date", "garbage"]))
    header: str | None = None
    asked: float | None = None
    if header_kind == "delta":
        n = draw(st.integers(min_value=0, max_value=10**20))
        header, asked = str(n), min(float(n), 1e12)
    elif header_kind == "decimal":
        decimal = draw(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False))
        header, asked = format(abs(decimal), "f"), float(decimal)
    elif header_kind == "date":
        s = draw(st.integers(min_value=-10**9, max_value=10**9))
        header, asked = http_date(s), float(max(0, s))
    elif header_kind == "garbage":
        header = draw(st.sampled_from(["soon", "-5", "", "later please", "1e9", "NaN"]))
    body_kind = draw(st.sampled_from(["none", "seconds", "bad", "not-a-dict"]))
    body: Any = None
    if body_kind == "seconds":
        seconds = draw(st.floats(min_value=0.0, max_value=1e15))
        body = {"retryAfterSeconds": seconds}
        asked = seconds if asked is None else asked
    elif body_kind == "bad":
        body = {"retryAfterSeconds": draw(st.sampled_from([-1, True, "5", None, math.nan, math.inf]))}
    elif body_kind == "not-a-dict":
        body = draw(st.sampled_from([[5], "5", 5]))
    return header, body, asked


@given(asked_delays(), policy_configs(), st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_upstream_delay_is_never_earlier_and_at_most_10_percent_later(
        asked: tuple[str | None, Any, float | None], config: PolicyConfig, rand: float) -> None:
    header, body, seconds = asked
    wanted = config.default_retry_after if seconds is None else min(seconds, 1e12)
    low = min(max(wanted, config.min_poll_interval), config.max_poll_interval)
    delay = upstream_delay(header, body, config, NOW, rand)
    assert low <= delay <= low * (1 + JITTER)


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.dictionaries(st.text(), st.floats())),
       policy_configs(), st.floats(allow_nan=True))
def test_upstream_delay_is_within_the_clamp_for_any_input(
        header: str | None, body: Any, config: PolicyConfig, rand: float) -> None:
    delay = upstream_delay(header, body, config, NOW, rand)
    assert config.min_poll_interval <= delay <= config.max_poll_interval * (1 + JITTER)


# ---------------------------------------------------------------- backoff

ATTEMPTS = st.one_of(st.integers(min_value=-10, max_value=10**6), st.sampled_from([10_000, 10**6]))
UNIT = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(ATTEMPTS, st.floats(min_value=0.001, max_value=100.0), st.floats(min_value=0.0, max_value=1e6),
       UNIT)
def test_backoff_stays_within_base_and_cap(attempt: int, base: float, extra: float, rand: float) -> None:
    cap = base + extra
    delay = backoff(attempt, base=base, cap=cap, rand=rand)
    assert math.isfinite(delay)
    assert base <= delay <= cap


@given(ATTEMPTS, st.floats(min_value=0.001, max_value=100.0), st.floats(min_value=0.0, max_value=1e6),
       UNIT)
def test_backoff_grows_with_the_attempt(attempt: int, base: float, extra: float, rand: float) -> None:
    cap = base + extra
    upper = backoff(attempt, base=base, cap=cap, rand=1.0)
    assert upper <= backoff(attempt + 1, base=base, cap=cap, rand=1.0)
    assert backoff(attempt, base=base, cap=cap, rand=rand) <= backoff(attempt + 1, base=base, cap=cap,
                                                                      rand=rand)
    assert backoff(attempt, base=base, cap=cap, rand=rand) <= upper


def test_backoff_upper_bound_doubles_to_the_cap() -> None:
    uppers = [backoff(a, base=1.0, cap=300.0, rand=1.0) for a in (-10, 0, 1, 2, 8, 9, 10_000, 10**6)]
    assert uppers == [1.0, 1.0, 2.0, 4.0, 256.0, 300.0, 300.0, 300.0]
    assert backoff(10_000, base=1.0, cap=300.0, rand=0.0) == 1.0


@given(ATTEMPTS, st.floats(min_value=0.0, max_value=1000.0), st.floats(allow_nan=True))
def test_fault_delay_bounds(attempt: int, min_poll: float, rand: float) -> None:
    config = PolicyConfig(min_poll_interval=min_poll, max_poll_interval=max(min_poll, 3600.0))
    base = max(1.0, min_poll)
    delay = fault_delay(attempt, config, rand)
    assert base <= delay <= max(base, FAULT_BACKOFF_CAP)
    assert 1.0 <= fault_delay(attempt, CONFIG, rand) <= 300.0


@given(ATTEMPTS, UNIT)
def test_not_found_delay_bounds(attempt: int, rand: float) -> None:
    ceiling = min(NOT_FOUND_BACKOFF_CAP, 5.0 * 2.0 ** min(max(attempt, 0), 10))
    delay = not_found_delay(attempt, CONFIG, rand)
    assert ceiling <= delay <= ceiling * (1 + JITTER)
    assert 5.0 <= delay <= 330.0


def test_not_found_delay_doubles_from_5s_to_5min() -> None:
    assert [not_found_delay(a, CONFIG, 0.0) for a in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]


# ---------------------------------------------------------------- decide on anything

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated_rows(draw: st.DrawFn) -> bytes:
    """A result row with some fields replaced by anything JSON, dropped, or added."""
    document: dict[str, Any] = row(draw(st.sampled_from([JOB_ID, OTHER_ID])))
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=4, unique=True)):
        if draw(st.booleans()):
            del document[key]
        else:
            document[key] = draw(JSON_VALUES)
    document.update(draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2)))
    return json.dumps(document).encode()


BODIES = st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                   mutated_rows())
CONTENT_TYPES = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/html", "text/plain",
     "application/problem+json"]))
JOBS = st.builds(
    Job,
    job_id=st.just(JOB_ID),
    state=st.sampled_from(["pending", "stuck"]),
    age_origin=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)).map(lambda d: NOW - d),
    polls=st.integers(min_value=0, max_value=10**6),
    attempt=st.integers(min_value=0, max_value=10**6),
    consecutive_500s=st.integers(min_value=0, max_value=10**6),
)
ANSWERS = st.one_of(
    st.builds(Response, status=st.integers(min_value=100, max_value=599), body=BODIES,
              content_type=CONTENT_TYPES, retry_after=st.one_of(st.none(), st.text(max_size=40))),
    st.builds(TransportFailure, kind=st.sampled_from(["timeout", "connection", "too_large", "protocol"]),
              detail=st.text(max_size=50)),
)


def _check(decision: Decision) -> None:
    assert isinstance(decision, DECISION_TYPES)
    if isinstance(decision, (Retry, Stuck, Hold)):
        assert math.isfinite(decision.delay)
        assert decision.delay >= 0
    text = _text(decision)
    assert "\x00" not in text
    assert "\n" not in text


STATUSES = st.one_of(st.none(), st.sampled_from(sorted(IN_PROGRESS | FINISHED)),
                     st.just("failed"), st.just(UNKNOWN), st.text(max_size=30))
CONTEXTS = st.builds(Context, seen=STATUSES, status_usable=st.booleans(),
                     refusal=st.sampled_from(["job", "token", "unknown"]),
                     trust_not_found=st.booleans())


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ANSWERS, JOBS, UNIT, CONTEXTS, STATUSES)
def test_decide_never_raises(answer: Response | TransportFailure, claimed: Job, rand: float,
                             context: Context, known: str | None) -> None:
    claimed = Job(**{**{f: getattr(claimed, f) for f in Job.__dataclass_fields__},
                     "upstream_status": known})
    _check(decide(answer, claimed, CONFIG, NOW, lambda: rand, context))
