"""The engine in-process, over in-memory fakes of its ports (tests/fakes.py).

What only the engine does, shown in seconds: jobs followed by status before any GET,
batches of at most 100 IDs, the fallback when batch-status fails, shutdown hand-back,
fencing refusals, write refusals, pause and circuit hand-back, dispatcher wake-ups.
README "How a job is followed", "Pace" and "Operating".
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from harvester.engine import READY_AHEAD, STATUS_AHEAD, Engine
from harvester.errors import (
    DatabaseConfigError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    ValueRefused,
)
from harvester.follower import Claimed
from harvester.metrics import Metrics
from harvester.policy import Job, Response, StatusAnswer
from harvester.ports import Outcome, ReleaseRow
from harvester.settings import Settings, load_settings
from tests.fakes import FORBIDDEN, MemoryStore, ScriptedUpstream, row_answer


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_base_url": "http://127.0.0.1:9", "concurrency": 8, "request_timeout": 2,
        "lease_seconds": 10, "shutdown_grace": 1, "auth_probe_interval": 0.2,
        "status_min_interval": 0.1, "status_max_interval": 0.5, "default_retry_after": 0.2,
        "min_poll_interval": 0.1, **overrides}
    return load_settings(values, env_file=None)


@asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.started.wait(), 5)
    try:
        yield task
    finally:
        engine.stop()
        await asyncio.wait_for(task, 15)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def engine_for(store: MemoryStore, upstream: ScriptedUpstream, **overrides: Any) -> Engine:
    return Engine(settings(**overrides), store, upstream, Metrics(), worker_id="test")


async def test_fed_jobs_are_asked_about_in_batches_then_fetched_once() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(250)]
    store.feed(ids)
    async with running(engine_for(store, upstream, concurrency=16)):
        await until(lambda: store.states()["landed"] == 250)
    assert all(len(call) <= 100 for call in upstream.calls)
    assert sum(len(call) for call in upstream.calls) == 250  # every job asked once
    assert len(upstream.calls) <= 6  # in batches, not one call per job
    assert sorted(upstream.gets) == sorted(ids)  # exactly one GET each


async def test_running_jobs_are_followed_by_status_not_by_gets() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    running_job, failed_job, unknown_job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    upstream.statuses[running_job] = ["running", "running", "extraction_done", "completed"]
    upstream.statuses[failed_job] = ["failed"]
    upstream.statuses[unknown_job] = [None]
    upstream.results[unknown_job] = [Response(404, b'{"error": "not found"}', "application/json")]
    store.feed([running_job, failed_job, unknown_job])
    async with running(engine_for(store, upstream, not_found_timeout=1.5)):
        await until(lambda: store.states()["landed"] == 1 and store.states()["failed"] == 2)
    assert upstream.gets.count(running_job) == 1
    assert store.rows[running_job].status_checks == 4
    assert failed_job not in upstream.gets
    assert store.rows[failed_job].failed_reason == "upstream_failed"
    assert upstream.gets.count(unknown_job) == 1  # once, then followed until the timeout
    assert store.rows[unknown_job].failed_reason == "not_found"
    assert store.rows[unknown_job].upstream_status == "unknown"


async def test_batch_status_failing_falls_back_to_gets_then_comes_back() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    upstream.status_call = StatusAnswer(None, 503, "batch-status answered HTTP 503")
    first = [uuid.uuid4() for _ in range(20)]
    store.feed(first)
    engine = engine_for(store, upstream)
    with capture_logs() as logs:
        async with running(engine):
            await until(lambda: store.states()["landed"] == 20)
            assert sorted(upstream.gets) == sorted(first)  # result polling meanwhile
            upstream.status_call = None  # batch-status is back
            later = [uuid.uuid4() for _ in range(20)]
            await asyncio.sleep(1.2)  # past the first retry of the endpoint
            calls_before = len(upstream.calls)
            store.feed(later)
            await until(lambda: store.states()["landed"] == 40)
    events = [e["event"] for e in logs]
    assert events.count("upstream.batch_status_failing") == 1
    assert "upstream.batch_status_recovered" in events
    assert len(upstream.calls) > calls_before  # the later jobs were asked about again


async def test_a_fed_job_wakes_the_dispatcher_at_once() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    async with running(engine_for(store, upstream)):
        await asyncio.sleep(0.2)  # idle: the dispatcher sleeps up to 5 s while listening
        job = uuid.uuid4()
        fed = time.monotonic()
        store.feed([job])
        await until(lambda: store.states()["landed"] == 1, timeout=2.0)
        assert time.monotonic() - fed < 1.0  # woken by the notification, not the timer


async def test_shutdown_hands_back_unstarted_jobs_and_cuts_requests_in_flight() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    upstream.release.clear()  # every GET hangs until the grace period cuts it
    ids = [uuid.uuid4() for _ in range(30)]
    store.feed(ids, step="result")
    engine = engine_for(store, upstream, concurrency=4, shutdown_grace=0.3)
    async with running(engine):
        await until(lambda: upstream.in_flight == 4)
    released = {r.job.job_id: r for r in store.releases}
    in_flight = set(upstream.gets)
    assert len(in_flight) == 4
    assert set(released) == set(ids)  # every claimed job given back, none left leased
    for job_id in in_flight:  # cut by the grace: they may have reached upstream
        assert released[job_id].polled
        assert released[job_id].delay == pytest.approx(0.2)
    for job_id in set(ids) - in_flight:
        assert not released[job_id].polled and released[job_id].delay == 0.0
    assert all(row.leased_until == 0.0 for row in store.rows.values())


async def test_a_late_answer_from_a_lease_taken_over_is_fenced_off() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    upstream.release.clear()
    job = uuid.uuid4()
    store.feed([job], step="result")
    engine = engine_for(store, upstream)
    with capture_logs() as logs:
        async with running(engine):
            await until(lambda: upstream.in_flight == 1)
            store.steal(job)  # another daemon claimed it meanwhile
            upstream.release.set()
            await until(lambda: store.fenced_writes == 1)
    assert store.rows[job].state == "pending"
    assert job not in store.mirror
    assert [e["event"] for e in logs].count("job.fenced") == 1


async def test_a_batch_the_database_refuses_is_retried_row_by_row_as_backoff() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(3)]
    bad = ids[0]

    def refuse(outcomes: Any) -> Exception | None:
        if any(o.job.job_id == bad and o.decision.__class__.__name__ == "Land" for o in outcomes):
            return ValueRefused("database refused a value: a value the database cannot hold "
                                "(22001 StringDataRightTruncationError: value too long)")
        return None

    store.fail_writes = refuse
    store.feed(ids, step="result")
    with capture_logs() as logs:
        async with running(engine_for(store, upstream)):
            await until(lambda: store.states()["landed"] == 2)
            await until(lambda: store.rows[bad].last_error is not None)
    assert store.rows[bad].state == "pending"
    assert "refused" in (store.rows[bad].last_error or "")
    assert "store.write_refused" in [e["event"] for e in logs]


async def test_a_429_pauses_every_request_and_lowers_the_send_rate() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(400)]
    limited = ids[200]
    upstream.results[limited] = [Response(429, b"{}", "application/json", retry_after="1")]
    answered: list[float] = []
    original = upstream.fetch_result

    async def timed(job_id: uuid.UUID) -> Any:
        answer = await original(job_id)
        answered.append(time.monotonic())
        if job_id == limited:
            upstream.results[limited] = []  # the next poll finds the row
        return answer

    upstream.fetch_result = timed  # type: ignore[method-assign]
    store.feed(ids, step="result")
    engine = engine_for(store, upstream, concurrency=8)
    with capture_logs() as logs:
        async with running(engine):
            await until(lambda: engine.gate.paused_until > 0)
            pause_end = engine.gate.paused_until
            before = engine.gate.rate.allowed
            await until(lambda: store.states()["landed"] == 400, timeout=20)
    # Requests already in flight may answer during the pause; none leaves during it.
    sent_during = [t for t in answered if pause_end - 0.9 < t < pause_end - 0.01]
    assert len(sent_during) <= 8
    assert before < 6400
    events = [e["event"] for e in logs]
    assert events.count("upstream.paused") == 1
    assert events.count("upstream.rate_limited") == 1


async def test_a_refusal_is_heard_by_the_other_daemons_sharing_the_database() -> None:
    """README "Pace", several daemons: the refused daemon pauses and says so once on the
    database's channel; the other settles its rate too, without pausing."""
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(400)]
    limited = ids[100]
    upstream.results[limited] = [Response(429, b"{}", "application/json", retry_after="1"),
                                 row_answer(limited)]
    # At 50/s each claims at most 200 (the claim horizon): both are busy at the 429.
    engines = [Engine(settings(max_rps=50), store, upstream, Metrics(), worker_id=f"d{i}")
               for i in range(2)]
    with capture_logs() as logs:
        async with running(engines[0]), running(engines[1]):
            store.feed(ids, step="result")
            await until(lambda: store.states()["landed"] == 400, timeout=20)
    refused = [e for e in engines if e.gate.paused_until > 0]
    assert len(refused) == 1
    heard = next(e for e in engines if e is not refused[0])
    assert [json.loads(p)["worker"] for p in store.announced] == [refused[0].worker_id]
    assert (heard.gate.rate.cuts, heard.gate.rate.cut_heard) == (1, True)
    lines = [e for e in logs if e["event"] == "upstream.rate_limited"]
    assert [e.get("refused_daemon") for e in lines] == [None, refused[0].worker_id]


