"""Retention against a real PostgreSQL (README "Retention"): what the purge deletes and
what it never touches, its lock, the claim that lands a mirrored job without a poll, and
a requeue that polls it anyway."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harvester.metrics import Metrics
from harvester.policy import Retry
from harvester.ports import Outcome
from harvester.store.purge import RETENTION_LOCK_KEY
from tests.helpers import enqueue
from tests.integration.test_store import land_for
from tests.stores import Store

DAY = 86400.0


async def add_jobs(pool: asyncpg.Pool, n: int, state: str, finished_ago: str,
                   **columns: object) -> list[uuid.UUID]:
    """``n`` jobs in ``state``; landed and failed ones finished ``finished_ago``."""
    ids = [uuid.uuid4() for _ in range(n)]
    if state == "landed":
        await pool.execute(
            "INSERT INTO harvester.jobs (job_id, state, next_poll_at, landed_at, updated_at) "
            "SELECT unnest($1::uuid[]), 'landed', NULL, now() - $2::text::interval, "
            "now() - $2::text::interval", ids, finished_ago)
    elif state == "failed":
        await pool.execute(
            "INSERT INTO harvester.jobs (job_id, state, next_poll_at, failed_reason, updated_at) "
            "SELECT unnest($1::uuid[]), 'failed', NULL, 'not_found', "
            "now() - $2::text::interval", ids, finished_ago)
    else:
        await pool.execute(
            "INSERT INTO harvester.jobs (job_id, state, enqueued_at, updated_at) "
            "SELECT unnest($1::uuid[]), $2, now() - interval '20 days', "
            "now() - interval '20 days'", ids, state)
    return ids


async def add_stuck_record(pool: asyncpg.Pool, job_id: uuid.UUID, resolution: str | None
                           ) -> None:
    await pool.execute(
        "INSERT INTO harvester.stuck_jobs (job_id, first_seen_at, resolved_at, resolution, "
        "resolved_by) VALUES ($1, now() - interval '20 days', "
        "CASE WHEN $2::text IS NULL THEN NULL ELSE now() - interval '19 days' END, $2, "
        "CASE WHEN $2::text IS NULL THEN NULL ELSE 'ops' END)", job_id, resolution)


async def add_mirror_rows(pool: asyncpg.Pool, ids: list[uuid.UUID], harvested_ago: str = "0s"
                          ) -> None:
    await pool.execute(
        """
        INSERT INTO harvester.extraction_results (job_id, id, org_id, domain, data_type,
               normalized, quality_completeness, quality_validation, quality_composite,
               created_at, payload, harvested_at)
        SELECT u, gen_random_uuid(), gen_random_uuid(), 'example.com', 'product', '{}',
               1, 1, 1, now(), '{}', now() - $2::text::interval
          FROM unnest($1::uuid[]) AS u
        """, ids, harvested_ago)


async def purge_all(store: Store, table: str, older_than: float) -> list[int]:
    """Batches of 100 until one comes back short; how many each deleted."""
    counts: list[int] = []
    async with store.purging() as batches:
        assert batches is not None
        purge = batches.purge_finished if table == "jobs" else batches.purge_results
        while True:
            counts.append(await purge(older_than, 100))
            if counts[-1] < 100:
                return counts


async def ids_in(pool: asyncpg.Pool, table: str) -> set[uuid.UUID]:
    rows = await pool.fetch(f"SELECT job_id FROM harvester.{table}")
    return {r["job_id"] for r in rows}


# ------------------------------------------------------------------ the queue's purge


async def test_the_purge_deletes_finished_jobs_past_retention_and_nothing_else(
    store: Store, pool: asyncpg.Pool
) -> None:
    old_landed = await add_jobs(pool, 150, "landed", "2 days")
    old_failed = await add_jobs(pool, 120, "failed", "2 days")
    young_landed = await add_jobs(pool, 5, "landed", "1 hour")
    young_failed = await add_jobs(pool, 5, "failed", "1 hour")
    # Open jobs are never deleted, however old.
    pending = await add_jobs(pool, 3, "pending", "")
    stuck = await add_jobs(pool, 2, "stuck", "")
    for job_id in stuck:
        await add_stuck_record(pool, job_id, None)
    # A failed job whose stuck record is still open keeps its row until the record closes;
    # closed records (the job ended, or an operator acknowledged it) go with their job.
    failed_still_stuck = (await add_jobs(pool, 1, "failed", "2 days"))[0]
    await add_stuck_record(pool, failed_still_stuck, None)
    resolved = old_landed[0], old_failed[0]
    await add_stuck_record(pool, resolved[0], "landed")
    await add_stuck_record(pool, resolved[1], "acknowledged")
    await add_mirror_rows(pool, old_landed)

    counts = await purge_all(store, "jobs", DAY)

    assert counts == [100, 100, 70]
    left = await ids_in(pool, "jobs")
    assert left == {*young_landed, *young_failed, *pending, *stuck, failed_still_stuck}
    assert await ids_in(pool, "stuck_jobs") == {*stuck, failed_still_stuck}
    assert await ids_in(pool, "extraction_results") == set(old_landed)  # the mirror stays
    # Once its record closes, the failed job goes too.
    await pool.execute("UPDATE harvester.stuck_jobs SET resolved_at = now(), "
                       "resolution = 'acknowledged' WHERE job_id = $1", failed_still_stuck)
    assert await purge_all(store, "jobs", DAY) == [1]
    assert failed_still_stuck not in await ids_in(pool, "jobs")


async def test_retention_counts_from_when_the_job_finished_not_when_it_was_fed(
    store: Store, pool: asyncpg.Pool
) -> None:
    fed_long_ago = await add_jobs(pool, 3, "landed", "10 minutes")
    await pool.execute("UPDATE harvester.jobs SET enqueued_at = now() - interval '60 days'")
    assert await purge_all(store, "jobs", 3600.0) == [0]
    assert await purge_all(store, "jobs", 60.0) == [3]
    assert await ids_in(pool, "jobs") == set() and len(fed_long_ago) == 3


async def test_the_purge_skips_rows_another_transaction_holds(store: Store,
                                                              pool: asyncpg.Pool) -> None:
    """A requeue (or anything else) holding a finished row: the purge skips it rather
    than wait, and takes it next time if it is still finished."""
    ids = await add_jobs(pool, 3, "landed", "2 days")
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM harvester.jobs WHERE job_id = $1 FOR UPDATE", ids[0])
        assert await asyncio.wait_for(purge_all(store, "jobs", DAY), 5) == [2]
    assert await purge_all(store, "jobs", DAY) == [1]


async def test_one_replica_purges_at_a_time_and_the_lock_is_given_back(
    store: Store, pool: asyncpg.Pool, db_url: str
) -> None:
    await add_jobs(pool, 10, "landed", "2 days")
    other = Store(pool)
    async with store.purging() as mine:
        assert mine is not None
        async with other.purging() as theirs:
            assert theirs is None  # another replica is purging: leave it the work
        assert await mine.purge_finished(DAY, 100) == 10
    # Given back on the way out, although the pool's reset does nothing: another
    # session can take it now.
    probe = await asyncpg.connect(db_url)
    try:
        assert await probe.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY)
    finally:
        await probe.close()
    async with other.purging() as theirs:
        assert theirs is not None


async def test_a_run_cancelled_midway_leaves_no_lock_behind(store: Store, pool: asyncpg.Pool,
                                                           db_url: str) -> None:
    """Cancelled while holding the lock (a daemon stopping): the lock is released, or the
    connection closed, never left on a pooled connection."""
    entered = asyncio.Event()

    async def hold() -> None:
        async with store.purging() as batches:
            assert batches is not None
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held = await pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((classid::bigint << 32) | objid::bigint) = $1", RETENTION_LOCK_KEY)
    assert held == 0
    async with store.purging() as batches:
        assert batches is not None


# ------------------------------------------------------------------ the mirror's purge


async def test_result_retention_deletes_mirror_rows_by_harvest_time_only(
    store: Store, pool: asyncpg.Pool
) -> None:
    old, young = [uuid.uuid4() for _ in range(130)], [uuid.uuid4() for _ in range(4)]
    await add_mirror_rows(pool, old, "40 days")
    await add_mirror_rows(pool, young, "1 day")
    queued = await add_jobs(pool, 2, "landed", "1 hour")
    assert await purge_all(store, "extraction_results", 30 * DAY) == [100, 30]
    assert await ids_in(pool, "extraction_results") == set(young)
    assert await ids_in(pool, "jobs") == set(queued)


# ------------------------------------------------------------------ fed again, requeued


async def test_a_job_fed_again_whose_row_is_mirrored_is_landed_by_the_claim_unpolled(
    store: Store, pool: asyncpg.Pool
) -> None:
    mirrored = [uuid.uuid4() for _ in range(5)]
    fresh = [uuid.uuid4() for _ in range(3)]
    await add_mirror_rows(pool, mirrored)
    await enqueue(pool, [*mirrored, *fresh])
    # However it came to have one, an open stuck record closes when its job ends.
    await add_stuck_record(pool, mirrored[0], None)
    claimed = await store.claim(100, 60, "w")
    assert {j.job_id for j in claimed} == set(fresh)
    rows = {r["job_id"]: r for r in await pool.fetch("SELECT * FROM harvester.jobs")}
    for job_id in mirrored:
        row = rows[job_id]
        assert (row["state"], row["polls"], row["next_poll_at"], row["leased_by"]) == (
            "landed", 0, None, None)
        assert row["landed_at"] is not None
        assert row["lease_seq"] == 1  # a late answer from an old lease is fenced off
    record = await pool.fetchrow("SELECT resolution, resolved_by FROM harvester.stuck_jobs")
    assert record is not None and tuple(record) == ("landed", "harvester")
    # Nothing else is due: a claim that only landed mirrored jobs leaves no work behind.
    assert await store.claim(100, 60, "w") == []


async def test_the_top_up_claim_lands_a_mirrored_job_unpolled_too(
    store: Store, pool: asyncpg.Pool
) -> None:
    """A batch-status call with room claims status checks due within a second: a job fed
    again whose row is mirrored is landed there as well, never asked about."""
    mirrored, fresh = uuid.uuid4(), uuid.uuid4()
    await add_mirror_rows(pool, [mirrored])
    await pool.execute("INSERT INTO harvester.jobs (job_id, next_poll_at) "
                       "SELECT unnest($1::uuid[]), now() + interval '0.5 seconds'",
                       [mirrored, fresh])
    claimed = await store.claim_soon(100, 60, "w", 1.0)
    assert [j.job_id for j in claimed] == [fresh]
    row = await pool.fetchrow("SELECT state, polls FROM harvester.jobs WHERE job_id = $1",
                              mirrored)
    assert row is not None and (row["state"], row["polls"]) == ("landed", 0)


async def test_a_requeued_job_is_polled_although_mirrored_and_lands_again_unchanged(
    store: Store, pool: asyncpg.Pool, db_url: str
) -> None:
    job_id = uuid.uuid4()
    await enqueue(pool, [job_id])
    (job,) = await store.claim(1, 60, "w")
    await store.write([Outcome(job, land_for(job_id))])
    first = await pool.fetchrow("SELECT * FROM harvester.extraction_results")
    listener = await asyncpg.connect(db_url)
    heard: list[str] = []
    await listener.add_listener("harvester_landed", lambda *a: heard.append(a[3]))
    try:
        report = await store.requeue(job_ids=[job_id])
        assert (report.requeued, report.landed) == (1, [job_id])
        (again,) = await store.claim(1, 60, "w")  # polled for real, not landed from the mirror
        assert again.job_id == job_id
        # Upstream may still make it wait; the requeue mark holds until it lands.
        await store.write([Outcome(again, Retry(0.0, 202, "202: indexing", 0, 0))])
        (third,) = await store.claim(1, 60, "w")
        written = await store.write([Outcome(third, land_for(job_id))])
        await asyncio.sleep(0.2)
    finally:
        await listener.close()
    assert written.written == {job_id}
    second = await pool.fetchrow("SELECT * FROM harvester.extraction_results")
    assert first is not None and second is not None
    assert dict(second) == dict(first)  # landing the same row again changes nothing
    assert heard == []
    row = await pool.fetchrow("SELECT state, polls FROM harvester.jobs")
    assert row is not None and (row["state"], row["polls"]) == ("landed", 3)


async def test_a_job_retention_deleted_is_still_shown_from_the_mirror(
    store: Store, pool: asyncpg.Pool
) -> None:
    job_id, unknown = uuid.uuid4(), uuid.uuid4()
    await add_mirror_rows(pool, [job_id], "3 days")
    shown = await store.job(job_id)
    assert shown is not None
    assert (shown["state"], shown["polls"], shown["stuck"]) == ("landed", None, None)
    assert isinstance(shown["landed_at"], datetime)
    assert shown["result"]["domain"] == "example.com"
    assert await store.job(unknown) is None


# ------------------------------------------------------------------ what operators see


async def test_metrics_show_table_sizes_and_the_oldest_finished_job_the_purge_may_delete(
    store: Store, pool: asyncpg.Pool
) -> None:
    await add_jobs(pool, 3, "landed", "2 hours")
    await add_jobs(pool, 1, "failed", "1 hour")
    kept = (await add_jobs(pool, 1, "failed", "5 hours"))[0]
    await add_stuck_record(pool, kept, None)  # kept on purpose: not what the alert is about
    await add_mirror_rows(pool, [uuid.uuid4() for _ in range(2)])
    await pool.execute("ANALYZE harvester.jobs; ANALYZE harvester.extraction_results")
    metrics = Metrics()
    await metrics.attach_queue_gauges(store.queue_gauges).refresh()
    samples = {(s.name, tuple(s.labels.values())): s.value
               for family in text_string_to_metric_families(metrics.render().decode())
               for s in family.samples}
    assert 2 * 3600 - 5 < samples[("harvester_oldest_finished_age_seconds", ())] < 2 * 3600 + 60
    assert samples[("harvester_table_rows", ("jobs",))] == 5
    assert samples[("harvester_table_rows", ("extraction_results",))] == 2
    assert samples[("harvester_table_bytes", ("jobs",))] >= 8192
    assert samples[("harvester_table_bytes", ("extraction_results",))] >= 8192
    await pool.execute("DELETE FROM harvester.jobs WHERE state = 'landed' OR job_id <> $1", kept)
    gauges = await store.queue_gauges()
    assert gauges["oldest_finished_age"] == 0.0  # none the purge may delete
