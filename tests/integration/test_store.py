"""The store against a real PostgreSQL: claims, leases, fencing, batch writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

from harvester.model import ExtractionResult
from harvester.policy import Fail, Hold, Land, Retry, Stuck
from harvester.ports import Outcome, ReleaseRow
from harvester.store import create_pool
from harvester.store.queue import CLAIM_SQL
from harvester.tools.simulator import result_row
from tests.helpers import enqueue
from tests.stores import Store


def land_for(job_id: uuid.UUID, **changes: object) -> Land:
    row = {**result_row(job_id), **changes}
    payload = json.dumps(row)
    return Land(ExtractionResult.model_validate_json(payload), payload)


async def test_concurrent_claims_never_share_a_job(store: Store, pool: asyncpg.Pool) -> None:
    ids = [uuid.uuid4() for _ in range(1000)]
    await enqueue(pool, ids)
    batches = await asyncio.gather(*(store.claim(100, 60, f"w{i}") for i in range(12)))
    claimed = [job.job_id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 1000
    assert await store.claim(10, 60, "late") == []


async def test_a_lapsed_lease_makes_the_job_claimable_again(store: Store, pool: asyncpg.Pool
                                                            ) -> None:
    job_id = uuid.uuid4()
    await enqueue(pool, [job_id])
    (first,) = await store.claim(10, 60, "a")
    assert await store.claim(10, 60, "b") == []
    await pool.execute("UPDATE harvester.jobs SET leased_until = now() - interval '1 second'")
    (second,) = await store.claim(10, 60, "b")
    assert second.job_id == job_id
    assert second.lease_seq == first.lease_seq + 1


async def test_a_late_answer_from_an_expired_lease_is_fenced_off(store: Store, pool: asyncpg.Pool
                                                                 ) -> None:
    job_id = uuid.uuid4()
    await enqueue(pool, [job_id])
    (stale,) = await store.claim(1, 60, "slow")
    await pool.execute("UPDATE harvester.jobs SET leased_until = now() - interval '1 second'")
    (fresh,) = await store.claim(1, 60, "fast")
    landed = await store.write([Outcome(fresh, land_for(job_id))])
    assert landed.written == {job_id}
    late = await store.write([Outcome(stale, Fail("forbidden", "403", 403))])
    assert late.fenced == {job_id}
    assert late.written == set()
    row = await pool.fetchrow("SELECT state, failed_reason FROM harvester.jobs")
    assert row is not None
    assert (row["state"], row["failed_reason"]) == ("landed", None)


async def test_landing_the_same_row_twice_changes_nothing(db_url: str, store: Store,
                                                          pool: asyncpg.Pool) -> None:
    job_id = uuid.uuid4()
    await enqueue(pool, [job_id])
    listener = await asyncpg.connect(db_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("harvester_landed", lambda *a: heard.put_nowait(a[3]))
    try:
        (job,) = await store.claim(1, 60, "w")
        await store.write([Outcome(job, land_for(job_id))])
        first = await pool.fetchrow("SELECT * FROM harvester.extraction_results")
        assert await asyncio.wait_for(heard.get(), 5) == str(job_id)
        # Requeue and land again with an identical body.
        await store.requeue(job_ids=[job_id])
        await pool.execute("UPDATE harvester.jobs SET state = 'pending', next_poll_at = now()")
        (again,) = await store.claim(1, 60, "w")
        await store.write([Outcome(again, land_for(job_id))])
        second = await pool.fetchrow("SELECT * FROM harvester.extraction_results")
        await asyncio.sleep(0.2)
        assert heard.empty()
        # A different body is written, moves harvested_at and notifies.
        await pool.execute("UPDATE harvester.jobs SET state = 'pending', next_poll_at = now()")
        (third,) = await store.claim(1, 60, "w")
        await store.write([Outcome(third, land_for(job_id, domain="changed.example"))])
        changed = await pool.fetchrow("SELECT * FROM harvester.extraction_results")
        assert await asyncio.wait_for(heard.get(), 5) == str(job_id)
    finally:
        await listener.close()
    assert first is not None and second is not None and changed is not None
    assert dict(first) == dict(second)
    assert changed["domain"] == "changed.example"
    assert changed["harvested_at"] > first["harvested_at"]


async def test_one_refused_row_does_not_sink_the_batch(store: Store, pool: asyncpg.Pool) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    await enqueue(pool, ids)
    jobs = await store.claim(5, 60, "w")
    outcomes = []
    poisoned = jobs[2].job_id
    for job in jobs:
        decision = land_for(job.job_id)
        if job.job_id == poisoned:
            # A NUL in a text column: PostgreSQL refuses it (the policy normally stops
            # such bodies earlier; the store must still cope).
            decision = replace(decision, result=decision.result.model_copy(
                update={"domain": "bad\x00domain"}))
        outcomes.append(Outcome(job, decision))
    report = await store.write(outcomes)
    assert set(report.rejected) == {poisoned}
    assert report.written == set(ids) - {poisoned}
    assert report.landed == 4
    rows = await pool.fetch("SELECT job_id, state FROM harvester.jobs")
    states: dict[uuid.UUID, str] = {r["job_id"]: r["state"] for r in rows}
    assert states[poisoned] == "pending"
    assert sum(1 for s in states.values() if s == "landed") == 4


async def test_each_decision_writes_its_state(store: Store, pool: asyncpg.Pool) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    await enqueue(pool, ids)
    jobs = sorted(await store.claim(5, 60, "w"), key=lambda j: ids.index(j.job_id))
    decisions: list[Land | Retry | Stuck | Fail | Hold] = [
        land_for(ids[0]),
        Retry(delay=30, status=202, error=None, attempt=0, consecutive_500s=0),
        Stuck(delay=900, status=500, body="no row", consecutive_500s=3, attempt=3, newly=True),
        Fail("upstream_failed", "upstream reports the job failed", None),
        Hold(delay=0, status=401, error="token rejected", auth_failed=True),
    ]
    seen: list[str | None] = [None, None, None, "failed", None]
    polled = [True, True, True, False, True]
    report = await store.write([Outcome(j, d, seen=s, polled=p) for j, d, s, p
                                in zip(jobs, decisions, seen, polled, strict=True)])
    assert report.written == set(ids)
    rows = {r["job_id"]: r for r in await pool.fetch(
        "SELECT *, extract(epoch FROM next_poll_at - now()) AS due_in FROM harvester.jobs")}
    assert rows[ids[0]]["state"] == "landed" and rows[ids[0]]["next_poll_at"] is None
    assert rows[ids[1]]["state"] == "pending" and 29 < rows[ids[1]]["due_in"] <= 30
    assert rows[ids[2]]["state"] == "stuck" and rows[ids[2]]["consecutive_500s"] == 3
    assert rows[ids[3]]["failed_reason"] == "upstream_failed"
    assert rows[ids[3]]["upstream_status"] == "failed"
    assert rows[ids[4]]["state"] == "pending" and rows[ids[4]]["last_status"] == 401
    assert rows[ids[4]]["attempt"] == 0
    assert rows[ids[3]]["status_checks"] == 1 and rows[ids[3]]["polls"] == 0
    assert all(r["polls"] == 1 for k, r in rows.items() if k != ids[3])
    assert all(r["leased_until"] is None for r in rows.values())
    stuck = await pool.fetch("SELECT job_id FROM harvester.open_stuck_jobs")
    assert [r["job_id"] for r in stuck] == [ids[2]]


async def test_release_gives_jobs_back_without_charging_an_attempt(store: Store,
                                                                  pool: asyncpg.Pool) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    await enqueue(pool, ids)
    jobs = await store.claim(3, 60, "w")
    released = await store.release([ReleaseRow(j, 0.0) for j in jobs])
    assert released == set(ids)
    again = await store.claim(3, 60, "w2")
    assert {j.job_id for j in again} == set(ids)
    assert all(j.polls == 0 and j.attempt == 0 for j in again)
    # A stale release (old lease) is fenced off like any write.
    assert await store.release([ReleaseRow(jobs[0], 0.0)]) == set()


async def test_next_due_ignores_jobs_in_flight(store: Store, pool: asyncpg.Pool) -> None:
    now_job, later_job = uuid.uuid4(), uuid.uuid4()
    await enqueue(pool, [now_job])
    await pool.execute("INSERT INTO harvester.jobs (job_id, next_poll_at) "
                       "VALUES ($1, now() + interval '1 hour')", later_job)
    await store.claim(1, 60, "w")
    due = await store.next_due_at()
    assert due is not None
    assert (due - datetime.now(UTC)).total_seconds() > 3500


async def test_claim_is_an_in_place_update(pool: asyncpg.Pool) -> None:
    """The claim changes no indexed column, so PostgreSQL can update rows in place (HOT)
    instead of adding index entries for every claim."""
    await enqueue(pool, [uuid.uuid4() for _ in range(200)])
    await pool.execute("VACUUM harvester.jobs")
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetch(CLAIM_SQL, 200, 60.0, "w")
        hot = await conn.fetchval(
            "SELECT pg_stat_get_xact_tuples_hot_updated('harvester.jobs'::regclass)")
        updated = await conn.fetchval(
            "SELECT pg_stat_get_xact_tuples_updated('harvester.jobs'::regclass)")
    assert len(claimed) == updated == 200
    assert hot >= 150  # nearly all: the half-empty pages (fillfactor 50) hold the new versions


async def test_the_daemon_pool_skips_the_flush_but_feeding_waits_for_it(db_url: str) -> None:
    """Claims and outcomes may be lost with a PostgreSQL crash (they are polled again);
    a fed job may not."""
    fast = await create_pool(db_url, min_size=1, max_size=1, wait_for_flush=False)
    try:
        assert await fast.fetchval("SHOW synchronous_commit") == "off"
        store = Store(fast)
        async with fast.acquire() as conn, conn.transaction():
            await store.enqueue([uuid.uuid4()], conn)
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await fast.fetchval("SHOW synchronous_commit") == "off"  # SET LOCAL only
    finally:
        await fast.close()


async def test_the_daemon_claims_from_the_head_of_the_due_index_before_any_analyze(
    db_url: str,
) -> None:
    """Right after a bulk feed the planner's statistics still describe an empty queue,
    and a claim planned from them reads and sorts every due row to return a hundred.
    The daemon's sessions take the first rows of the due index instead (the pool's
    ``queue_plans``; README "Performance")."""
    daemon = await create_pool(db_url, min_size=1, max_size=1, wait_for_flush=False,
                               queue_plans=True)
    try:
        await daemon.execute("ANALYZE harvester.jobs")  # statistics of an empty queue
        await enqueue(daemon, [uuid.uuid4() for _ in range(20_000)])
        plan = "\n".join(r[0] for r in await daemon.fetch("EXPLAIN " + CLAIM_SQL, 100, 60.0, "w"))
    finally:
        await daemon.close()
    assert "Index Scan using jobs_due_idx" in plan, plan
    assert "Bitmap" not in plan and "Sort" not in plan, plan


async def test_claim_soon_takes_status_checks_due_within_the_window_only(
        store: Store, pool: asyncpg.Pool) -> None:
    """README "How a job is followed": a batch-status call with room also asks about jobs
    due within a second; never results to fetch, never jobs due later."""
    soon, later, result_step = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, next_poll_at, next_step) VALUES "
        "($1, now() + interval '0.5 second', 'status'), "
        "($2, now() + interval '30 seconds', 'status'), "
        "($3, now() + interval '0.5 second', 'result')", soon, later, result_step)
    claimed = await store.claim_soon(10, 60, "w", within=1.0)
    assert [j.job_id for j in claimed] == [soon]
    assert await store.claim_soon(10, 60, "w2", within=1.0) == []  # leased now


async def test_a_refusal_announced_reaches_every_listening_daemon(db_url: str,
                                                                  pool: asyncpg.Pool) -> None:
    """README "Pace", several daemons: NOTIFY ``harvester_pace``, heard by the LISTEN
    connection each daemon already holds for fed jobs."""
    store = Store(pool, db_url)
    listening = asyncio.Event()
    heard: asyncio.Queue[str] = asyncio.Queue()
    fed: list[bool] = []
    task = asyncio.create_task(store.listen_for_jobs(
        lambda: fed.append(True), lambda on: listening.set() if on else None, heard.put_nowait))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        payload = '{"worker": "host:1:abc", "resume_in": 1.0}'
        await store.announce_pace(payload)
        assert await asyncio.wait_for(heard.get(), 5) == payload
        assert len(fed) == 1  # the catch-up call when listening began, nothing since
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
