"""The database goes away mid-run: a restarted PostgreSQL, connections killed under the
daemon. It logs, waits, reconnects and finishes; it never exits and never loses a job.

The restart uses a PostgreSQL of the test's own (``cluster``) so that the server the rest
of the suite shares is never disturbed; killing connections only touches this test's
database, so it runs against the shared server (embedded or CI's) as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import (
    Audit,
    Cluster,
    Fleet,
    assert_mirror_is_upstream,
    audit,
    audit_url,
    new_ids,
    wait_landed,
)
from tests.helpers import DAEMON_GRANTS, Daemon, login_role

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


# ------------------------------------------- faults that pass (README "The database's faults")


class Readiness:
    """Polls ``/readyz`` in the background and keeps what it saw, in order."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.seen: list[tuple[float, int, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Readiness:
        self._task = asyncio.create_task(self._poll())
        return self

    async def _poll(self) -> None:
        while True:
            try:
                status, body = await self.daemon.get("/readyz")
            except aiohttp.ClientError:
                status, body = 0, {}
            checks = body.get("checks", {}) if isinstance(body, dict) else {}
            self.seen.append((time.monotonic(), status, checks))
            await asyncio.sleep(0.2)

    def failed_since(self, since: float) -> list[dict[str, Any]]:
        return [checks for at, status, checks in self.seen if at >= since and status == 503]

    async def ready_again(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen and self.seen[-1][1] == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not ready again within {timeout}s: {self.seen[-3:]}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


OUTAGE_JOBS = 1000
Fault = Callable[[asyncpg.Connection, str], Awaitable[None]]


@dataclass
class RiddenOut:
    """What a daemon did through a fault: its log, what readiness said meanwhile, the
    audit, and upstream's view of the requests."""

    daemon: Daemon
    fleet: Fleet
    not_ready: list[dict[str, Any]]
    found: Audit
    sim: Any

    def lines(self, event: str) -> list[dict[str, Any]]:
        """``store.unavailable``/``store.recovered`` of the harvesting loops (the purge,
        which waits out on its own schedule, says its own)."""
        return [e for e in self.daemon.events(event) if e.get("during") != "retention"]

    def assert_one_outage(self, cause: str, level: str = "warning") -> None:
        began, ended = self.lines("store.unavailable"), self.lines("store.recovered")
        assert len(began) == 1 and len(ended) == 1, (began, ended)
        assert began[0]["level"] == level, began
        assert cause in ended[0]["causes"], ended
        assert self.not_ready, "readiness never failed"
        # Failing for the database each time; and at least once although a ping got
        # through (a read-only node, a lock, a privilege: SELECT 1 alone says "ready").
        assert all(False in (c.get("database"), c.get("database_serving"))
                   for c in self.not_ready), self.not_ready
        assert any(c.get("database") is True and c.get("database_serving") is False
                   for c in self.not_ready), self.not_ready

    def assert_nothing_lost(self) -> None:
        assert self.found.problems() == []
        assert self.found.states["landed"] == self.found.mirror_rows == OUTAGE_JOBS
        assert self.sim.state.overlaps == 0
        self.fleet.assert_healthy_logs(tracebacks_from=["asyncpg.pool"])


async def ride_out(db_url: str, simulators: StartSimulator, fleets: MakeFleet, fault: Fault,
                   *, daemon_url: str | None = None, args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None) -> RiddenOut:
    """Feed, start one daemon (``daemon_url``: as another role), apply ``fault`` (which
    undoes itself) once a fifth has landed, then check the daemon lived through it, every
    job landed once, readiness came back, and no job was charged for it."""
    ids = new_ids(OUTAGE_JOBS)
    # The test's own session is exempt from the timeouts a fault may set for the database.
    admin = await asyncpg.connect(db_url, server_settings={
        "application_name": "acceptance", "statement_timeout": "0", "lock_timeout": "0"})
    database = await admin.fetchval("SELECT current_database()")
    try:
        await admin.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])",
                            ids)
        sim = await simulators(MIX)
        fleet = fleets(daemon_url or db_url, sim.url, env)
        daemon = fleet.spawn(args=args)
        await daemon.wait_ready()
        ready = Readiness(daemon).start()
        try:
            await wait_landed(db_url, OUTAGE_JOBS // 5, 60, fleet=fleet)
            began = time.monotonic()
            await fault(admin, database)
            assert daemon.proc is not None and daemon.proc.poll() is None, (
                "the daemon exited during the fault:\n" + daemon.raw_log()[-3000:])
            await wait_landed(db_url, OUTAGE_JOBS, 120, fleet=fleet)
            await ready.ready_again(30)
            not_ready = ready.failed_since(began)
        finally:
            await ready.stop()
        assert await fleet.stop(daemon) == 0
        found = await audit(admin)
        await assert_mirror_is_upstream(admin, MIX.seed)
        await assert_nothing_charged(admin, sim)
    finally:
        await admin.close()
    return RiddenOut(daemon, fleet, not_ready, found, sim)


async def assert_nothing_charged(conn: asyncpg.Connection, sim: Any) -> None:
    """Every job's poll count is the number of GETs upstream served for it: the fault
    added no poll that was not made and lost none that was (an answer held through it
    was written, not fenced off and asked again); and none was refused a write."""
    served = Counter(s.job_id for s in sim.state.log)
    rows = await conn.fetch("SELECT job_id, polls, last_error FROM harvester.jobs")
    wrong = {str(r["job_id"]): (r["polls"], served[str(r["job_id"])]) for r in rows
             if r["polls"] != served[str(r["job_id"])]}
    assert wrong == {}, f"polls != GETs served (job: (polls, served)): {list(wrong.items())[:5]}"
    assert [r for r in rows if "database" in (r["last_error"] or "")] == []


async def test_a_read_only_window_after_a_failover_is_ridden_out(
    db_url: str, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    """Issue 21: a failover cuts every session and the first node reached is read-only
    for a few seconds (SQLSTATE 25006). Used to exit 1 (``database error:
    ReadOnlySQLTransactionError``). The daemon waits it out: readiness fails meanwhile,
    one line when it starts and one when it ends, every job lands, none is charged."""

    async def failover(admin: asyncpg.Connection, database: str) -> None:
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        try:
            await admin.fetchval(TERMINATE, ["harvester", "harvester-listen"])
            await asyncio.sleep(6.0)
        finally:
            # Undone without cutting the sessions again: the daemon itself must leave the
            # read-only node's sessions (after a real failover they stay on it).
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')

    ridden = await ride_out(db_url, simulators, fleets, failover)
    ridden.assert_one_outage("25006")
    ridden.assert_nothing_lost()


@pytest.mark.parametrize("timeout", [
    pytest.param(None, id="no-timeout"),
    pytest.param("statement_timeout", id="statement_timeout"),
    pytest.param("lock_timeout", id="lock_timeout"),
])
async def test_an_operator_holding_lock_table_for_seconds_is_ridden_out(
    db_url: str, simulators: StartSimulator, fleets: MakeFleet, timeout: str | None
) -> None:
    """``LOCK TABLE harvester.jobs`` held for 4 s. Without a timeout the daemon's
    statements simply wait for the lock; with ``statement_timeout`` or ``lock_timeout``
    set for the database they are cut (57014, 55P03) and the daemon waits that out."""
    codes = {"statement_timeout": "57014", "lock_timeout": "55P03"}
    admin = await asyncpg.connect(db_url)
    database = await admin.fetchval("SELECT current_database()")
    if timeout is not None:  # for the daemon's sessions, opened after this
        await admin.execute(f"ALTER DATABASE \"{database}\" SET {timeout} = '300ms'")

    async def lock(operator: asyncpg.Connection, _database: str) -> None:
        async with operator.transaction():
            await operator.execute("LOCK TABLE harvester.jobs IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(4.0)

    try:
        # Statements that wait for the lock without failing hold their answers too: a
        # lease shorter than the wait would let the next claim take those jobs (and
        # fence their answers off) once the lock goes. Production leases are 60 s.
        ridden = await ride_out(db_url, simulators, fleets, lock,
                                env={"HARVESTER_LEASE_SECONDS": "20"})
    finally:
        if timeout is not None:
            await admin.execute(f'ALTER DATABASE "{database}" RESET {timeout}')
        await admin.close()
    if timeout is None:
        assert ridden.lines("store.unavailable") == []
    else:
        ridden.assert_one_outage(codes[timeout])
    ridden.assert_nothing_lost()


async def test_a_privilege_revoked_while_running_is_waited_out_loudly(
    db_url: str, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    """An operator revokes UPDATE on the queue from the daemon's role, then grants it
    back 4 s later (fixing a grant by hand): every replica waits, at error level, with
    readiness failing; none exits, and everything lands once the grant is back."""
    async with login_role(db_url, *DAEMON_GRANTS) as (role, dsn):

        async def revoke(admin: asyncpg.Connection, _database: str) -> None:
            await admin.execute(f"REVOKE UPDATE ON harvester.jobs FROM {role}")
            try:
                await asyncio.sleep(4.0)
            finally:
                await admin.execute(f"GRANT UPDATE ON harvester.jobs TO {role}")

        ridden = await ride_out(db_url, simulators, fleets, revoke, daemon_url=dsn,
                                args=["--no-migrate"])
    ridden.assert_one_outage("42501", level="error")
    assert "the role lacks a privilege" in ridden.lines("store.unavailable")[0]["error"]
    ridden.assert_nothing_lost()


async def test_a_role_that_never_had_a_privilege_stops_run_at_start(
    db_url: str, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    async with login_role(db_url, *DAEMON_GRANTS,
                          "REVOKE UPDATE ON harvester.jobs FROM {role}") as (role, dsn):
        sim = await simulators(MIX)
        daemon = fleets(dsn, sim.url).spawn(args=["--no-migrate"])
        assert await daemon.wait(30) == 2
    lines = [e["raw"] for e in daemon.events("<not json>")]
    assert lines == [f'harvester: HARVESTER_DATABASE_URL: role "{role}" lacks UPDATE on '
                     "harvester.jobs: grant it, or use a role that has them (README \"The "
                     "database's faults\")"]
    assert "daemon.started" not in [e["event"] for e in daemon.events()]
