"""The embedded PostgreSQL and the read-only role, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest


def harvester(*args: str, env: dict[str, str], stdin: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harvester", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def test_embedded_database_starts_empty_and_keeps_data_between_processes(
        tmp_path: Path, open_tmp_path: Path) -> None:
    data_dir = open_tmp_path / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "HARVESTER_DATA_DIR": str(data_dir), "HARVESTER_LOG_FORMAT": "json"}
    job_id = str(uuid.uuid4())

    first = harvester("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 001_initial" in first.stdout
    assert (data_dir / "pgdata" / "PG_VERSION").exists()

    again = harvester("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to apply" in again.stdout
    assert "applied" not in again.stdout

    fed = harvester("enqueue", job_id, env=env)
    assert fed.returncode == 0, fed.stderr
    assert "new: 1" in fed.stdout

    # A new process, a restarted server: the job is still there.
    status = harvester("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["jobs"]["pending"] == 1
    assert document["total"] == 1


def test_missing_embedded_extra_is_one_clear_line(tmp_path: Path) -> None:
    # Hide pgserver from the child interpreter: the message must say what to do.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pgserver").mkdir()
    (shim / "pgserver" / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "HARVESTER_DATA_DIR": str(tmp_path / "d"), "PYTHONPATH": str(shim)}
    proc = harvester("status", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "harvester: HARVESTER_DATABASE_URL is not set and the embedded PostgreSQL is not "
        "installed: pip install 'harvester[embedded]', or set HARVESTER_DATABASE_URL"]


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "HARVESTER_DATABASE_URL": "postgresql://u:sekret-pw-123@127.0.0.1:1/db"}
    proc = harvester("status", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("harvester: cannot reach the database")
    assert "sekret-pw-123" not in proc.stderr


async def test_readonly_role_reads_but_cannot_write(db_url: str, repo_root: Path) -> None:
    admin = await asyncpg.connect(db_url)
    role = "harvester_reader"
    try:
        await admin.execute((repo_root / "deploy" / "readonly-role.sql").read_text())
        await admin.execute((repo_root / "deploy" / "readonly-role.sql").read_text())  # idempotent
        await admin.execute("INSERT INTO harvester.jobs (job_id) VALUES (gen_random_uuid())")
        async with admin.transaction():
            await admin.execute(f"SET LOCAL ROLE {role}")
            assert await admin.fetchval("SELECT count(*) FROM harvester.jobs") == 1
            assert await admin.fetchval("SELECT count(*) FROM harvester.open_stuck_jobs") == 0
            await admin.fetchval("SELECT count(*) FROM harvester.extraction_results")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await admin.execute("DELETE FROM harvester.jobs")
    finally:
        await admin.close()


def test_enqueue_reads_stdin_given_a_dash(tmp_path: Path, open_tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "HARVESTER_DATA_DIR": str(open_tmp_path / "d")}
    assert harvester("migrate", env=env).returncode == 0
    ids = "\n".join(str(uuid.uuid4()) for _ in range(5)) + "\n"
    fed = harvester("enqueue", "-", env=env, stdin=ids)
    assert fed.returncode == 0, fed.stderr
    assert json.loads(harvester("status", "--json", env=env).stdout)["jobs"]["pending"] == 5
