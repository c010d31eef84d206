"""The database goes away mid-run: a restarted PostgreSQL, connections killed under the
daemon. It logs, waits, reconnects and finishes; it never exits and never loses a job.

The restart uses a PostgreSQL of the test's own (``cluster``) so that the server the rest
of the suite shares is never disturbed; killing connections only touches this test's
database, so it runs against the shared server (embedded or CI's) as it is.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import (
    Cluster,
    assert_mirror_is_upstream,
    audit,
    audit_url,
    new_ids,
    wait_landed,
)

JOBS = 2000
MIX = Mix(pending_min=0, pending_max=3, retry_after=1.0, latency=0.01, seed=21)


@pytest.mark.parametrize("mode", [
    pytest.param("fast", id="clean-restart"),
    # A crash: no checkpoint, recovery from the WAL on start. The daemon commits claims
    # and outcomes without waiting for the WAL flush, so the last moments of its work
    # may be undone; those jobs must come due again and land, none may be lost.
    pytest.param("immediate", id="crash-and-recovery"),
])
async def test_a_postgres_restart_mid_run_is_waited_out_and_nothing_is_lost(
    cluster: Cluster, simulators: StartSimulator, fleets: MakeFleet, mode: str
) -> None:
    db_url = await cluster.create_migrated_database()
    ids = new_ids(JOBS)
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])", ids)
    finally:
        await conn.close()
    sim = await simulators(MIX)
    # The outage outlasts the lease: answers held in memory meet jobs whose leases have
    # lapsed, and the write fence decides which of them may still be written.
    fleet = fleets(db_url, sim.url, {"HARVESTER_LEASE_SECONDS": "3"})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    before = await wait_landed(db_url, 300, 60, fleet=fleet)

    cluster.stop(mode)
    # Down for a while: every statement fails, the LISTEN connection is gone, answers
    # already fetched wait in memory. The daemon must sit it out, not exit.
    await asyncio.sleep(3.0)
    assert daemon.proc is not None and daemon.proc.poll() is None
    requests_while_down = sim.state.requests
    await asyncio.sleep(1.0)
    requests_ran_on = sim.state.requests - requests_while_down
    cluster.start()

    await wait_landed(db_url, JOBS, 120, fleet=fleet)
    await daemon.wait_for_event("listen.reconnected", 30)
    assert daemon.proc.poll() is None, "the daemon exited during the outage"
    assert await fleet.stop(daemon) == 0

    for event in ("store.unavailable", "listen.lost", "store.recovered"):
        assert daemon.events(event), f"no {event} in the log"
    fleet.assert_healthy_logs(tracebacks_from=["asyncpg.pool"])
    found = await audit_url(db_url)
    assert found.problems() == []
    assert found.states["landed"] == found.mirror_rows == JOBS
    assert before < JOBS
    # While the database was away nothing new was claimed, so no requests ran on.
    assert requests_ran_on == 0
    assert sim.state.overlaps == 0
    conn = await asyncpg.connect(db_url)
    try:
        await assert_mirror_is_upstream(conn, MIX.seed)
    finally:
        await conn.close()


TERMINATE = """
SELECT count(pg_terminate_backend(pid))
  FROM pg_stat_activity
 WHERE datname = current_database()
   AND application_name = ANY($1::text[])
"""


async def test_connections_killed_under_the_daemon_are_replaced(
    db_url: str, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    ids = new_ids(JOBS)
    admin = await asyncpg.connect(db_url, server_settings={"application_name": "acceptance"})
    try:
        await admin.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])",
                            ids)
        sim = await simulators(MIX)
        fleet = fleets(db_url, sim.url)
        daemon = fleet.spawn()
        await daemon.wait_ready()
        killed = []
        for share in (0.2, 0.5, 0.8):
            await wait_landed(db_url, int(share * JOBS), 60, fleet=fleet)
            killed.append(await admin.fetchval(TERMINATE, ["harvester", "harvester-listen"]))
        await wait_landed(db_url, JOBS, 120, fleet=fleet)
        await daemon.wait_for_event("listen.reconnected", 30)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert await fleet.stop(daemon) == 0
        found = await audit(admin)
        await assert_mirror_is_upstream(admin, MIX.seed)
    finally:
        await admin.close()

    assert min(killed) >= 2, killed  # the listener and at least one pooled connection
    assert daemon.events("listen.lost")
    fleet.assert_healthy_logs(tracebacks_from=["asyncpg.pool"])
    assert found.problems() == []
    assert found.states["landed"] == found.mirror_rows == JOBS
    assert sim.state.overlaps == 0