async def test_a_401_opens_the_circuit_and_hands_jobs_back_uncharged() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(12)]
    unauthorized = Response(401, b'{"error": "invalid token"}', "application/json")
    for job_id in ids:
        upstream.results[job_id] = [unauthorized, unauthorized]
        upstream.results[job_id].append(unauthorized)
    store.feed(ids, step="result")
    engine = engine_for(store, upstream)
    with capture_logs() as logs:
        async with running(engine):
            await until(lambda: engine.gate.auth.is_open)
            assert engine.health()["auth_circuit_closed"] is False
            await asyncio.sleep(0.6)  # a few probe intervals
            for job_id in ids:
                upstream.results[job_id] = []  # the token works again
            await until(lambda: store.states()["landed"] == 12)
    assert all(row.attempt == 0 for row in store.rows.values())
    assert [e["event"] for e in logs].count("auth.circuit_open") == 1
    assert len(upstream.gets) < 12 + 12 + 10  # probes, not a storm


@asynccontextmanager
async def having_landed(count: int) -> AsyncIterator[
        tuple[MemoryStore, ScriptedUpstream, Engine, list[MutableMapping[str, Any]]]]:
    """A running engine that landed ``count`` jobs, then heard nothing for longer than a
    readable answer vouches for the token (README "How upstream answers are handled")."""
    store, upstream = MemoryStore(), ScriptedUpstream()
    store.feed([uuid.uuid4() for _ in range(count)])
    engine = engine_for(store, upstream)
    with capture_logs() as logs:
        async with running(engine):
            await until(lambda: store.states()["landed"] == count)
            await asyncio.sleep(1.5)
            yield store, upstream, engine, logs


