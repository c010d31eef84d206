"""Three daemons on one database: they share the work and never poll one job at once."""

from __future__ import annotations

import asyncpg

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import LandedWitness, assert_mirror_is_upstream, audit, new_ids
from tests.helpers import enqueue, wait_for_states
from tests.integration.test_observability import scrape

JOBS = 3000
REPLICAS = 3


async def test_three_replicas_share_the_work_without_ever_polling_one_job_twice_at_once(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    witness: LandedWitness,
) -> None:
    # Waits, 500s, 404s, faults and resets make jobs come back again and again, to
    # whichever replica claims them next: every hand-over is a chance to poll a job
    # twice at once, or to make a request the books do not count.
    mix = Mix(pending_min=0, pending_max=3, retry_after=1.0, retry_after_style="mixed",
              stuck_then_land=0.03, stuck_streak=2, not_found_running=0.03, fault=0.04,
              fault_polls=1, latency=0.005, seed=31)
    sim = await simulators(mix)
    ids = new_ids(JOBS)
    await enqueue(pool, ids)
    fleet = fleets(db_url, sim.url, {"HARVESTER_CONCURRENCY": "24"})
    daemons = [fleet.spawn(f"replica-{i + 1}") for i in range(REPLICAS)]
    await wait_for_states(pool, 120, landed=JOBS)
    scrapes = [await scrape(d) for d in daemons]
    assert await fleet.stop_all() == [0] * REPLICAS
    await witness.wait_for(JOBS)

    polls = [s.total("harvester_polls_total") for s in scrapes]
    landed = [s.total("harvester_landed_total") for s in scrapes]
    stats = sim.state.stats()
    assert stats["overlaps"] == 0
    assert stats["early_polls"] == 0, stats["early_examples"]
    # Every replica did a real share, and between them they made every request.
    assert all(p >= 0.1 * sum(polls) for p in polls), polls
    assert all(n >= 0.1 * JOBS for n in landed), landed
    assert sum(landed) == JOBS
    found = await audit(pool)
    assert sum(polls) == stats["requests"]
    assert found.polls == stats["requests"]
    assert found.problems() == []
    assert found.mirror_rows == JOBS
    assert witness.duplicates == {}
    assert len(witness.counts) == JOBS
    await assert_mirror_is_upstream(pool, mix.seed)
    fleet.assert_healthy_logs()
