"""The retention soak: a steady feed for N minutes with a one-minute retention, two
replicas, the queue's size sampled every 30 s. Not part of CI; run it by hand and read
the curve it prints (README "Retention")::

    pytest -m soak tests/acceptance/test_retention_soak.py --soak-minutes 10 -s

Jobs are fed at 100 a second; most land after zero to two 202s, a few fail. Once the
first retention period is over the purge deletes as many finished rows as land, so the
queue's rows and its size on disk (pg_total_relation_size, indexes included) level off,
while the mirror keeps growing (no result retention here). Deleted rows make room for new
ones only once (auto)vacuum has passed, so the soak runs on a PostgreSQL of its own with
the server's defaults (autovacuum on), not on a shared test server that may run without.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time

import aiohttp
import asyncpg
import pytest

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import Cluster, new_ids
from tests.helpers import Daemon, enqueue, wait_until
from tests.integration.test_observability import fetch, scrape

RETENTION = 60.0
FEED_PER_SECOND = 100
SAMPLE_EVERY = 30.0
MIX = Mix(pending_min=0, pending_max=2, retry_after=1.0, not_found_failed=0.03, gone=0.02,
          seed=83)
ENV = {"HARVESTER_FINISHED_RETENTION": str(RETENTION), "HARVESTER_LOG_LEVEL": "warning",
       "HARVESTER_CONCURRENCY": "32"}

SAMPLE_SQL = """
SELECT (SELECT count(*) FROM harvester.jobs) AS rows,
       (SELECT count(*) FROM harvester.jobs WHERE state IN ('pending', 'stuck')) AS open,
       pg_total_relation_size('harvester.jobs') AS bytes,
       pg_relation_size('harvester.jobs') AS heap,
       (SELECT count(*) FROM harvester.extraction_results) AS mirror_rows,
       pg_total_relation_size('harvester.extraction_results') AS mirror_bytes,
       s.n_dead_tup AS dead, s.autovacuum_count AS autovacuums
  FROM pg_stat_user_tables AS s
 WHERE s.relid = 'harvester.jobs'::regclass
"""


async def _ready(daemon: Daemon) -> bool:
    """At log level warning there is no daemon.started: ask /readyz."""
    daemon._fail_if_exited()
    try:
        status, _body, _headers = await fetch(daemon, "/readyz")
    except aiohttp.ClientError:
        return False
    return status == 200


@pytest.mark.soak
async def test_soak_the_queue_levels_off_after_the_first_retention_period(
    request: pytest.FixtureRequest, cluster: Cluster, simulators: StartSimulator,
    fleets: MakeFleet,
) -> None:
    minutes = float(request.config.getoption("--soak-minutes"))
    db_url = await cluster.create_migrated_database()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        assert await pool.fetchval("SHOW autovacuum") == "on"
        await _soak(minutes, db_url, pool, simulators, fleets)
    finally:
        await pool.close()


async def _soak(minutes: float, db_url: str, pool: asyncpg.Pool, simulators: StartSimulator,
                fleets: MakeFleet) -> None:
    sim = await simulators(MIX)
    sim.simulator.apply_control({"record": False})
    fleet = fleets(db_url, sim.url, ENV)
    daemons = [fleet.spawn("replica-1"), fleet.spawn("replica-2")]
    for daemon in daemons:
        await wait_until(functools.partial(_ready, daemon), 60, "readiness")
    fed = 0
    samples: list[tuple[float, asyncpg.Record]] = []
    started = time.monotonic()
    next_sample = started
    print(f"\n{'t (s)':>6} {'fed':>7} {'rows':>6} {'open':>5} {'MiB':>6} {'heap':>6} "
          f"{'dead':>6} {'vac':>4} {'mirror':>7} {'mirror MiB':>10} {'purged':>7}", flush=True)
    while (now := time.monotonic()) < started + minutes * 60:
        await enqueue(pool, new_ids(FEED_PER_SECOND))
        fed += FEED_PER_SECOND
        if now >= next_sample:
            row = await pool.fetchrow(SAMPLE_SQL)
            assert row is not None
            purged = sum([(await scrape(d)).value("harvester_retention_deleted_total",
                                                  table="jobs") for d in daemons])
            samples.append((now - started, row))
            print(f"{now - started:6.0f} {fed:7d} {row['rows']:6d} {row['open']:5d} "
                  f"{row['bytes'] / 2**20:6.2f} {row['heap'] / 2**20:6.2f} {row['dead']:6d} "
                  f"{row['autovacuums']:4d} {row['mirror_rows']:7d} "
                  f"{row['mirror_bytes'] / 2**20:10.2f} {purged:7.0f}", flush=True)
            next_sample += SAMPLE_EVERY
        for daemon in daemons:
            daemon._fail_if_exited()
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    assert await fleet.stop_all() == [0, 0]

    # After the first retention period (and one more for the purge and autovacuum to
    # settle), the queue is flat: rows and bytes stay within a band, and the bytes at the
    # end are no more than a little above those at the start of the band.
    settled = [row for at, row in samples if at >= 2 * RETENTION]
    assert len(settled) >= 4, "run at least four minutes"
    rows = [row["rows"] for row in settled]
    size = [row["bytes"] for row in settled]
    middle = statistics.median(rows)
    print(f"after {2 * RETENTION:.0f} s: rows {min(rows)}..{max(rows)} (median {middle:.0f}), "
          f"bytes {min(size) / 2**20:.2f}..{max(size) / 2**20:.2f} MiB; mirror "
          f"{settled[-1]['mirror_bytes'] / max(settled[-1]['mirror_rows'], 1):.0f} bytes/row",
          flush=True)
    assert max(rows) <= 1.3 * middle and min(rows) >= 0.7 * middle
    assert size[-1] <= 1.25 * size[0]
    assert fleet.events("retention.failed") == []
    fleet.assert_healthy_logs()
