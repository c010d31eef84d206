"""The soak: the chaos mix, jobs fed continuously, daemons killed and restarted, for N
minutes. Not part of CI; run it by hand and read the counts it prints::

    pytest -m soak tests/acceptance/test_soak.py --soak-minutes 10 -s

Two replicas share the database. Every few tens of seconds one of them is killed with
SIGKILL (now and then stopped with SIGTERM instead) and a new one takes its place. When
the time is up the feeding stops, the fleet drains, and the run is judged: no duplicate
(a mirror row twice, a landing notified twice, two requests for one job at once), no
lost job (one neither landed, failed nor stuck and not pending with a next poll either),
every job where its fate says it must end, and no daemon that died by itself.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter

import asyncpg
import pytest

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import Fleet, LandedWitness, audit, expected_end, new_ids
from tests.helpers import Daemon, enqueue, state_counts

MIX = Mix.preset("chaos", seed=71)
SOAK_ENV = {
    "HARVESTER_CONCURRENCY": "32",
    "HARVESTER_LEASE_SECONDS": "4",
    "HARVESTER_STUCK_RECHECK": "5",
    "HARVESTER_LOG_LEVEL": "warning",
}
REPLICAS = 2
FEED_PER_SECOND = (20, 80)
KILL_EVERY = (15.0, 40.0)
DRAIN_TIMEOUT = 300.0


def check_alive(fleet: Fleet, current: list[Daemon]) -> None:
    for daemon in current:
        daemon._fail_if_exited()  # only the test kills or stops a daemon
    for daemon in fleet.running:
        fleet.sample_rss(daemon)


@pytest.mark.soak
async def test_soak_chaos_with_kills_loses_and_duplicates_nothing(
    request: pytest.FixtureRequest, db_url: str, pool: asyncpg.Pool,
    simulators: StartSimulator, fleets: MakeFleet, witness: LandedWitness,
) -> None:
    minutes = float(request.config.getoption("--soak-minutes"))
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    sim = await simulators(MIX)
    sim.simulator.apply_control({"record": False})  # the request log would grow unbounded
    fleet = fleets(db_url, sim.url, SOAK_ENV)
    current = [fleet.spawn(f"replica-{i + 1}") for i in range(REPLICAS)]
    ids: list[uuid.UUID] = []
    kills = terms = 0
    started = time.monotonic()
    deadline = started + minutes * 60
    next_kill = started + rng.uniform(*KILL_EVERY)
    next_report = started + 60

    while time.monotonic() < deadline:
        batch = new_ids(rng.randint(*FEED_PER_SECOND))
        await enqueue(pool, batch)
        ids.extend(batch)
        await asyncio.sleep(1.0)
        check_alive(fleet, current)
        now = time.monotonic()
        if now >= next_kill:
            victim = rng.randrange(len(current))
            if rng.random() < 0.2:
                assert await fleet.stop(current[victim]) == 0
                terms += 1
            else:
                await fleet.kill(current[victim])
                kills += 1
            current[victim] = fleet.spawn(f"replica-{len(fleet.daemons) + 1}")
            next_kill = now + rng.uniform(*KILL_EVERY)
        if now >= next_report:
            counts = await state_counts(pool)
            print(f"soak {int((now - started) / 60)} min: {len(ids)} jobs fed, {counts}, "
                  f"{sim.state.requests} requests, {kills} kills, {terms} SIGTERMs", flush=True)
            next_report = now + 60

    # Drain: every job reaches the end its fate prescribes.
    want = Counter(expected_end(job, MIX)[0] for job in ids)
    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
    counts = await state_counts(pool)
    while any(counts[state] != want[state] for state in ("landed", "failed", "stuck")):
        assert time.monotonic() < drain_deadline, f"drain stalled: {counts} vs {dict(want)}"
        await asyncio.sleep(1.0)
        check_alive(fleet, current)
        counts = await state_counts(pool)
    codes = await fleet.stop_all()
    await witness.wait_for(want["landed"])

    found = await audit(pool)
    rows = await pool.fetch("SELECT job_id, state, failed_reason FROM harvester.jobs")
    misplaced = [r["job_id"] for r in rows
                 if (r["state"], r["failed_reason"]) != expected_end(r["job_id"], MIX)]
    notified_twice = sum(n - 1 for n in witness.counts.values() if n > 1)
    duplicates = found.duplicates + notified_twice + sim.state.overlaps
    stats = sim.state.stats()
    print(
        f"\nSOAK RESULT ({minutes:g} min, seed {seed}):\n"
        f"  jobs fed          {len(ids)}\n"
        f"  requests          {stats['requests']} (+{stats['batch_requests']} batch-status)\n"
        f"  statuses          {stats['statuses']}\n"
        f"  landed            {found.states['landed']} (mirror rows {found.mirror_rows})\n"
        f"  failed            {found.states['failed']}\n"
        f"  stuck             {found.states['stuck']}\n"
        f"  pending           {found.states['pending']}\n"
        f"  duplicates        {duplicates} (mirror {found.duplicates}, notified twice "
        f"{notified_twice}, overlapping polls {sim.state.overlaps})\n"
        f"  lost              {found.lost}\n"
        f"  misplaced         {len(misplaced)}\n"
        f"  early polls       {stats['early_polls']} {stats['early_examples']}\n"
        f"  kill -9           {kills}\n"
        f"  SIGTERM restarts  {terms}\n"
        f"  daemons started   {len(fleet.daemons)}\n"
        f"  peak RSS          {fleet.peak_rss_kib / 1024:.0f} MiB",
        flush=True)

    assert codes == [0] * REPLICAS
    assert duplicates == 0
    assert found.lost == 0
    assert misplaced == []
    assert found.problems() == []
    assert found.jobs == len(ids)
    fleet.assert_healthy_logs(tracebacks_from=["asyncpg.pool"])
