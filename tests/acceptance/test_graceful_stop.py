"""SIGTERM under heavy load: exit 0 within the grace period, and whatever was in flight is
landed or handed back, never left behind under a lease or lost."""

from __future__ import annotations

import time

import asyncpg
import pytest

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import (
    LaggyLink,
    LandedWitness,
    assert_mirror_is_upstream,
    audit,
    new_ids,
    wait_landed,
)
from tests.helpers import DEFAULT_DAEMON_ENV, enqueue

JOBS = 2000
LEASE_SECONDS = float(DEFAULT_DAEMON_ENV["HARVESTER_LEASE_SECONDS"])


@pytest.mark.parametrize(("grace", "slow_seconds"), [
    pytest.param(5.0, 1.5, id="grace-covers-the-requests-in-flight"),
    pytest.param(0.3, 1.8, id="grace-cuts-slow-requests-short"),
])
async def test_sigterm_under_load_exits_0_in_time_and_hands_everything_back(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    witness: LandedWitness, grace: float, slow_seconds: float,
) -> None:
    # Every answer takes a while and some take most of the request timeout: at any
    # moment dozens of requests are in flight and more jobs wait claimed in memory.
    mix = Mix(pending_min=0, pending_max=2, retry_after=1.0, slow=0.15,
              slow_seconds=slow_seconds, latency=0.05, seed=61)
    sim = await simulators(mix)
    ids = new_ids(JOBS)
    await enqueue(pool, ids)
    env = {"HARVESTER_CONCURRENCY": "64", "HARVESTER_SHUTDOWN_GRACE": str(grace)}
    fleet = fleets(db_url, sim.url, env)
    daemon = fleet.spawn("loaded")
    await wait_landed(db_url, JOBS // 5, 60, fleet=fleet)
    in_flight = await pool.fetchval(
        "SELECT count(*) FROM harvester.jobs WHERE leased_until > now()")

    started = time.monotonic()
    assert await fleet.stop(daemon, timeout=grace + 30) == 0
    took = time.monotonic() - started
    # The grace period, plus the flush of decided outcomes (bounded at 5 s), plus the
    # start-up of nothing: a generous bound, not a benchmark.
    assert took < grace + 10, f"stopping took {took:.1f}s with a grace of {grace}s"

    after = await audit(pool)
    leased = [dict(r) for r in await pool.fetch(
        "SELECT job_id, polls, leased_until FROM harvester.jobs WHERE leased_until > now()")]
    assert leased == [], "jobs left under a lease"
    assert after.problems() == []
    assert 0 < after.states["landed"] < JOBS, "the stop did not come under load"
    stopped = daemon.events("daemon.stopped")
    assert len(stopped) == 1 and stopped[0]["unflushed"] == 0, stopped
    print(f"grace {grace}s: {in_flight} leased at SIGTERM, stopped in {took:.1f}s, "
          f"{stopped[0]}")

    # A new daemon takes over and lands everything, each job once.
    successor = fleet.spawn("successor")
    await wait_landed(db_url, JOBS, 120, fleet=fleet)
    assert await fleet.stop(successor) == 0
    await witness.wait_for(JOBS)
    final = await audit(pool)
    assert final.problems() == []
    assert final.states["landed"] == final.mirror_rows == JOBS
    assert witness.duplicates == {} and len(witness.counts) == JOBS
    assert sim.state.overlaps == 0
    await assert_mirror_is_upstream(pool, mix.seed)
    fleet.assert_healthy_logs()


async def test_a_claim_in_flight_at_sigterm_is_handed_back(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    """Every answer from the database arrives 0.1 s late, so whenever SIGTERM comes, a
    claim has almost surely committed on the server while its rows are still on the way.
    Those jobs are this daemon's: it must hand them back before it exits, not leave them
    leased for LEASE_SECONDS (60 s by default) with nobody working on them. Three stops
    in a row, so that one lucky moment cannot hide the fault."""
    link = await LaggyLink(db_url, 0.1).start()
    left: list[str] = []
    try:
        sim = await simulators(Mix(latency=0.02))
        # Enough that three cycles never run out of work, however fast each one lands.
        await enqueue(pool, new_ids(8000))
        fleet = fleets(link.url, sim.url, {"HARVESTER_CONCURRENCY": "32"})
        for cycle in range(3):
            daemon = fleet.spawn(f"stop-{cycle + 1}")
            await daemon.wait_ready(60)
            landed = await pool.fetchval(
                "SELECT count(*) FROM harvester.jobs WHERE state = 'landed'")
            await wait_landed(db_url, landed + 50, 60, fleet=fleet)
            signalled_at = await pool.fetchval("SELECT now()")
            assert await fleet.stop(daemon) == 0
            worker = daemon.events("daemon.started")[0]["worker_id"]
            leased = await pool.fetch(
                "SELECT polls, leased_until - make_interval(secs => $1) AS claimed_at "
                "FROM harvester.jobs WHERE leased_until > now() AND leased_by = $2",
                LEASE_SECONDS, worker)
            if leased:
                moments = sorted({round((r["claimed_at"] - signalled_at).total_seconds(), 2)
                                  for r in leased})
                left.append(f"stop {cycle + 1}: {len(leased)} job(s) left leased, claimed at "
                            f"{moments} s from the SIGTERM, polls "
                            f"{sorted({r['polls'] for r in leased})}; "
                            f"{daemon.events('daemon.stopped')}")
    finally:
        await link.close()
    assert left == []