async def test_foreign_jobs_fail_forbidden_after_three_refusals_checked_with_a_landed_job(
) -> None:
    """A batch of another organisation's jobs, fed when nothing else is being answered, is
    checked with a GET of a job that landed before (not a poll of it), holds nothing back,
    and each fails at the third refusal; the token is never suspected."""
    async with having_landed(3) as (store, upstream, engine, logs):
        landed = list(store.rows)
        foreign = [uuid.uuid4() for _ in range(30)]
        ordinary = [uuid.uuid4() for _ in range(100)]
        for job_id in foreign:
            upstream.results[job_id] = [FORBIDDEN]
        store.feed(foreign)
        store.feed(ordinary)
        await until(lambda: store.states() == {"pending": 0, "stuck": 0, "landed": 103,
                                               "failed": 30})
    assert {store.rows[j].failed_reason for j in foreign} == {"forbidden"}
    assert [store.rows[j].polls for j in foreign] == [3] * 30
    assert all(store.rows[j].polls == 1 for j in ordinary)
    checks = {result: engine.metrics.permission_checks.labels(result)._value.get()
              for result in ("readable", "refused", "inconclusive")}
    assert checks["readable"] >= 1 and checks["refused"] == 0  # the question was put ...
    # ... as GETs of jobs that landed, which are no poll of those jobs.
    assert len(upstream.gets) == sum(row.polls for row in store.rows.values()) + sum(
        checks.values())
    assert all(store.rows[j].polls == 1 for j in landed)
    assert "permission.circuit_open" not in [e["event"] for e in logs]


