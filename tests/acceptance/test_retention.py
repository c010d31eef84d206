"""Retention with whole daemons, real PostgreSQL and the simulated upstream (README
"Retention"): finished rows leave the queue and the mirror stays, two replicas never
purge at once, a mirrored job fed again by any path is not polled, a requeued one is
polled once and lands again unchanged, and the mirror's own retention."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import Fleet, LandedWitness, assert_mirror_is_upstream, new_ids
from tests.helpers import Daemon, enqueue, wait_until
from tests.integration.test_observability import scrape, scrape_until
from tests.stores import Store

ADMIN_TOKEN = "hv-admin-retention-5Tq2"


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args))


async def deleted_by(daemon: Daemon, table: str = "jobs") -> float:
    return (await scrape(daemon)).value("harvester_retention_deleted_total", table=table)


async def harvester_cli(db_url: str, *args: str) -> tuple[int, str, str]:
    """A harvester command as its own process, as an operator or a feeder runs it."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "HARVESTER_DATABASE_URL": db_url, "HARVESTER_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_a_5_s_retention_empties_the_queue_of_20000_harvested_jobs_within_a_minute(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    mix = Mix.preset("first-poll")
    sim = await simulators(mix)
    sim.simulator.apply_control({"record": False})
    fleet = fleets(db_url, sim.url, {"HARVESTER_FINISHED_RETENTION": "5",
                                     "HARVESTER_CONCURRENCY": "64"})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    ids = new_ids(20_000)
    started = time.monotonic()
    await enqueue(pool, ids)
    await wait_until(lambda: _mirrored(pool, 20_000), 300, "20,000 rows in the mirror",
                     interval=0.5)
    harvested = time.monotonic() - started
    await wait_until(lambda: _queue_empty(pool), 60, "the queue to empty after the last landing",
                     interval=0.25)
    emptied = time.monotonic() - started - harvested
    page = await scrape_until(
        daemon, lambda s: s.value("harvester_oldest_finished_age_seconds") == 0,
        "no finished job left")
    # A run is logged when a batch comes back short, one pause after the last full one.
    await wait_until(lambda: _purged_rows(fleet, 20_000), 10, "the runs' log lines")
    assert await fleet.stop_all() == [0]

    print(f"\nretention 5 s: 20,000 jobs harvested in {harvested:.1f} s; the queue was empty "
          f"{emptied:.1f} s after the last landing", flush=True)
    assert page.value("harvester_retention_deleted_total", table="jobs") == 20_000
    assert page.value("harvester_finished_retention_seconds") == 5
    assert await count(pool, "SELECT count(*) FROM harvester.extraction_results "
                             "WHERE job_id = ANY($1::uuid[])", ids) == 20_000
    await assert_mirror_is_upstream(pool, mix.seed)
    fleet.assert_healthy_logs()


async def _purged_rows(fleet: Fleet, rows: int) -> bool:
    return bool(sum(e["rows"] for e in fleet.events("retention.purged")) == rows)


async def _mirrored(pool: asyncpg.Pool, n: int) -> bool:
    return await count(pool, "SELECT count(*) FROM harvester.extraction_results") >= n


async def _queue_empty(pool: asyncpg.Pool) -> bool:
    return await count(pool, "SELECT count(*) FROM harvester.jobs") == 0


async def test_two_daemons_purging_at_once_one_does_it_and_open_work_is_untouched(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    # A backlog of 30,000 finished jobs two days old (a queue upgraded to retention) ...
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, state, next_poll_at, landed_at) "
        "SELECT gen_random_uuid(), 'landed', NULL, now() - interval '2 days' "
        "FROM generate_series(1, 25000)")
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, state, next_poll_at, failed_reason, updated_at) "
        "SELECT gen_random_uuid(), 'failed', NULL, 'not_found', now() - interval '2 days' "
        "FROM generate_series(1, 5000)")
    # ... closed stuck records that go with their jobs, and what must stay: jobs not due
    # for a day, a stuck job and a failed one whose records are open.
    await pool.execute(
        "INSERT INTO harvester.stuck_jobs (job_id, resolved_at, resolution, resolved_by) "
        "SELECT job_id, now() - interval '2 days', 'landed', 'harvester' FROM harvester.jobs "
        "WHERE state = 'landed' LIMIT 100")
    later = new_ids(50)
    await pool.execute("INSERT INTO harvester.jobs (job_id, next_poll_at, enqueued_at) "
                       "SELECT unnest($1::uuid[]), now() + interval '1 day', "
                       "now() - interval '3 days'", later)
    stuck, failed_stuck = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, state, next_poll_at, failed_reason, updated_at) "
        "VALUES ($1, 'stuck', now() + interval '1 day', NULL, now() - interval '2 days'), "
        "($2, 'failed', NULL, 'expired', now() - interval '2 days')", stuck, failed_stuck)
    await pool.execute("INSERT INTO harvester.stuck_jobs (job_id, first_seen_at) "
                       "SELECT unnest($1::uuid[]), now() - interval '3 days'",
                       [stuck, failed_stuck])
    await pool.execute("ANALYZE harvester.jobs")

    sim = await simulators()
    fleet = fleets(db_url, sim.url, {"HARVESTER_FINISHED_RETENTION": "86400"})
    daemons = [fleet.spawn("replica-1"), fleet.spawn("replica-2")]
    for daemon in daemons:
        await daemon.wait_ready()
    await wait_until(lambda: _only_left(pool, 52), 120, "the backlog purged", interval=0.5)
    await wait_until(lambda: _purged_rows(fleet, 30_000), 10, "the run's log line")
    deleted = sorted([await deleted_by(d) for d in daemons])
    assert await fleet.stop_all() == [0, 0]

    assert deleted == [0, 30_000], "one replica purges; the other leaves it the work"
    left = {r["job_id"] for r in await pool.fetch("SELECT job_id FROM harvester.jobs")}
    assert left == {*later, stuck, failed_stuck}
    records = {r["job_id"] for r in await pool.fetch("SELECT job_id FROM harvester.stuck_jobs")}
    assert records == {stuck, failed_stuck}
    runs = fleet.events("retention.purged")
    assert [e["rows"] for e in runs] == [30_000]
    assert fleet.events("retention.failed") == []
    fleet.assert_healthy_logs()


