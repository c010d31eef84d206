"""The daemon as a real process, real PostgreSQL, the simulated upstream on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg

from harvester.tools.simulator import Mix, result_row
from tests.helpers import Daemon, SimulatedUpstream, enqueue, wait_for_states, wait_until


async def test_thousands_of_jobs_with_pending_answers_all_land_field_by_field(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    mix = Mix(pending_min=0, pending_max=5, retry_after=1.0, retry_after_style="mixed", seed=7)
    sim = await SimulatedUpstream(mix).start()
    ids = [uuid.uuid4() for _ in range(3000)]
    await enqueue(pool, ids)
    daemon = Daemon(db_url, sim.url, tmp_path, env={"HARVESTER_CONCURRENCY": "64"}).start()
    try:
        await wait_for_states(pool, 120, landed=3000)
        assert await daemon.stop() == 0
    finally:
        await sim.stop()

    stats = sim.state.stats()
    assert stats["early_polls"] == 0, stats["early_examples"]
    assert stats["overlaps"] == 0
    rows = await pool.fetch("SELECT e.*, b.body FROM harvester.extraction_results AS e "
                            "JOIN harvester.result_bodies AS b USING (job_id)")
    assert len(rows) == 3000
    for row in rows:
        served = result_row(row["job_id"], seed=7)
        assert json.loads(row["body"]) == served
        assert str(row["id"]) == served["id"]
        assert str(row["org_id"]) == served["orgId"]
        assert row["domain"] == served["domain"]
        assert row["schema_id"] == served["schemaId"]
        assert row["data_type"] == served["dataType"]
        assert json.loads(row["normalized"]) == served["normalized"]
        assert row["raw_blob_key"] == served["rawBlobKey"]
        assert row["quality_completeness"] == served["qualityCompleteness"]
        assert row["quality_validation"] == served["qualityValidation"]
        assert row["quality_composite"] == served["qualityComposite"]
        assert row["latency_ms"] == served["latencyMs"]
        expected_delivered = (datetime.fromisoformat(served["deliveredAt"])
                              if served["deliveredAt"] else None)
        assert row["delivered_at"] == expected_delivered
        assert row["created_at"] == datetime.fromisoformat(served["createdAt"])
    polls = await pool.fetchval("SELECT sum(polls) FROM harvester.jobs")
    assert polls == stats["requests"]


async def _run_scripted(db_url: str, tmp_path: Path, upstream: SimulatedUpstream,
                        env: dict[str, str] | None = None) -> Daemon:
    daemon = Daemon(db_url, upstream.url, tmp_path, env=env)
    daemon.start()
    await daemon.wait_ready()
    return daemon


async def test_stuck_after_three_500s_then_landing_resolves_the_record(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    stuck_forever, stuck_then_land, two_500s = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    upstream.script({
        stuck_forever: ["500"],
        stuck_then_land: ["500", "500", "500", "500", "200"],
        two_500s: ["500", "500", "200"],
    })
    listener = await asyncpg.connect(db_url)
    notified: list[str] = []
    await listener.add_listener("harvester_stuck", lambda *a: notified.append(a[3]))
    await enqueue(pool, [stuck_forever, stuck_then_land, two_500s])
    daemon = await _run_scripted(db_url, tmp_path, upstream,
                                 {"HARVESTER_STUCK_RECHECK": "1"})
    try:
        await wait_for_states(pool, 60, landed=2, stuck=1)
    finally:
        assert await daemon.stop() == 0
        await listener.close()

    records = {r["job_id"]: r for r in await pool.fetch("SELECT * FROM harvester.stuck_jobs")}
    assert set(records) == {stuck_forever, stuck_then_land}
    assert records[stuck_forever]["resolved_at"] is None
    assert records[stuck_forever]["last_status"] == 500
    assert "no extraction_results row" in records[stuck_forever]["last_body"]
    assert records[stuck_then_land]["resolved_at"] is not None
    assert records[stuck_then_land]["times_seen"] == 2  # the 3rd and the 4th 500
    open_view = await pool.fetch("SELECT job_id FROM harvester.open_stuck_jobs")
    assert [r["job_id"] for r in open_view] == [stuck_forever]
    assert sorted(notified) == sorted([str(stuck_forever), str(stuck_then_land)])
    assert [e["job_id"] for e in daemon.events("job.stuck")].count(str(stuck_forever)) == 1
    row = await pool.fetchrow("SELECT state, polls, consecutive_500s FROM harvester.jobs "
                              "WHERE job_id = $1", two_500s)
    assert row is not None
    assert (row["state"], row["polls"]) == ("landed", 3)


async def test_a_refused_job_fails_forbidden_only_after_refusals_while_others_land(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    """README "How upstream answers are handled": a 403 is about the token until other
    jobs are answered while this one keeps being refused; other 4xx fail at once."""
    forbidden, gone = uuid.uuid4(), uuid.uuid4()
    others = [uuid.uuid4() for _ in range(20)]
    upstream.script({forbidden: ["403"], gone: ["410"], **{o: ["202:1", "200"] for o in others}})
    await enqueue(pool, [forbidden, gone, *others])
    daemon = await _run_scripted(db_url, tmp_path, upstream)
    try:
        await wait_for_states(pool, 60, failed=2, landed=20)
    finally:
        assert await daemon.stop() == 0
    rows = {r["job_id"]: r for r in await pool.fetch(
        "SELECT job_id, failed_reason, last_error, last_status, polls, next_poll_at "
        "FROM harvester.jobs")}
    assert rows[forbidden]["failed_reason"] == "forbidden"
    assert "jobs:read" in rows[forbidden]["last_error"]
    assert rows[forbidden]["polls"] == 3
    assert rows[gone]["failed_reason"] == "http_410"
    assert rows[gone]["polls"] == 1
    assert len(upstream.requests_for(gone)) == 1
    for job in (forbidden, gone):
        assert rows[job]["next_poll_at"] is None
    # One refused job is not a refused token: the permission circuit never opened.
    assert daemon.events("permission.circuit_open") == []


async def test_a_token_without_jobs_read_fails_nothing_and_opens_the_permission_circuit(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    ids = [uuid.uuid4() for _ in range(40)]
    upstream.script({i: ["202:1", "202:1", "200"] for i in ids})
    await enqueue(pool, ids)
    daemon = await _run_scripted(db_url, tmp_path, upstream)
    try:
        upstream.simulator.apply_control({"forbidden_for": 3})
        opened = await daemon.wait_for_event("permission.circuit_open", 20)
        status, body = await daemon.get("/readyz")
        await daemon.wait_for_event("permission.circuit_closed", 30)
        await wait_for_states(pool, 60, landed=40)
    finally:
        assert await daemon.stop() == 0
    assert opened["level"] == "error"
    assert status == 503
    assert body["checks"]["permission_circuit_closed"] is False
    assert await pool.fetchval("SELECT max(attempt) FROM harvester.jobs") == 0
    assert await pool.fetchval("SELECT count(*) FROM harvester.jobs WHERE state = 'failed'") == 0


async def test_jobs_are_followed_through_batch_status_before_any_get(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    """README "How a job is followed": failed upstream → failed with no GET; running →
    followed by status, one GET once completed; unknown → one GET, then followed until
    NOT_FOUND_TIMEOUT; a 404 although batch-status said completed → followed again."""
    failed_upstream, running, unknown, racing = (uuid.uuid4() for _ in range(4))
    upstream.simulator.apply_script({
        "jobs": {str(failed_upstream): ["404"], str(running): ["200"], str(unknown): ["404"],
                 str(racing): ["404", "200"]},
        "batch_status": {str(failed_upstream): "failed", str(unknown): None},
        "status": {str(running): ["running", "running", "completed"]}})
    await enqueue(pool, [failed_upstream, running, unknown, racing])
    daemon = await _run_scripted(db_url, tmp_path, upstream,
                                 {"HARVESTER_NOT_FOUND_TIMEOUT": "6"})
    try:
        await wait_for_states(pool, 40, landed=2, failed=2)
    finally:
        assert await daemon.stop() == 0
    rows = {r["job_id"]: r for r in await pool.fetch(
        "SELECT job_id, state, failed_reason, upstream_status, polls, status_checks "
        "FROM harvester.jobs")}
    assert (rows[failed_upstream]["state"], rows[failed_upstream]["failed_reason"]) == (
        "failed", "upstream_failed")
    assert upstream.requests_for(failed_upstream) == []
    assert rows[failed_upstream]["polls"] == 0
    assert rows[running]["state"] == "landed"
    assert rows[running]["status_checks"] == 3
    assert len(upstream.requests_for(running)) == 1
    assert (rows[unknown]["state"], rows[unknown]["failed_reason"]) == ("failed", "not_found")
    assert rows[unknown]["upstream_status"] == "unknown"
    assert len(upstream.requests_for(unknown)) == 1
    assert rows[unknown]["status_checks"] >= 2
    assert rows[racing]["state"] == "landed"
    assert len(upstream.requests_for(racing)) == 2


async def test_a_401_window_pauses_and_recovers_with_no_job_failed(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix(pending_min=1, pending_max=2, retry_after=1.0)).start()
    ids = [uuid.uuid4() for _ in range(400)]
    await enqueue(pool, ids)
    daemon = Daemon(db_url, sim.url, tmp_path).start()
    try:
        await daemon.wait_ready()
        sim.simulator.apply_control({"unauthorized_for": 3})
        opened = await daemon.wait_for_event("auth.circuit_open", 10)
        status, body = await daemon.get("/readyz")
        assert status == 503
        assert body["checks"]["auth_circuit_closed"] is False
        await asyncio.sleep(0.5)  # the requests already in flight when it opened come back
        during = sim.state.statuses[401]
        await daemon.wait_for_event("auth.circuit_closed", 15)
        await wait_for_states(pool, 60, landed=400)
    finally:
        assert await daemon.stop() == 0
        await sim.stop()
    assert opened["level"] == "error"
    assert len(daemon.events("auth.circuit_open")) == 1
    assert len(daemon.events("auth.circuit_closed")) == 1
    # While open, a probe every 0.5 s: a handful of 401s, not a storm.
    assert sim.state.statuses[401] < during + 12
    failed = await pool.fetchval("SELECT count(*) FROM harvester.jobs WHERE state = 'failed'")
    assert failed == 0
    charged = await pool.fetchval("SELECT max(attempt) FROM harvester.jobs")
    assert charged == 0


async def test_a_429_pauses_every_request(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix(pending_min=2, pending_max=3, retry_after=1.0)).start()
    ids = [uuid.uuid4() for _ in range(300)]
    await enqueue(pool, ids)
    daemon = Daemon(db_url, sim.url, tmp_path).start()
    try:
        await daemon.wait_ready()
        await wait_for_states(pool, 30, pending=300)
        sim.simulator.apply_control({"rate_limit_for": 0.3, "retry_after": 2})
        paused = await daemon.wait_for_event("upstream.paused", 10)
        await wait_for_states(pool, 60, landed=300)
    finally:
        assert await daemon.stop() == 0
        await sim.stop()
    assert paused["status"] == 429
    limited = [s for s in sim.state.log if s.status == 429]
    assert limited
    last_429 = max(s.finished for s in limited)
    # Every request after a 429 waits out its Retry-After (2 s), whichever job it is for.
    first_429 = min(s.finished for s in limited)
    resumed = [s for s in sim.state.log if s.started > first_429 and s.status != 429]
    assert resumed
    assert min(s.started for s in resumed) >= first_429 + 2.0 - 0.01
    assert last_429 - first_429 < 1.0
    failed = await pool.fetchval("SELECT count(*) FROM harvester.jobs WHERE state = 'failed'")
    assert failed == 0


async def test_kill_9_and_restart_lands_everything_once(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix(pending_min=0, pending_max=3, retry_after=1.0,
                                      latency=0.01)).start()
    ids = [uuid.uuid4() for _ in range(2000)]
    await enqueue(pool, ids)
    env = {"HARVESTER_LEASE_SECONDS": "3", "HARVESTER_CONCURRENCY": "64"}
    first = Daemon(db_url, sim.url, tmp_path, name="first", env=env).start()
    try:
        await wait_until_some_landed(pool, 300)
        first.kill()
        assert await first.wait() == -9
        claimed = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE leased_until > now()")
        second = Daemon(db_url, sim.url, tmp_path, name="second", env=env).start()
        await wait_for_states(pool, 90, landed=2000)
        assert await second.stop() == 0
    finally:
        await sim.stop()
    assert claimed > 0  # the kill really left leases behind
    assert await pool.fetchval("SELECT count(*) FROM harvester.extraction_results") == 2000
    assert await pool.fetchval(
        "SELECT count(*) FROM harvester.jobs WHERE leased_until IS NOT NULL") == 0
    assert sim.state.overlaps == 0


async def wait_until_some_landed(pool: asyncpg.Pool, count: int) -> None:
    async def enough() -> bool:
        landed = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE state = 'landed'")
        return bool(landed >= count)

    await wait_until(enough, 60, f"{count} landed", interval=0.02)


async def test_two_daemons_never_poll_the_same_job_at_once(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix(pending_min=0, pending_max=4, retry_after=1.0,
                                      latency=0.005)).start()
    ids = [uuid.uuid4() for _ in range(2000)]
    await enqueue(pool, ids)
    daemons = [Daemon(db_url, sim.url, tmp_path, name=f"d{i}").start() for i in range(2)]
    try:
        await wait_for_states(pool, 90, landed=2000)
    finally:
        codes = [await d.stop() for d in daemons]
        await sim.stop()
    assert codes == [0, 0]
    assert sim.state.overlaps == 0
    assert sim.state.stats()["early_polls"] == 0
    by_worker = await pool.fetch("SELECT count(*) FROM harvester.jobs")
    assert by_worker[0][0] == 2000
    # Both did real work.
    started = [d.events("daemon.started")[0]["worker_id"] for d in daemons]
    assert len(set(started)) == 2
    polls = await pool.fetchval("SELECT sum(polls) FROM harvester.jobs")
    assert polls == sim.state.requests
