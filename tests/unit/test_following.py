"""Following a job through batch-status (README "How a job is followed"), from tables:
the cadence, the decision for every status, and what a batch-status call as a whole
means. Pure functions: ``now`` is an argument."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import math
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.cadence import aligned, follow_interval, grid, indexing_interval
from harvester.policy import (
    UNKNOWN,
    Fail,
    Fetch,
    Job,
    PolicyConfig,
    Retry,
    StatusAnswer,
)
from harvester.status_policy import decide_status, judge_status_call, parse_batch_status, with_status

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)  # on every grid up to 2**n s, n ≤ 4
CONFIG = PolicyConfig()
JOB_ID = UUID("5d2b8c1e-4f7a-4c3b-9e21-7a6f0d3c8b45")


def job(age: float = 60.0, upstream: str | None = None, since: float | None = None,
        state: str = "pending", refusals: int = 0) -> Job:
    return Job(job_id=JOB_ID, state=state, age_origin=NOW - timedelta(seconds=age),
               upstream_status=upstream,
               status_since=None if since is None else NOW - timedelta(seconds=since),
               consecutive_403s=refusals)


# ---------------------------------------------------------------- the cadence


@pytest.mark.parametrize(("age", "raw"), [
    (0.0, 4.0), (32.0, 5.0), (120.0, 7.75), (600.0, 22.75), (1792.0, 60.0), (86400.0, 60.0),
])
def test_follow_interval_grows_with_age_between_the_bounds(age: float, raw: float) -> None:
    interval = follow_interval(age, CONFIG, NOW)
    assert raw <= interval <= raw * 1.125 + 1e-9  # the grid lengthens by at most an eighth
    step = grid(raw)
    if step:
        assert (NOW.timestamp() + interval) % step == pytest.approx(0.0, abs=1e-6)


def test_the_bounds_are_the_settings() -> None:
    config = PolicyConfig(status_min_interval=10.0, status_max_interval=20.0)
    assert follow_interval(0.0, config, NOW) >= 10.0
    assert follow_interval(10**6, config, NOW) <= 20.0 * 1.125


def test_indexing_jobs_are_checked_together_on_the_even_seconds() -> None:
    for offset in (0.0, 0.3, 0.99, 1.0, 1.7):
        now = NOW + timedelta(seconds=offset)
        interval = indexing_interval(0.0, CONFIG, now)
        due = now.timestamp() + interval
        assert due % 2.0 == pytest.approx(0.0, abs=1e-6)
        assert 1.0 <= interval <= 3.0  # never more often than the minimum


def test_a_stalled_indexer_is_checked_less_and_less_often() -> None:
    assert indexing_interval(60.0, CONFIG, NOW) >= 17.0
    assert indexing_interval(3600.0, CONFIG, NOW) <= 60.0 * 1.125


@given(st.floats(min_value=0.0, max_value=10**7), st.floats(min_value=0.1, max_value=100.0),
       st.floats(min_value=0.0, max_value=1000.0), st.floats(min_value=0, max_value=10**6))
def test_intervals_stay_within_the_bounds(age: float, low: float, spread: float,
                                          offset: float) -> None:
    config = PolicyConfig(status_min_interval=low, status_max_interval=low + spread)
    now = NOW + timedelta(seconds=offset)
    for interval in (follow_interval(age, config, now), indexing_interval(age, config, now)):
        assert math.isfinite(interval)
        assert interval >= low - 1e-9
        assert interval <= max(low + spread, 4.0) * 1.125 + low + 2.0


@given(st.floats(min_value=0.0, max_value=10**5), st.floats(min_value=0.0, max_value=10**6))
def test_alignment_never_shortens(interval: float, offset: float) -> None:
    now = NOW + timedelta(seconds=offset)
    assert interval <= aligned(interval, now) <= interval * 1.125 + 1e-6


# ---------------------------------------------------------------- the decision


@pytest.mark.parametrize(("seen", "claimed", "expect"), [
    pytest.param("completed", job(), Fetch(), id="completed-fetch-now"),
    pytest.param("failed", job(), "upstream_failed", id="failed-no-get"),
    pytest.param(UNKNOWN, job(), Fetch(), id="unknown-first-time-get-once"),
    pytest.param(UNKNOWN, job(upstream="running"), Fetch(), id="unknown-after-running-get-once"),
    pytest.param(UNKNOWN, job(upstream=UNKNOWN), 5.875, id="unknown-again-followed"),
    pytest.param(UNKNOWN, job(upstream=UNKNOWN, refusals=1), Fetch(),
                 id="unknown-and-refused-get-again-only-a-get-ends-it"),
    pytest.param(UNKNOWN, job(age=86400.0, upstream=UNKNOWN), "not_found",
                 id="unknown-past-the-not-found-timeout"),
    pytest.param("extraction_done", job(), 2.0, id="indexing-checked-on-the-even-seconds"),
    pytest.param("extraction_done", job(upstream="extraction_done", since=120.0), 32.0,
                 id="indexing-for-two-minutes-checked-less-often"),
    *[pytest.param(status, job(age=120.0), 8.0, id=f"{status}-followed")
      for status in ("pending", "running", "waiting_retry", "extracting")],
    pytest.param("paused_by_operator", job(age=120.0), 8.0, id="an-unknown-word-is-followed"),
    pytest.param("running", job(age=8 * 86400.0), "expired", id="past-max-age-expires"),
    pytest.param("completed", job(age=8 * 86400.0), Fetch(),
                 id="completed-past-max-age-still-fetched"),
])
def test_each_status(seen: str, claimed: Job, expect: object) -> None:
    decision = decide_status(claimed, seen, CONFIG, NOW)
    if isinstance(expect, Fetch):
        assert decision == Fetch()
    elif isinstance(expect, str):
        assert isinstance(decision, Fail)
        assert decision.reason == expect
        # No GET now; not_found repeats what the one GET of an unknown job answered.
        assert decision.status == (404 if expect == "not_found" else None)
    else:
        assert isinstance(decision, Retry)
        assert decision.step == "status"
        assert decision.keep_last_answer  # last_status/last_error stay the last GET's
        assert decision.due_at == NOW + timedelta(seconds=decision.delay)
        assert float(expect) <= decision.delay <= float(expect) * 1.125 + 1e-9  # type: ignore[arg-type]


def test_a_stuck_job_stays_stuck_while_followed() -> None:
    decision = decide_status(job(state="stuck"), "running", CONFIG, NOW)
    assert isinstance(decision, Retry)
    assert decision.state == "stuck"


def test_what_was_seen_becomes_the_job_history() -> None:
    first = with_status(job(), "running", NOW)
    assert (first.upstream_status, first.status_since, first.finished_seen_at) == (
        "running", NOW, None)
    later = NOW + timedelta(seconds=30)
    same = with_status(first, "running", later)
    assert same.status_since == NOW  # the clock of a status runs from when it was first seen
    done = with_status(same, "extraction_done", later)
    assert (done.status_since, done.finished_seen_at) == (later, later)
    assert with_status(done, "completed", later + timedelta(seconds=4)).finished_seen_at == later


def test_what_was_seen_changes_nothing_else() -> None:
    """with_status builds the Job field by field (it runs once per job answered for): a
    field added to Job and not carried over fails here."""
    claimed = Job(job_id=UUID(int=7), state="stuck", age_origin=NOW - timedelta(hours=1),
                  polls=3, attempt=2, consecutive_500s=1, lease_seq=9, next_step="result",
                  upstream_status="running", status_since=NOW - timedelta(minutes=5),
                  finished_seen_at=None, consecutive_403s=4)
    seen = with_status(claimed, "completed", NOW)
    assert seen == dataclasses.replace(claimed, upstream_status="completed", status_since=NOW,
                                       finished_seen_at=NOW)
    untouched = [f.name for f in dataclasses.fields(Job)
                 if f.name not in ("upstream_status", "status_since", "finished_seen_at")]
    defaults = Job(job_id=UUID(int=8), state="pending", age_origin=NOW)
    assert all(getattr(claimed, name) != getattr(defaults, name) for name in untouched)


# ---------------------------------------------------------------- a call as a whole


@pytest.mark.parametrize(("answer", "kind", "pause"), [
    (StatusAnswer({JOB_ID: "running"}), "ok", None),
    (StatusAnswer({}), "ok", None),
    (StatusAnswer(None, 401, "batch-status answered HTTP 401"), "unauthorized", None),
    (StatusAnswer(None, 429, "429", retry_after="3"), "rate_limited", 3.0),
    (StatusAnswer(None, 429, "429"), "rate_limited", 5.0),
    (StatusAnswer(None, 503, "503", retry_after="7"), "rate_limited", 7.0),
    # An HTTP-date is read against the answer's Date: upstream's clock, 20 s behind ours.
    (StatusAnswer(None, 429, "429", retry_after=email.utils.format_datetime(
        NOW - timedelta(seconds=17), usegmt=True), date=email.utils.format_datetime(
        NOW - timedelta(seconds=20), usegmt=True)), "rate_limited", 3.0),
    (StatusAnswer(None, 503, "503"), "failed", None),
    (StatusAnswer(None, 500, "500"), "failed", None),
    (StatusAnswer(None, 403, "403"), "failed", None),
    (StatusAnswer(None, 404, "404"), "missing", None),
    (StatusAnswer(None, 200, "a web page", html=True), "missing", None),
    (StatusAnswer(None, 200, "batch-status answer not understood"), "failed", None),
    (StatusAnswer(None, None, "batch-status timed out"), "failed", None),
])
def test_what_a_batch_status_call_means(answer: StatusAnswer, kind: str,
                                        pause: float | None) -> None:
    call = judge_status_call(answer, CONFIG, NOW, lambda: 0.0)
    assert call.kind == kind
    assert call.pause_for == pause


@pytest.mark.parametrize("body", [
    b"{}", b'"running"', b"null", b"not json", b"[" * 100_000,
])
def test_a_malformed_answer_is_refused_whole(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_batch_status(body)


def test_odd_elements_are_skipped_and_statuses_kept_short() -> None:
    other = UUID("9a1e3f6c-2b7d-4e8a-8c05-1d4f7b2e6a90")
    body = json.dumps([
        {"id": str(JOB_ID), "status": "running", "currentNodeId": "x", "updatedAt": "y"},
        {"id": "not-a-uuid", "status": "running"},
        {"status": "running"},
        42,
        {"id": str(other), "status": "s" * 500, "extra": True},
    ]).encode()
    statuses = parse_batch_status(body)
    assert statuses[JOB_ID] == "running"
    assert set(statuses) == {JOB_ID, other}
    assert len(statuses[other]) == 40