async def test_a_token_that_loses_jobs_read_is_found_by_a_control_and_fails_nothing() -> None:
    async with having_landed(5) as (store, upstream, engine, logs):
        upstream.refuse_all = True
        after = [uuid.uuid4() for _ in range(40)]
        store.feed(after)
        await until(lambda: engine.gate.permission.is_open)
        assert engine.health()["permission_circuit_closed"] is False
        await asyncio.sleep(1.0)  # probes (controls) refused meanwhile
        refused_gets = len(upstream.gets)
        upstream.refuse_all = False
        await until(lambda: store.states()["landed"] == 45)
    opened = [e for e in logs if e["event"] == "permission.circuit_open"]
    assert len(opened) == 1 and "landed lately is refused too" in opened[0]["because"]
    assert [e["event"] for e in logs].count("permission.circuit_closed") == 1
    assert store.states()["failed"] == 0
    assert max(store.rows[j].consecutive_403s for j in after) <= 2
    assert all(row.attempt == 0 for row in store.rows.values())
    assert refused_gets < 5 + 40 + 20  # each job once at most, then probes: not a storm


async def test_a_vital_task_that_dies_stops_the_daemon_with_its_error() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()

    async def broken(*_args: Any) -> Any:
        raise RuntimeError("the claim query is broken")

    store.claim = broken  # type: ignore[method-assign,assignment]
    engine = engine_for(store, upstream)
    with capture_logs() as logs, pytest.raises(RuntimeError, match="claim query is broken"):
        await asyncio.wait_for(engine.run(), 10)
    assert "daemon.task_failed" in [e["event"] for e in logs]


async def test_a_database_outage_is_waited_out() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    store.unavailable = True
    ids = [uuid.uuid4() for _ in range(5)]
    store.feed(ids)
    engine = engine_for(store, upstream)
    with capture_logs() as logs:
        async with running(engine):
            await asyncio.sleep(0.5)
            assert engine.health()["database_serving"] is False
            store.unavailable = False
            await until(lambda: store.states()["landed"] == 5)
            await until(lambda: engine.health()["database_serving"])
    events = [e["event"] for e in logs]
    assert events.count("store.unavailable") == 1
    assert events.count("store.recovered") == 1


