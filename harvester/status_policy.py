"""The pure core's second question: what batch-status said, for one job and for a call
as a whole; and what a control request (whose are the 403s?) found (README "How a job
is followed", "How upstream answers are handled"). Beside :mod:`harvester.policy`,
whose values it returns; nothing here touches a socket, a database or the clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal
from uuid import UUID

from pydantic import TypeAdapter, ValidationError

from harvester.api import COMPLETED, FAILED, FINISHED, INDEXING
from harvester.cadence import follow_interval, indexing_interval
from harvester.model import BatchStatusEntry
from harvester.policy import (
    UNKNOWN,
    Answer,
    ControlResult,
    Fail,
    Fetch,
    Job,
    PolicyConfig,
    Random,
    Retry,
    StatusAnswer,
    StatusDecision,
    TransportFailure,
    _expire,
    _not_found,
    age_seconds,
    looks_like_html,
    rate_limited,
    shorten,
)
from harvester.waits import parse_retry_after


def decide_status(job: Job, seen: str, config: PolicyConfig, now: datetime
                  ) -> StatusDecision:
    """The next step for ``job`` after batch-status said ``seen`` about it (``unknown``
    when it left the job out). README "How a job is followed":

    - ``completed``: GET the row now;
    - ``extraction_done``: the row is seconds away; check again soon rather than collect
      a 202 (a GET then would cost a request and wait out a Retry-After anyway);
    - ``failed``: fail ``upstream_failed`` without a GET;
    - left out: GET once (the result endpoint may know it), then follow it until
      NOT_FOUND_TIMEOUT;
    - anything else (pending, running, a status this version does not know): follow it,
      often while it is young and less often as it keeps running.
    """
    age = age_seconds(job, now)
    if seen == FAILED:
        return Fail(reason="upstream_failed", error="upstream reports the job failed",
                    status=None)
    if seen == COMPLETED:
        return Fetch()
    if seen == UNKNOWN:
        if job.upstream_status != UNKNOWN or job.consecutive_403s:
            # Once, or again for a job the result endpoint refused: only a GET ends that
            # (another organisation's job is left out of batch-status).
            return Fetch()
        if age >= config.not_found_timeout:
            return _not_found(age, "unknown to batch-status")
        delay = follow_interval(age, config, now)
    elif seen == INDEXING:
        since = job.status_since if job.upstream_status == INDEXING else None
        in_state = 0.0 if since is None else max(0.0, (now - since).total_seconds())
        delay = indexing_interval(in_state, config, now)
    else:
        delay = follow_interval(age, config, now)
    follow = Retry(delay=delay, status=None, error=None, attempt=job.attempt,
                   consecutive_500s=job.consecutive_500s,
                   state="stuck" if job.state == "stuck" else "pending",
                   step="status", keep_last_answer=True, due_at=now + timedelta(seconds=delay))
    return _expire(follow, job, config, now)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class StatusCall:
    """What a batch-status call as a whole means for the daemon.

    ``ok``: use the statuses. ``unauthorized``: the token (auth circuit). ``rate_limited``:
    pause for ``pause_for`` and slow down. ``missing``: the endpoint is not there (404, or
    a web page): the base URL may be wrong. ``failed``: anything else (5xx, a timeout,
    403 for this endpoint, garbage): fall back to result GETs for now.
    """

    kind: Literal["ok", "unauthorized", "rate_limited", "missing", "failed"]
    error: str | None = None
    pause_for: float | None = None


def judge_status_call(answer: StatusAnswer, config: PolicyConfig, now: datetime,
                      rand: Random, clock_floor: float | None = None) -> StatusCall:
    """What a batch-status call's answer means for the calls and jobs after it
    (``clock_floor``: see :class:`~harvester.policy.Context`)."""
    if answer.statuses is not None:
        return StatusCall("ok")
    status = answer.status
    error = answer.error or (f"batch-status answered HTTP {status}" if status
                             else "batch-status failed")
    if status == 401:
        return StatusCall("unauthorized", error)
    if status in (429, 503):
        pause = parse_retry_after(answer.retry_after, now, answer.date, clock_floor)
        if status == 429 or pause is not None:
            return StatusCall("rate_limited", error,
                              rate_limited(status, pause, config, rand).pause_for)
    if status == 404 or answer.html:
        return StatusCall("missing", error)
    return StatusCall("failed", error)


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What the answer to a control request (a GET of a job that landed lately, asked
    when 403s come in a run) says about the token.

    ``readable``: the token reads results; ``refused``: it is refused too;
    ``inconclusive``: no telling (a fault, a 401, a pause). ``gone``: this job is no use
    as a control any more. ``pause_for`` and ``fault`` are for the gate, as for any
    answer."""

    result: ControlResult
    gone: bool = False
    fault: bool = False
    pause_for: float | None = None


def judge_control(answer: Answer, config: PolicyConfig, now: datetime, rand: Random,
                  clock_floor: float | None = None) -> ControlAnswer:
    if isinstance(answer, TransportFailure):
        return ControlAnswer("inconclusive", fault=True)
    status = answer.status
    if status == 403:
        return ControlAnswer("refused")
    if status in (200, 202) and not looks_like_html(answer):
        return ControlAnswer("readable")
    if status == 404:
        return ControlAnswer("readable", gone=True)  # the endpoint answered: the row went
    if status in (429, 503):
        pause = parse_retry_after(answer.retry_after, now, answer.date, clock_floor)
        if status == 429 or pause is not None:
            return ControlAnswer("inconclusive",
                                 pause_for=rate_limited(status, pause, config, rand).pause_for)
    if status >= 500:
        return ControlAnswer("inconclusive", fault=True)
    return ControlAnswer("inconclusive", gone=status != 401)


_STATUS_LIST: Final = TypeAdapter(list[BatchStatusEntry])


def parse_batch_status(body: bytes) -> Mapping[UUID, str]:
    """The batch-status answer as {job_id: status}; raises ValueError on garbage.

    A well-formed answer is validated in one pass from the bytes (pydantic-core parses
    and validates together: half the CPU of json.loads and a model per element); only
    an answer with an odd element takes the slow path, element by element."""
    try:
        entries = _STATUS_LIST.validate_json(body)
    except ValidationError:
        return _parse_element_by_element(body)
    return {entry.id: shorten(entry.status, 40) for entry in entries}


def _parse_element_by_element(body: bytes) -> Mapping[UUID, str]:
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
        statuses[entry.id] = shorten(entry.status, 40)
    return statuses


def with_status(job: Job, seen: str, now: datetime) -> Job:
    """``job`` as it is once batch-status said ``seen`` (what the next decision sees)."""
    since = job.status_since if job.upstream_status == seen else now
    finished = job.finished_seen_at or (now if seen in FINISHED else None)
    # Job(...) rather than dataclasses.replace: this runs once per job batch-status
    # answered for, and replace() looks the fields up each time (about 3x the cost).
    # (tests/unit/test_following.py checks every other field is carried over.)
    return Job(job_id=job.job_id, state=job.state, age_origin=job.age_origin,
               polls=job.polls, attempt=job.attempt, consecutive_500s=job.consecutive_500s,
               lease_seq=job.lease_seq, next_step=job.next_step, upstream_status=seen,
               status_since=since, finished_seen_at=finished,
               consecutive_403s=job.consecutive_403s)
