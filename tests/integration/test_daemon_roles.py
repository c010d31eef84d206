"""The daemon without DDL (README "Upgrades"): ``run --no-migrate`` waits, not ready, for
whoever migrates, and the two roles of deploy/owner-role.sql and deploy/runtime-role.sql
split the schema's owner from the daemons, which land, fail, mark stuck and purge jobs
as the runtime role and are refused any DDL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from harvester.daemon import SCHEMA_WAIT_RECHECK
from harvester.migrations import load_migrations
from tests.helpers import Daemon, SimulatedUpstream, enqueue
from tests.integration.test_observability import ready_until, scrape_until

ADMIN_TOKEN = "admin-token-for-the-roles-test"
PASSWORD = "roles-test-password"
NOT_READY = {"database": True, "migrations_current": False, "running": False}


def harvester(*args: str, database_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "HARVESTER_DATABASE_URL": database_url, "HARVESTER_LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "harvester", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def as_login(url: str, login: str) -> str:
    """``url`` with another user and password (the embedded server's URL names its socket
    directory in the query, so only the user part of the address changes)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{login}:{PASSWORD}@{host}").geturl()


def migration_names() -> list[str]:
    return [f"{m.version:03d}_{m.name}" for m in load_migrations()]


async def test_run_no_migrate_waits_not_ready_for_the_migration_then_runs(
    empty_db_url: str, upstream: SimulatedUpstream, tmp_path: Path,
) -> None:
    """Deployment before the migrate Job: the daemons neither migrate nor crash-loop."""
    daemon = Daemon(empty_db_url, upstream.url, tmp_path, args=["--no-migrate"]).start()
    stopped_while_waiting = Daemon(empty_db_url, upstream.url, tmp_path, name="stopped",
                                   args=["--no-migrate"]).start()
    try:
        behind = await daemon.wait_for_event("migrate.schema_behind", 30)
        assert behind["pending"] == migration_names()
        assert "harvester migrate" in behind["note"]
        assert (await daemon.get("/healthz"))[0] == 200
        assert await daemon.get("/readyz") == (503, {"ready": False, "checks": NOT_READY})

        await stopped_while_waiting.wait_for_event("migrate.schema_behind", 30)
        assert await stopped_while_waiting.stop(timeout=10) == 0
        assert stopped_while_waiting.events("daemon.exit")[-1]["reason"] == "signal"

        # Re-checked at least once meanwhile, and said once.
        await asyncio.sleep(SCHEMA_WAIT_RECHECK + 0.5)
        assert daemon.proc is not None and daemon.proc.poll() is None
        async with asyncpg.create_pool(empty_db_url, min_size=1, max_size=2) as pool:
            assert await pool.fetchval("SELECT to_regnamespace('harvester')") is None
            migrated = harvester("migrate", database_url=empty_db_url, home=tmp_path)
            assert migrated.returncode == 0, migrated.stderr

            await daemon.wait_for_event("migrate.schema_current", SCHEMA_WAIT_RECHECK + 10)
            assert len(daemon.events("migrate.schema_behind")) == 1
            await daemon.wait_ready()
            jobs = [uuid.uuid4() for _ in range(20)]
            await enqueue(pool, jobs)
            await scrape_until(daemon, lambda s: s.value("harvester_landed_total") == len(jobs),
                               "every job landed")
            assert (await ready_until(daemon, 200))["ready"] is True
    finally:
        await stopped_while_waiting.stop()
        assert await daemon.stop() == 0