# README "The database's faults": whatever the fault, the daemon does not exit; it is
# said once when it starts (an error when no wait cures it by itself) and once when it
# ends, readiness fails meanwhile, and no job is charged for it.
@pytest.mark.parametrize(("fault", "level"), [
    (StoreUnavailable("database unavailable: a read-only node (25006 "
                      "ReadOnlySQLTransactionError: cannot execute UPDATE in a read-only "
                      "transaction)", code="25006"), "warning"),
    (DatabaseConfigError("HARVESTER_DATABASE_URL: the role lacks a privilege (42501 "
                         "InsufficientPrivilegeError: permission denied for table jobs)",
                         code="42501"), "error"),
    (StoreError("database error: the server's internal error (XX000 InternalServerError: "
                "cache lookup failed)", code="XX000"), "error"),
], ids=["read-only", "privilege-revoked", "unexpected"])
async def test_every_database_fault_is_waited_out_said_once_and_charges_nothing(
    fault: StoreError, level: str
) -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(20)]
    store.feed(ids, step="result")
    store.fault = fault
    engine = engine_for(store, upstream)
    with capture_logs() as logs:
        async with running(engine):
            await until(lambda: engine.outage.failures >= 5)
            assert engine.health()["database_serving"] is False
            assert not upstream.gets  # nothing claimed, nothing asked
            store.fault = None
            await until(lambda: store.states()["landed"] == 20)
            await until(lambda: engine.health()["database_serving"])
    assert all((row.polls, row.attempt) == (1, 0) for row in store.rows.values())
    said = [e for e in logs if e["event"] in ("store.unavailable", "store.recovered")]
    assert [(e["event"], e["log_level"]) for e in said] == [
        ("store.unavailable", level), ("store.recovered", "info")]
    assert said[0]["cause"] == fault.code
    assert said[1]["causes"] == [fault.code]


async def test_answers_held_through_a_write_outage_are_written_not_asked_again() -> None:
    """The dispatcher claims nothing while writes wait: a job whose answer is held must
    not be claimed again when its lease lapses (its answer would be fenced off)."""
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(10)]
    store.feed(ids, step="result")
    away = StoreUnavailable("database unavailable: connection lost", code="08006")
    store.fail_writes = lambda _outcomes: away
    engine = engine_for(store, upstream, lease_seconds=2, request_timeout=1)
    async with running(engine):
        await until(lambda: len(upstream.gets) == 10)
        await asyncio.sleep(2.5)  # every lease has lapsed
        store.feed([])  # a NOTIFY: the dispatcher looks for due jobs now
        await asyncio.sleep(0.5)
        store.fail_writes = None
        await until(lambda: store.states()["landed"] == 10)
    assert sorted(upstream.gets) == sorted(ids)  # one GET each
    assert store.fenced_writes == 0


async def test_a_conflict_is_retried_at_once_without_an_outage() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    ids = [uuid.uuid4() for _ in range(3)]
    store.feed(ids, step="result")
    conflict = StoreConflict("database unavailable: the server rolled the transaction back "
                             "(40P01 DeadlockDetectedError: deadlock detected)", code="40P01")
    pending = [conflict]
    store.fail_writes = lambda _outcomes: pending.pop() if pending else None
    with capture_logs() as logs:
        async with running(engine_for(store, upstream)):
            await until(lambda: store.states()["landed"] == 3)
    events = [e["event"] for e in logs]
    assert "store.conflict_retried" in events
    assert "store.unavailable" not in events


def _written(store: MemoryStore) -> list[Outcome]:
    return [o for batch in store.writes for o in batch]


async def test_a_job_still_running_is_written_back_with_its_next_check() -> None:
    store, upstream = MemoryStore(), ScriptedUpstream()
    job = uuid.uuid4()
    upstream.statuses[job] = ["running"]
    store.feed([job])
    async with running(engine_for(store, upstream)):
        await until(lambda: store.rows[job].status_checks >= 2)
    follows = [o for o in _written(store) if o.job.job_id == job]
    assert all(not o.polled and o.seen == "running" for o in follows)
    assert upstream.gets == []




class SlowTopUps(MemoryStore):
    """Top-up claims wait until the test lets them come back."""

    def __init__(self) -> None:
        super().__init__()
        self.top_ups_back = asyncio.Event()
        self.top_ups_waiting = 0

    async def claim_soon(self, limit: int, lease_seconds: float, worker_id: str,
                         within: float) -> list[Job]:
        self.top_ups_waiting += 1
        await self.top_ups_back.wait()
        return await super().claim_soon(limit, lease_seconds, worker_id, within)

    async def release(self, rows: Sequence[ReleaseRow]) -> set[uuid.UUID]:
        await asyncio.sleep(0.05)  # a database some way off: others run meanwhile
        return await super().release(rows)


