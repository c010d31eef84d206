"""Following jobs through batch-status, with the daemon as a real process (README "How a
job is followed"): rows land seconds after upstream has them, for about one request per
job; batch-status trouble falls back to result polling and comes back; a base URL that
makes every path 404 fails readiness and burns no job."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import asyncpg

from tests.helpers import Daemon, SimulatedUpstream, enqueue, wait_for_states, wait_until


async def test_a_job_running_30_s_lands_seconds_after_it_finishes_and_batches_are_full(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    long_job = uuid.uuid4()
    crowd = [uuid.uuid4() for _ in range(500)]
    upstream.simulator.apply_script({
        "jobs": {str(j): ["200"] for j in [long_job, *crowd]},
        "run": {str(long_job): 30.0, **{str(j): 20.0 for j in crowd}},
        "index": {str(long_job): 4.0},
    })
    await enqueue(pool, [long_job, *crowd])
    daemon = Daemon(db_url, upstream.url, tmp_path).start()
    try:
        await wait_for_states(pool, 90, landed=501)
    finally:
        assert await daemon.stop() == 0
    record = upstream.state.jobs[long_job]
    ready = record.first_seen_wall + 34.0  # upstream has the row after 30 s + 4 s of indexing
    landed = await pool.fetchval(
        "SELECT extract(epoch FROM landed_at)::float8 FROM harvester.jobs WHERE job_id = $1",
        long_job)
    assert 0 <= landed - ready < 3.0
    assert len(upstream.requests_for(long_job)) <= 2
    assert all(len(upstream.requests_for(j)) == 1 for j in crowd)
    # At most one batch-status call per 100 jobs per cadence step (and the long job's).
    steps = await pool.fetchval("SELECT max(status_checks) FROM harvester.jobs "
                                "WHERE job_id = ANY($1::uuid[])", crowd)
    calls = upstream.state.batch_requests
    assert calls <= math.ceil(len(crowd) / 100) * steps + 10, (calls, steps)
    assert upstream.state.stats()["early_polls"] == 0


async def test_batch_status_failing_falls_back_to_result_polling_and_comes_back(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    first = [uuid.uuid4() for _ in range(50)]
    upstream.simulator.apply_control({"status_outage_for": 4, "status": 500})
    await enqueue(pool, first)
    daemon = Daemon(db_url, upstream.url, tmp_path).start()
    try:
        failing = await daemon.wait_for_event("upstream.batch_status_failing", 15)
        await wait_for_states(pool, 30, landed=50)  # landed by result polling meanwhile
        outage_over = time.monotonic() + 5

        async def over() -> bool:
            return time.monotonic() > outage_over

        await wait_until(over, 10, "the batch-status outage to end")
        calls_before = upstream.state.batch_requests
        later = [uuid.uuid4() for _ in range(50)]
        await enqueue(pool, later)
        await daemon.wait_for_event("upstream.batch_status_recovered", 30)
        await wait_for_states(pool, 30, landed=100)
    finally:
        assert await daemon.stop() == 0
    assert failing["level"] == "warning"
    assert len(daemon.events("upstream.batch_status_failing")) == 1
    assert upstream.state.batch_requests > calls_before  # followed by status again
    assert all(len(upstream.requests_for(j)) == 1 for j in later)
    assert all(len(upstream.requests_for(j)) == 1 for j in first)  # one GET each anyway


async def test_a_base_url_with_a_path_fails_readiness_and_fails_no_job(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    """README "Operating": every path doubled (``…/api/v1`` in the base URL) answers 404;
    batch-status itself missing is the tell. Said once, readiness fails, and no job is
    failed not_found although NOT_FOUND_TIMEOUT passes."""
    ids = [uuid.uuid4() for _ in range(30)]
    await enqueue(pool, ids)
    daemon = Daemon(db_url, upstream.url + "/api/v1", tmp_path,
                    env={"HARVESTER_NOT_FOUND_TIMEOUT": "2"}).start()
    try:
        suspect = await daemon.wait_for_event("upstream.base_url_suspect", 30)
        status, body = await daemon.get("/readyz")
        started = time.monotonic()

        async def past_the_timeout() -> bool:
            return time.monotonic() - started > 5

        await wait_until(past_the_timeout, 10, "the not-found timeout to pass")
        failed = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE state = 'failed'")
    finally:
        assert await daemon.stop() == 0
    assert suspect["level"] == "error"
    assert "/api/v1" in suspect["hint"]
    assert len(daemon.events("upstream.base_url_suspect")) == 1
    assert status == 503
    assert body["checks"]["base_url_plausible"] is False
    assert failed == 0
