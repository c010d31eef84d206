"""kill -9 at random moments of a few-thousand-job run: nothing is lost, nothing doubled.

The kill moments are drawn afresh on each run (the seed is in every failure message), so
over many CI runs the kills land in every phase: start-up, claiming, polling, writing.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import (
    LandedWitness,
    assert_mirror_is_upstream,
    audit,
    new_ids,
    wait_landed,
)
from tests.helpers import enqueue

JOBS = 2500
KILLS = 3
CRASH_ENV = {
    "HARVESTER_LEASE_SECONDS": "3",
    "HARVESTER_CONCURRENCY": "48",
    "HARVESTER_STUCK_RECHECK": "1",
}


async def test_kill_9_at_random_moments_lands_every_job_exactly_once(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    witness: LandedWitness,
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # Jobs that wait, fault, answer garbage or 500 a few times before landing: a crash
    # can fall between any two of those steps. Every one of them lands in the end. The
    # latency keeps the daemon busy without pause (a pass over the backlog outlasts the
    # 1 s Retry-After), so a kill finds work in flight, not an idle gap between waves.
    mix = Mix(pending_min=0, pending_max=3, retry_after=1.0, stuck_then_land=0.02,
              stuck_streak=3, malformed=0.03, fault=0.05, fault_polls=1, latency=0.04,
              seed=5)
    sim = await simulators(mix)
    ids = new_ids(JOBS)
    await enqueue(pool, ids)
    fleet = fleets(db_url, sim.url, CRASH_ENV)

    # The first kill comes at a random moment after the spawn (start-up included); each
    # later one once the new daemon has landed a random share of what remains, plus a
    # random instant.
    schedule: list[str] = []
    leases_left_by_kills: list[int] = []
    daemon = fleet.spawn("run-1")
    await asyncio.sleep(rng.uniform(0.3, 2.0))
    for k in range(KILLS):
        landed_before = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE state = 'landed'")
        if k > 0:
            target = landed_before + int(rng.uniform(0.15, 0.35) * (JOBS - landed_before))
            landed_before = await wait_landed(db_url, target, 90, fleet=fleet)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
        assert await fleet.kill(daemon) == -9
        started = daemon.events("daemon.started")  # none if killed while starting
        leases = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE leased_until > now() AND leased_by = $1",
            started[0]["worker_id"] if started else "")
        leases_left_by_kills.append(leases)
        schedule.append(f"kill {k + 1} at {landed_before} landed, {leases} leases left")
        daemon = fleet.spawn(f"run-{k + 2}")

    context = f"seed {seed}: {'; '.join(schedule)}"
    print(context)
    await wait_landed(db_url, JOBS, 120, fleet=fleet)
    assert await fleet.stop(daemon) == 0, context
    await witness.wait_for(JOBS)

    found = await audit(pool)
    assert found.problems() == [], context
    assert found.states == {"pending": 0, "stuck": 0, "landed": JOBS, "failed": 0}, context
    assert found.mirror_rows == JOBS, context
    # One landing per job, seen from outside: one harvester_landed NOTIFY each.
    assert witness.duplicates == {}, context
    assert set(witness.counts) == {str(i) for i in ids}, context
    await assert_mirror_is_upstream(pool, mix.seed)
    # Never two requests for one job at once, even across a crash and a restart.
    assert sim.state.overlaps == 0, context
    # The kills really cut work short: the killed daemons left leases behind.
    assert max(leases_left_by_kills) > 0, context
    # Up to its kill, every daemon ran cleanly.
    fleet.assert_healthy_logs()