class StatusHangsOnceShutdownBegins(ScriptedUpstream):
    """A batch-status call sent after the shutdown began is still in flight when the
    calls are cancelled."""

    shutdown_began = asyncio.Event()

    async def batch_status(self, job_ids: Sequence[uuid.UUID]) -> StatusAnswer:
        if self.shutdown_began.is_set():
            await asyncio.Event().wait()
        return await super().batch_status(job_ids)


async def test_top_up_claims_that_come_back_during_shutdown_are_handed_back() -> None:
    """Two calls are topping up when the shutdown begins, and their claims come back
    just after it has taken the follower's jobs out: whichever call they belong to,
    their jobs are handed back, not left under a lease nobody works on. (Cancelled one
    after the other, the second call took its claim in while the first was handing
    its own back, asked about it, and was cancelled with it in hand.)"""
    store, upstream = SlowTopUps(), StatusHangsOnceShutdownBegins()
    upstream.shutdown_began = store.top_ups_back
    now = time.monotonic()
    soon = [uuid.uuid4() for _ in range(400)]
    store.feed(soon)
    for job_id in soon:
        store.rows[job_id].next_poll = now + 0.8  # due within a second: top-up fodder
    engine = engine_for(store, upstream, concurrency=4)
    original_unasked = engine.follower.unasked

    def unasked_then_claims_come_back() -> list[Claimed]:
        taken = original_unasked()
        store.top_ups_back.set()
        return taken

    engine.follower.unasked = unasked_then_claims_come_back  # type: ignore[method-assign]
    async with running(engine):
        store.feed([uuid.uuid4() for _ in range(20)])  # one call: it tops up
        await until(lambda: store.top_ups_waiting == 1)
        store.feed([uuid.uuid4() for _ in range(20)])  # another call: it tops up too
        await until(lambda: store.top_ups_waiting == 2)
    leased = [r.job_id for r in store.rows.values()
              if r.state == "pending" and r.leased_until > time.monotonic()]
    assert leased == []


async def test_a_status_call_is_topped_up_to_a_full_call_even_under_a_send_rate() -> None:
    """README "How a job is followed": under a send rate the daemon claims no more than
    4 s of sending, but a batch-status call with room still takes jobs due within a
    second up to a full call (fewer requests; capped at the 4 s, bench (g) landed 3-4 %
    less of a gateway's limit)."""
    store, upstream = MemoryStore(), ScriptedUpstream()
    now = time.monotonic()
    soon = [uuid.uuid4() for _ in range(300)]
    store.feed(soon)
    for job_id in soon:
        store.rows[job_id].next_poll = now + 0.9
    async with running(engine_for(store, upstream, concurrency=4, max_rps=2)):
        store.feed([uuid.uuid4() for _ in range(3)])  # due now: a call that tops up
        await until(lambda: len(upstream.calls) >= 1)
    assert len(upstream.calls[0]) == 100


async def test_one_call_of_jobs_is_claimed_ready_beyond_the_status_calls_and_no_more() -> None:
    """README "How a job is followed": beyond its workers the daemon holds up to
    STATUS_AHEAD jobs for batch-status and READY_AHEAD more followed and ready, so a
    worker whose request ends takes a job at once; the claim stops there."""
    engine = engine_for(MemoryStore(), ScriptedUpstream(), concurrency=8)
    job = Job(uuid.uuid4(), "pending", datetime.now(UTC))
    assert engine._room() == 8 + STATUS_AHEAD + READY_AHEAD
    for _ in range(8 + STATUS_AHEAD):
        engine.local.put_nowait(Claimed(job, time.monotonic()))
    assert engine._room() == READY_AHEAD >= engine.min_claim  # a claim still goes out
    for _ in range(READY_AHEAD):
        engine.local.put_nowait(Claimed(job, time.monotonic()))
    assert engine._room() == 0