async def _only_left(pool: asyncpg.Pool, n: int) -> bool:
    return await count(pool, "SELECT count(*) FROM harvester.jobs") <= n


async def test_a_mirrored_job_fed_again_by_sql_cli_or_http_is_landed_without_a_poll(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    witness: LandedWitness,
) -> None:
    sim = await simulators()
    fleet = fleets(db_url, sim.url, {"HARVESTER_FINISHED_RETENTION": "0",
                                     "HARVESTER_ADMIN_TOKEN": ADMIN_TOKEN})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    by_sql, by_cli, by_http = new_ids(10), new_ids(10), new_ids(10)
    everything = [*by_sql, *by_cli, *by_http]
    await enqueue(pool, everything)
    await wait_until(lambda: _landed(pool, everything), 60, "the first landing")
    await witness.wait_for(30)
    mirror_before = await _mirror(pool)
    # Retention is off on this daemon (0: it logs so); delete the queue rows as the purge
    # of another replica would.
    assert daemon.events("retention.off")
    async with Store(pool).purging() as batches:
        assert batches is not None
        assert await batches.purge_finished(0.0, 1000) == 30
    asked = sim.state.stats()

    await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING",
                       by_sql[0])
    await pool.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[]) "
                       "ON CONFLICT DO NOTHING", by_sql[1:])
    status, out, err = await harvester_cli(db_url, "enqueue", "--json", *map(str, by_cli))
    assert status == 0, err
    assert json.loads(out)["new"] == 10
    async with aiohttp.ClientSession() as session, session.post(
            daemon.admin_url + "/v1/jobs", json={"jobIds": [str(i) for i in by_http]},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["new"] == 10
    await wait_until(lambda: _landed(pool, everything), 30, "the jobs fed again to land")
    await asyncio.sleep(1.0)  # room for a poll that should not happen
    assert await fleet.stop_all() == [0]

    rows = await pool.fetch("SELECT state, polls, last_status FROM harvester.jobs")
    assert [(r["state"], r["polls"], r["last_status"]) for r in rows] == [
        ("landed", 0, None)] * 30
    after = sim.state.stats()
    assert (after["requests"], after["batch_ids"]) == (asked["requests"], asked["batch_ids"])
    assert await _mirror(pool) == mirror_before
    assert witness.duplicates == {}  # landing from the mirror notifies nobody again
    fleet.assert_healthy_logs()


async def _landed(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> bool:
    return await count(pool, "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[])"
                             " AND state = 'landed'", ids) == len(ids)


async def _mirror(pool: asyncpg.Pool) -> dict[uuid.UUID, tuple[Any, ...]]:
    return {r["job_id"]: tuple(r) for r in await pool.fetch(
        "SELECT job_id, payload, harvested_at FROM harvester.extraction_results")}


async def test_requeue_of_a_mirrored_job_polls_it_once_and_lands_it_again_unchanged(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    witness: LandedWitness,
) -> None:
    sim = await simulators()
    fleet = fleets(db_url, sim.url, {"HARVESTER_FINISHED_RETENTION": "0"})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    in_queue, purged = uuid.uuid4(), uuid.uuid4()
    await enqueue(pool, [in_queue, purged])
    await wait_until(lambda: _landed(pool, [in_queue, purged]), 30, "the first landing")
    await witness.wait_for(2)
    mirror_before = await _mirror(pool)
    await pool.execute("DELETE FROM harvester.jobs WHERE job_id = $1", purged)
    gets = {job: len(sim.requests_for(job)) for job in (in_queue, purged)}
    assert gets == {in_queue: 1, purged: 1}

    status, out, err = await harvester_cli(db_url, "requeue", str(in_queue), str(purged))
    assert status == 0, err
    assert out.splitlines()[0] == "requeued 2 job(s); they are due now"
    await wait_until(lambda: _polled_twice(pool, [in_queue, purged]), 30, "the second landing")
    await asyncio.sleep(1.0)  # room for a third poll that should not happen
    assert await fleet.stop_all() == [0]

    assert {job: len(sim.requests_for(job)) for job in gets} == {in_queue: 2, purged: 2}
    rows = {r["job_id"]: r for r in await pool.fetch("SELECT * FROM harvester.jobs")}
    assert rows[in_queue]["polls"] == 2
    assert rows[purged]["polls"] == 1  # its history went with the deleted row
    assert all(r["state"] == "landed" for r in rows.values())
    assert await _mirror(pool) == mirror_before  # the same row: nothing rewritten
    assert dict(witness.counts) == {str(in_queue): 1, str(purged): 1}
    fleet.assert_healthy_logs()


async def _polled_twice(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> bool:
    return await count(pool, "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[])"
                             " AND state = 'landed' AND requeued_at IS NOT NULL", ids) == len(ids)


async def test_result_retention_empties_the_mirror_and_finished_retention_0_keeps_the_queue(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    sim = await simulators()
    fleet = fleets(db_url, sim.url, {"HARVESTER_FINISHED_RETENTION": "0",
                                     "HARVESTER_RESULT_RETENTION": "2"})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    ids = new_ids(200)
    await enqueue(pool, ids)
    await wait_until(lambda: _landed(pool, ids), 60, "the landing")
    await wait_until(lambda: _mirror_empty(pool), 60, "the mirror to empty")
    page = await scrape(daemon)
    assert await fleet.stop_all() == [0]
    assert page.value("harvester_retention_deleted_total", table="extraction_results") == 200
    assert page.value("harvester_retention_deleted_total", table="jobs") == 0
    assert page.value("harvester_result_retention_seconds") == 2
    assert page.value("harvester_finished_retention_seconds") == 0
    assert await count(pool, "SELECT count(*) FROM harvester.jobs WHERE state = 'landed'") == 200
    fleet.assert_healthy_logs()


async def _mirror_empty(pool: asyncpg.Pool) -> bool:
    return await count(pool, "SELECT count(*) FROM harvester.extraction_results") == 0
