"""A batch of jobs the token may not read (README "How upstream answers are handled", 403).

A feeder sends 60 IDs of another organisation (upstream answers 403 "insufficient
permissions" to each), then 2,000 ordinary IDs. The ordinary jobs must land about as
fast as they do alone, and each foreign job must end ``failed (forbidden)`` after
about three refusals: a run of 403s is about those jobs unless a request known to be
readable is refused too. Once with a daemon that has read nothing yet, once with one
that has.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import asyncpg

from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import new_ids
from tests.helpers import enqueue

FOREIGN = 60
ORDINARY = 2000
PRODUCTION_PROBE = {"HARVESTER_AUTH_PROBE_INTERVAL": "30", "HARVESTER_CONCURRENCY": "64"}
"""The permission circuit's probe as in production: a stall shows as the 30 s it is."""
WAIT = 60.0
STALL_ALLOWED = 5.0
"""Seconds the ordinary jobs may take beyond landing alone (a second or two, and the
noise of a machine shared with other work)."""


async def _landed(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1) AND state = 'landed'", ids))


async def _feed_and_time(pool: asyncpg.Pool, foreign: list[uuid.UUID],
                         ordinary: list[uuid.UUID]) -> tuple[float, float]:
    """Feed the foreign IDs, then the ordinary ones; seconds until every ordinary job
    landed, and until every foreign job ended (inf: not within WAIT)."""
    started = time.monotonic()
    if foreign:
        await enqueue(pool, foreign)
    await enqueue(pool, ordinary)
    landed_in = ended_in = math.inf
    while time.monotonic() - started < WAIT and math.inf in (landed_in, ended_in):
        if landed_in == math.inf and await _landed(pool, ordinary) == len(ordinary):
            landed_in = time.monotonic() - started
        open_foreign = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1) AND state = 'pending'",
            foreign)
        if ended_in == math.inf and open_foreign == 0:
            ended_in = time.monotonic() - started
        await asyncio.sleep(0.05)
    return landed_in, ended_in


async def _foreign_rows(pool: asyncpg.Pool, foreign: list[uuid.UUID]) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT state, failed_reason, polls, attempt FROM harvester.jobs WHERE job_id = ANY($1)",
        foreign)


async def test_a_batch_of_foreign_jobs_holds_nothing_back_and_each_fails_forbidden(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    sim = await simulators()
    cold_foreign, warm_foreign = new_ids(FOREIGN), new_ids(FOREIGN)
    sim.script({job: ["403"] for job in [*cold_foreign, *warm_foreign]})
    fleet = fleets(db_url, sim.url, PRODUCTION_PROBE)
    daemon = fleet.spawn()
    await daemon.wait_ready()

    # A daemon that has read nothing yet: the first answers it gets are all 403s.
    cold = await _feed_and_time(pool, cold_foreign, new_ids(ORDINARY))
    cold_rows = await _foreign_rows(pool, cold_foreign)
    # The same daemon alone with ordinary jobs: the unstalled time.
    alone, _ = await _feed_and_time(pool, [], new_ids(ORDINARY))
    # And once more with a foreign batch, now that it has read jobs.
    opened_before = len(daemon.events("permission.circuit_open"))
    warm = await _feed_and_time(pool, warm_foreign, new_ids(ORDINARY))
    warm_rows = await _foreign_rows(pool, warm_foreign)
    opened_warm = len(daemon.events("permission.circuit_open")) - opened_before
    assert await fleet.stop(daemon) == 0
    fleet.assert_healthy_logs()

    cold_polls = sorted(r["polls"] for r in cold_rows)
    warm_polls = sorted(r["polls"] for r in warm_rows)
    print(f"ordinary jobs alone {alone:.1f} s; after {FOREIGN} foreign ones: {cold[0]:.1f} s "
          f"(daemon that read nothing yet), {warm[0]:.1f} s (after reading); foreign ended in "
          f"{cold[1]:.1f} s / {warm[1]:.1f} s, polls per foreign job {cold_polls[0]}-"
          f"{cold_polls[-1]} / {warm_polls[0]}-{warm_polls[-1]}; permission circuit opened "
          f"{opened_before} / {opened_warm} times")

    assert cold[0] <= alone + STALL_ALLOWED
    assert warm[0] <= alone + STALL_ALLOWED
    for rows in (cold_rows, warm_rows):
        assert {(r["state"], r["failed_reason"]) for r in rows} == {("failed", "forbidden")}
        assert {r["attempt"] for r in rows} == {0}  # refusals are not attempts
    assert warm_polls == [3] * FOREIGN
    assert cold_polls[-1] <= 4
    assert max(cold[1], warm[1]) <= 20.0
    # Having read jobs, the daemon checked with one of them: the token was never suspected.
    assert opened_warm == 0
    stats = sim.state.stats()
    assert stats["early_polls"] == 0 and stats["overlaps"] == 0