@pytest.fixture
async def logins(empty_db_url: str, repo_root: Path) -> AsyncIterator[dict[str, str]]:
    """The two group roles from deploy/ (idempotent: other tests may have made them) and
    one login of this test's own in each, dropped afterwards; the database still has no
    schema, as on a fresh install."""
    suffix = uuid.uuid4().hex[:10]
    names = {"owner": f"hv_migrate_{suffix}", "runtime": f"hv_app_{suffix}"}
    admin = await asyncpg.connect(empty_db_url)
    try:
        for name in ("owner-role.sql", "runtime-role.sql", "owner-role.sql"):
            await admin.execute((repo_root / "deploy" / name).read_text())
        await admin.execute(f"CREATE ROLE {names['owner']} LOGIN PASSWORD '{PASSWORD}' "
                            "IN ROLE harvester_owner")
        await admin.execute(f"ALTER ROLE {names['owner']} SET role = 'harvester_owner'")
        await admin.execute(f"CREATE ROLE {names['runtime']} LOGIN PASSWORD '{PASSWORD}' "
                            "IN ROLE harvester_runtime")
        yield names
    finally:
        for name in names.values():
            await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def test_the_owner_migrates_and_the_runtime_role_runs_the_daemon_without_ddl(
    empty_db_url: str, logins: dict[str, str], repo_root: Path, tmp_path: Path,
) -> None:
    owner_url = as_login(empty_db_url, logins["owner"])
    runtime_url = as_login(empty_db_url, logins["runtime"])
    stuck_then_lands, fails, waits = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sim = await SimulatedUpstream().start()
    sim.script({stuck_then_lands: ["500", "500", "200"], fails: ["404"], waits: ["202:3600"]},
               batch_status={fails: "failed"})
    daemon = Daemon(runtime_url, sim.url, tmp_path, args=["--no-migrate"], env={
        "HARVESTER_ADMIN_TOKEN": ADMIN_TOKEN, "HARVESTER_STUCK_AFTER": "2",
        "HARVESTER_STUCK_RECHECK": "1", "HARVESTER_FINISHED_RETENTION": "1",
        "HARVESTER_RESULT_RETENTION": "1"}).start()
    admin = await asyncpg.connect(empty_db_url)
    try:
        # Started before the migration, and before its role may read the schema: it waits.
        await daemon.wait_for_event("migrate.schema_behind", 30)
        migrated = harvester("migrate", database_url=owner_url, home=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        owners = await admin.fetch(
            "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
            "WHERE relnamespace = 'harvester'::regnamespace")
        assert [row["owner"] for row in owners] == ["harvester_owner"]
        assert await admin.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'harvester'"
        ) == "harvester_owner"
        unreadable = await daemon.wait_for_event("migrate.schema_unreadable", 30)
        assert "permission denied" in unreadable["error"]
        assert "deploy/runtime-role.sql" in unreadable["note"]
        assert await daemon.get("/readyz") == (503, {"ready": False, "checks": NOT_READY})

        # The administrator grants the tables: the daemon starts on its next check.
        await admin.execute((repo_root / "deploy" / "runtime-role.sql").read_text())
        await daemon.wait_ready(SCHEMA_WAIT_RECHECK + 30)

        # Fed by SQL (LISTEN wakes it) and over HTTP (the daemon's role inserts).
        plain = [uuid.uuid4() for _ in range(30)]
        await admin.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])",
                            [*plain[:20], stuck_then_lands, fails])
        async with aiohttp.ClientSession() as session, session.post(
                f"{daemon.admin_url}/v1/jobs", json={"jobIds": [str(j) for j in [*plain[20:], waits]]},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
        landed = len(plain) + 1

        # Landed, failed, stuck then closed, and every finished row purged from the queue
        # and the mirror (the closed stuck record with its job), by the runtime role.
        page = await scrape_until(daemon, lambda s: (
            s.value("harvester_landed_total") == landed
            and s.value("harvester_failed_total", reason="upstream_failed") == 1
            and s.value("harvester_retention_deleted_total", table="jobs") == landed + 1
            and s.value("harvester_retention_deleted_total", table="extraction_results") == landed
            and s.value("harvester_queue_jobs", state="pending") == 1), "the jobs done and purged",
            timeout=60)
        assert page.value("harvester_stuck_transitions_total") == 1
        assert page.total("harvester_retention_failures_total") == 0
        assert page.value("harvester_store_unavailable_total") == 0
        assert await admin.fetchval("SELECT count(*) FROM harvester.stuck_jobs") == 0
        assert await admin.fetchval("SELECT job_id FROM harvester.jobs") == waits
        status, job = await daemon.get(f"/v1/jobs/{waits}", token=ADMIN_TOKEN)
        assert (status, job["state"]) == (200, "pending")
        assert (await ready_until(daemon, 200))["checks"]["migrations_current"] is True
    finally:
        stopped = await daemon.stop()
        await admin.close()
        await sim.stop()
    assert stopped == 0
    running = daemon.raw_log().partition('"migrate.schema_current"')[2]
    assert running and "permission denied" not in running
    assert not daemon.events("store.unavailable")

    # DDL, and the rows it has no business with, are refused to the runtime role.
    runtime = await asyncpg.connect(runtime_url)
    try:
        for statement in (
            "CREATE TABLE harvester.intruder (id int)",
            "ALTER TABLE harvester.jobs ADD COLUMN intruder int",
            "CREATE INDEX ON harvester.jobs (polls)",
            "DROP TABLE harvester.workers",
            "COMMENT ON TABLE harvester.jobs IS 'mine'",
            "CREATE SCHEMA intruder",
            "TRUNCATE harvester.jobs",
            "DELETE FROM harvester.stuck_jobs",
            "INSERT INTO harvester.schema_migrations (version, name, checksum) VALUES (999, 'x', 'x')",
            "DELETE FROM harvester.schema_migrations",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await runtime.execute(statement)
    finally:
        await runtime.close()
    refused = harvester("migrate", database_url=runtime_url, home=tmp_path)
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "permission denied" in lines[0]
    assert PASSWORD not in refused.stderr
    assert json.dumps(PASSWORD) not in daemon.raw_log()
