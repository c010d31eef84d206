"""Feeding by plain SQL and querying the mirror by plain SQL, as the README shows.

A running daemon (a real subprocess) must pick up a row another connection inserts
within about a second: the trigger NOTIFYs ``harvester_jobs`` and the daemon LISTENs.
Its idle fallback poll is 5 s while it listens, so a pickup well under that proves the
notification path; the bound used here is generous so the test does not flake.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from pathlib import Path

import asyncpg

from harvester.tools.simulator import result_row
from tests.helpers import Daemon, SimulatedUpstream, wait_for_states, wait_until
from tests.integration.test_commands import put_jobs_in_each_state

FEED_SQL = "INSERT INTO harvester.jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING"
PICKUP_BOUND = 2.5  # seconds; the idle poll while listening is 5 s


async def daemon_is_listening(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval(
        """
        SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'harvester-listen'
           AND query ILIKE 'LISTEN%'
        """))


async def landed(pool: asyncpg.Pool, job_id: uuid.UUID) -> bool:
    return bool(await pool.fetchval(
        "SELECT state = 'landed' FROM harvester.jobs WHERE job_id = $1", job_id))


async def test_a_running_daemon_picks_up_a_job_inserted_by_sql_within_a_second(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream().start()
    daemon = Daemon(db_url, sim.url, tmp_path).start()
    landed_notes: list[str] = []
    consumer = await asyncpg.connect(db_url)
    await consumer.add_listener("harvester_landed",
                                lambda _c, _pid, _ch, payload: landed_notes.append(payload))
    try:
        await daemon.wait_ready()
        await wait_until(lambda: daemon_is_listening(pool), 15, "the daemon to LISTEN")
        delays: list[float] = []
        fed: list[uuid.UUID] = []
        for _ in range(3):
            job_id = uuid.uuid4()
            fed.append(job_id)
            # The daemon has just gone idle (started, or landed the previous job): without
            # the notification it would not look again for about 5 s.
            await asyncio.sleep(0.3)
            inserted_at = time.monotonic()
            async with pool.acquire() as conn:  # another connection than the daemon's
                assert await conn.execute(FEED_SQL, job_id) == "INSERT 0 1"
            await wait_until(functools.partial(landed, pool, job_id), 15, f"job {job_id} to land")
            served = sim.requests_for(job_id)
            assert [s.status for s in served] == [200]
            delays.append(served[0].started - inserted_at)
            row = await pool.fetchrow(
                "SELECT payload::text AS payload FROM harvester.extraction_results "
                "WHERE job_id = $1", job_id)
            assert row is not None
        print(f"\nSQL insert to first upstream request: {', '.join(f'{d:.3f}s' for d in delays)}")
        assert all(0 <= d < PICKUP_BOUND for d in delays), delays
        assert daemon.events("listen.lost") == []

        async def three_notes() -> bool:
            return len(landed_notes) >= 3

        await wait_until(three_notes, 5, "three harvester_landed notifications")
        assert sorted(landed_notes) == sorted(str(j) for j in fed)
        assert await daemon.stop() == 0
    finally:
        await consumer.close()
        await daemon.stop()
        await sim.stop()


async def test_bulk_feeding_by_sql_unnest_and_by_copy_through_a_staging_table(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream().start()
    daemon = Daemon(db_url, sim.url, tmp_path).start()
    try:
        await daemon.wait_ready()
        first = [uuid.uuid4() for _ in range(500)]
        second = [uuid.uuid4() for _ in range(500)]
        async with pool.acquire() as conn:
            # One statement for a whole array of IDs; repeats are harmless.
            status = await conn.execute(
                "INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[]) "
                "ON CONFLICT DO NOTHING", [*first, *first[:10]])
            assert status == "INSERT 0 500"
            # COPY into a temporary staging table, then one INSERT ... SELECT.
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE incoming (job_id uuid) ON COMMIT DROP")
                await conn.copy_records_to_table("incoming", records=[(i,) for i in second])
                status = await conn.execute(
                    "INSERT INTO harvester.jobs (job_id) SELECT DISTINCT job_id FROM incoming "
                    "ON CONFLICT DO NOTHING")
                assert status == "INSERT 0 500"
        await wait_for_states(pool, 60, landed=1000, pending=0)
        assert await daemon.stop() == 0
    finally:
        await daemon.stop()
        await sim.stop()


# ---------------------------------------------------------------- the README's queries

LATEST_FOR_DOMAIN = """
SELECT job_id, data_type, quality_composite, created_at, normalized->>'title' AS title
  FROM harvester.extraction_results
 WHERE domain = $1
 ORDER BY created_at DESC
 LIMIT 20
"""

LOW_QUALITY = """
SELECT job_id, domain, quality_completeness, quality_validation, quality_composite
  FROM harvester.extraction_results
 WHERE quality_composite < $1
   AND harvested_at > now() - interval '1 day'
 ORDER BY quality_composite
"""

PENDING_OVER_AN_HOUR = """
SELECT job_id, enqueued_at, polls, last_status, last_error, next_poll_at
  FROM harvester.jobs
 WHERE state = 'pending'
   AND enqueued_at < now() - interval '1 hour'
 ORDER BY enqueued_at
 LIMIT 100
"""

OPEN_STUCK = """
SELECT job_id, first_seen_at, open_for, times_seen, last_status, left(last_body, 80) AS body
  FROM harvester.open_stuck_jobs
 ORDER BY first_seen_at
"""


async def test_the_readme_queries_run_as_the_read_only_role(pool: asyncpg.Pool,
                                                            repo_root: Path) -> None:
    f = await put_jobs_in_each_state(pool)
    domain = result_row(f.landed)["domain"]
    await pool.execute((repo_root / "deploy" / "readonly-role.sql").read_text())
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE harvester_reader")

        latest = await conn.fetch(LATEST_FOR_DOMAIN, domain)
        assert f.landed in [r["job_id"] for r in latest]
        assert all(r["title"] for r in latest)

        composite = result_row(f.landed)["qualityComposite"]
        low = await conn.fetch(LOW_QUALITY, composite + 0.0001)
        assert f.landed in [r["job_id"] for r in low]
        assert f.landed not in [r["job_id"] for r in await conn.fetch(LOW_QUALITY, composite)]

        waiting = await conn.fetch(PENDING_OVER_AN_HOUR)
        assert [r["job_id"] for r in waiting] == [f.pending]

        stuck = await conn.fetch(OPEN_STUCK)
        assert [(r["job_id"], r["times_seen"]) for r in stuck] == [(f.stuck, 7)]
        assert stuck[0]["body"].startswith('{"error": "job is completed')

        await conn.execute("LISTEN harvester_landed")  # LISTEN needs no grant
