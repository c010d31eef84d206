"""The operator's day (README "Commands", "Feeding jobs"): one database named for every
command, honest messages for a database that is missing or not migrated, paged job
lists, roles with only the rights their feed path needs, psql with the same connection
parameters as the daemon, and an interrupted enqueue that says what it did."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from harvester.admin import Admin
from harvester.commands.psql import service_file
from harvester.dsn import libpq_connection, libpq_file_secrets, with_database
from harvester.errors import UserError
from harvester.metrics import Metrics
from harvester.migrations import latest_version
from harvester.settings import load_settings
from harvester.store import create_pool
from harvester.tools.demo import DEMO_DATABASE, next_commands
from tests.helpers import Daemon, SimulatedUpstream, wait_until
from tests.integration.test_admin_api import AUTH, TOKEN, ready
from tests.integration.test_commands import put_jobs_in_each_state, table_rows
from tests.stores import Store

pytestmark = pytest.mark.usefixtures("restore_logging")


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "HARVESTER_LOG_FORMAT": "json", **extra}


def harvester(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harvester", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# ---------------------------------------------------------------- --database


async def test_every_command_takes_the_database_by_name_and_says_when_it_is_not_migrated(
    cli: Any, empty_db_url: str, pool: asyncpg.Pool
) -> None:
    other = database_name(empty_db_url)
    where = f'database "{other}" on {urlsplit(empty_db_url).netloc.rpartition("@")[2]}'
    if not urlsplit(empty_db_url).netloc:  # the embedded server: a socket in ?host=
        where = f'database "{other}" on '
    for command in (["status"], ["stuck"], ["jobs", "--state", "failed"],
                    ["requeue", "--state", "failed"]):
        refused = await cli(*command, "--database", other)
        assert refused.status == 2, command
        assert refused.err.startswith(f"harvester: {where}"), refused.err
        assert refused.err.endswith(" is not migrated (no harvester schema): run "
                                    f"`harvester migrate --database {other}`\n"), refused.err
    fed = await cli("enqueue", str(uuid.uuid4()), "--database", other)
    assert fed.status == 2
    assert "is not migrated (no harvester schema)" in fed.err

    migrated = await cli("migrate", "--database", other)
    assert migrated.status == 0, migrated.err
    job = uuid.uuid4()
    assert (await cli("enqueue", str(job), "--database", other)).status == 0
    there = (await cli("status", "--json", "--database", other)).json()
    assert there["jobs"]["pending"] == 1
    here = (await cli("status", "--json")).json()  # the configured database is untouched
    assert here["jobs"]["pending"] == 0
    listed = (await cli("jobs", "--state", "pending", "--json", "--database", other)).json()
    assert [j["job_id"] for j in listed["jobs"]] == [str(job)]
    assert (await cli("stuck", "--database", other)).out == "no open stuck jobs\n"


async def test_run_works_on_the_database_it_is_given_by_name(
        db_url: str, empty_db_url: str, pool: asyncpg.Pool, upstream: SimulatedUpstream,
        tmp_path: Path) -> None:
    """`run --database NAME` (README "Commands"): the daemon migrates and works there,
    and leaves the configured database alone."""
    other = database_name(empty_db_url)
    daemon = Daemon(db_url, upstream.url, tmp_path, args=["--database", other]).start()
    try:
        await daemon.wait_ready()
        there = await asyncpg.connect(empty_db_url)
        try:
            job = uuid.uuid4()
            await there.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", job)

            async def landed() -> bool:
                state = await there.fetchval(
                    "SELECT state FROM harvester.jobs WHERE job_id = $1", job)
                return bool(state == "landed")

            await wait_until(landed, 30, "the job fed to the named database to land")
            assert await there.fetchval("SELECT count(*) FROM harvester.workers") == 1
        finally:
            await there.close()
    finally:
        await daemon.stop()
    assert await pool.fetchval("SELECT count(*) FROM harvester.workers") == 0


async def test_a_missing_database_is_named_and_not_created(cli: Any, pool: asyncpg.Pool,
                                                           db_url: str) -> None:
    missing = f"harvester_missing_{uuid.uuid4().hex[:8]}"
    result = await cli("status", "--database", missing)
    assert result.status == 2
    assert result.err.startswith(f'harvester: HARVESTER_DATABASE_URL: database "{missing}" on ')
    assert result.err.endswith(
        " does not exist (InvalidCatalogNameError): create it (CREATE DATABASE), then run "
        f"`harvester migrate --database {missing}`\n")
    exists = await pool.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", missing)
    assert exists == 0


async def test_a_schema_behind_this_harvester_names_both_versions(cli: Any,
                                                                  pool: asyncpg.Pool) -> None:
    await pool.execute("DELETE FROM harvester.schema_migrations WHERE version > 1")
    result = await cli("status")
    assert result.status == 2
    assert result.err.endswith(f" is at schema version 1, this harvester needs "
                               f"{latest_version()}: run `harvester migrate`\n"), result.err


def test_the_embedded_server_is_never_created_by_a_reading_command(tmp_path: Path,
                                                                   open_tmp_path: Path) -> None:
    """From a fresh machine: reading commands say what to run and leave nothing behind;
    `migrate --database harvester_demo` sets up what `harvester demo` would, and every
    command the demo prints afterwards then runs without an error."""
    data_dir = open_tmp_path / "data"
    env = subprocess_env(tmp_path, HARVESTER_DATA_DIR=str(data_dir))
    nothing = harvester("status", env=env)
    assert nothing.returncode == 2
    # The hints repeat the data directory: it is not the default one.
    assert nothing.stderr == (f"harvester: there is no embedded PostgreSQL in {data_dir}/pgdata "
                              f"yet: run `harvester migrate --data-dir {data_dir}` (or "
                              "`harvester demo`), or set HARVESTER_DATABASE_URL\n")
    assert not data_dir.exists()

    assert harvester("migrate", "--database", DEMO_DATABASE, env=env).returncode == 0
    default = harvester("stuck", env=env)
    assert default.returncode == 2
    assert default.stderr == (f'harvester: database "harvester" on the embedded PostgreSQL in '
                              f"{data_dir}/pgdata does not exist: `harvester migrate --data-dir "
                              f"{data_dir}` creates it\n")
    psql = harvester("psql", "--", "-c", "select 1", env=env)
    assert psql.returncode == 2
    assert psql.stderr == (f'harvester: no database "harvester" on the embedded PostgreSQL in '
                           f"{data_dir}/pgdata (it has: {DEMO_DATABASE}); `harvester migrate "
                           f"--data-dir {data_dir}` creates it\n")

    for command, _ in next_commands(data_dir):
        args = shlex.split(command)[1:]
        if args[0] == "psql":
            args += ["--", "-XAtc", "SELECT count(*) FROM harvester.jobs"]
        done = harvester(*args, env=env)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stderr == "", command
        if args[0] == "psql":
            assert done.stdout == "0\n"


# ---------------------------------------------------------------- jobs


async def test_jobs_lists_a_page_and_prints_the_command_for_the_next(cli: Any,
                                                                     pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)
    first = await cli("jobs", "--state", "failed", "--limit", "1")
    assert first.status == 0, first.err
    rows = table_rows(first.out)
    assert rows[0] == ["job_id", "failed (UTC)", "polls", "last status", "upstream status",
                       "reason", "last error"]
    assert len(rows) == 2
    more = first.out.splitlines()[-1]
    assert more.startswith("more: harvester jobs --state failed --limit 1 --after ")
    second = await cli(*shlex.split(more.removeprefix("more: harvester ")))
    assert second.status == 0, second.err
    assert "more:" not in second.out
    shown = {table_rows(first.out)[1][0], table_rows(second.out)[1][0]}
    assert shown == {str(f.failed), str(f.failed_expired)}

    by_reason = (await cli("jobs", "--reason", "forbidden", "--json")).json()
    assert [(j["job_id"], j["failed_reason"]) for j in by_reason["jobs"]] == \
        [(str(f.failed), "forbidden")]
    assert by_reason["next"] is None
    pending = await cli("jobs", "--state", "pending")
    assert [r[0] for r in table_rows(pending.out)[1:]] == [str(f.pending), str(f.due_later)]
    assert [r[4] for r in table_rows(pending.out)[1:]] == ["extraction_done", "not asked yet"]
    assert (await cli("jobs", "--state", "landed", "--after", "x")).err == \
        "harvester: --after: not a cursor from a previous page\n"
    assert (await cli("jobs", "--state", "landed", "--limit", "5000")).err == \
        "harvester: --limit: 1 to 1000 jobs per page (got 5000)\n"
    assert (await cli("jobs")).err == "harvester: --state: one of pending, stuck, landed, failed\n"


# ---------------------------------------------------------------- roles


@pytest.fixture
async def feeder_url(db_url: str, repo_root: Path) -> AsyncIterator[str]:
    """A login in deploy/feeder-role.sql's harvester_feeder role, and its DSN."""
    name = f"feeder_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(db_url)
    try:
        script = (repo_root / "deploy" / "feeder-role.sql").read_text()
        await admin.execute(script)
        await admin.execute(script)  # idempotent
        await admin.execute(f"CREATE ROLE {name} LOGIN IN ROLE harvester_feeder")
        parts = urlsplit(db_url)
        yield parts._replace(netloc=f"{name}@{parts.netloc.rpartition('@')[2]}").geturl()
    finally:
        await admin.execute(f"DROP OWNED BY {name}")
        await admin.execute(f"DROP ROLE {name}")
        await admin.close()


async def test_every_feed_path_works_with_only_usage_and_insert(
    cli: Any, feeder_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_sql, by_cli, by_http = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    feeder = await asyncpg.connect(feeder_url)
    try:
        sql = "INSERT INTO harvester.jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING"
        await feeder.execute(sql, by_sql)
        await feeder.execute(sql, by_sql)  # feeding again is harmless
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # why the README says so
            await feeder.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1) "
                                 "ON CONFLICT (job_id) DO NOTHING", by_sql)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await feeder.fetch("SELECT * FROM harvester.jobs")
    finally:
        await feeder.close()

    monkeypatch.setenv("HARVESTER_DATABASE_URL", feeder_url)
    fed = await cli("enqueue", str(by_cli), str(by_sql))
    assert fed.status == 0, fed.err
    assert fed.out == "new: 1, already known: 1, invalid: 0\n"
    reading = await cli("status")  # a feeder's DSN for a reader's command: the DSN's fault
    assert reading.status == 2
    assert reading.err == ("harvester: HARVESTER_DATABASE_URL: the role lacks a privilege "
                           "(42501 InsufficientPrivilegeError: permission denied for table "
                           "schema_migrations)\n")

    # HTTP: the daemon inserts with its own connection; here that connection is a login
    # with no more than the feeder's rights, to show POST /v1/jobs needs no more either.
    http_pool = await create_pool(feeder_url, min_size=1, max_size=1)
    try:
        settings = load_settings({"admin_token": TOKEN}, env_file=None)
        admin = Admin(settings, Store(http_pool), Metrics(), ready)
        async with TestClient(TestServer(admin.app())) as client, client.post(
                "/v1/jobs", json={"jobIds": [str(by_http), str(by_cli)]},
                headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"new": 1, "known": 1, "invalid": 0,
                                         "duplicates_in_request": 0}
    finally:
        await http_pool.close()
    rows = await pool.fetch("SELECT job_id, state FROM harvester.jobs ORDER BY job_id")
    assert sorted((r["job_id"], r["state"]) for r in rows) == sorted(
        (j, "pending") for j in (by_sql, by_cli, by_http))


# ---------------------------------------------------------------- psql


def test_psql_gets_the_dsn_as_libpq_reads_it_with_the_password_apart() -> None:
    uri, env = libpq_connection(
        "postgres://app%20user%2B1:p%40ss%3Aw%2Frd%2520@db.internal:6432,db2:6432/mirror"
        "?sslmode=verify-full&sslrootcert=/etc/ssl/my%20ca.pem&sslcert=/c.pem&sslkey=/k.pem"
        "&application_name=ops&search_path=harvester,public&database=other&password=ignored")
    assert uri == ("postgresql://app%20user%2B1@db.internal:6432,db2:6432/mirror"
                   "?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Fmy%20ca.pem"
                   "&sslcert=%2Fc.pem&sslkey=%2Fk.pem&application_name=ops&dbname=other")
    assert env["PGPASSWORD"] == "ignored"  # a password= parameter wins, as in libpq
    assert env["PGOPTIONS"].endswith("-c search_path=harvester,public")
    only_user = libpq_connection("postgresql://u:s%40cret@h/db")
    assert only_user == ("postgresql://u@h/db", {"PGPASSWORD": "s@cret"})
    socket = libpq_connection("postgresql://postgres:@/db?host=/tmp/pg%20sock")
    assert socket == ("postgresql://postgres@/db?host=%2Ftmp%2Fpg%20sock", {})


STUB_PSQL = """#!{python}
import json, os, stat, sys
service = os.environ.get("PGSERVICEFILE")
saw = {{"argv": sys.argv[1:], "password": os.environ.get("PGPASSWORD"),
        "service": os.environ.get("PGSERVICE"), "service_file": service}}
if service:
    with open(service) as handle:
        saw["service_text"] = handle.read()
    saw["mode"] = stat.S_IMODE(os.stat(service).st_mode)
    saw["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(service)).st_mode)
with open({record!r}, "w") as out:
    json.dump(saw, out)
"""


def test_psql_gets_every_secret_and_its_command_line_none(tmp_path: Path) -> None:
    """README "Commands": the password in PGPASSWORD, sslpassword (libpq reads it from no
    environment variable) in a service file only this user can read, removed when psql
    exits; neither on psql's command line, which any local user sees in ``ps``. A stub
    psql first on PATH records what it was given and where."""
    record = tmp_path / "psql-saw.json"
    stub = tmp_path / "bin" / "psql"
    stub.parent.mkdir()
    stub.write_text(STUB_PSQL.format(python=sys.executable, record=str(record)))
    stub.chmod(0o755)
    dsn = ("postgresql://op:pw%20secret%231@127.0.0.1:1/mirror?sslmode=verify-full"
           "&sslkey=/k.pem&sslpassword=key%20secret%232&application_name=ops")
    env = subprocess_env(tmp_path, HARVESTER_DATABASE_URL=dsn)
    env["PATH"] = f"{stub.parent}{os.pathsep}{env['PATH']}"
    done = harvester("psql", "--", "-XAtc", "SELECT 1", env=env)
    assert done.returncode == 0, done.stderr
    saw = json.loads(record.read_text())
    assert not [arg for arg in saw["argv"] if "secret" in unquote(arg)], saw["argv"]
    assert saw["argv"] == ["--dbname", "postgresql://op@127.0.0.1:1/mirror?sslmode=verify-full"
                           "&sslkey=%2Fk.pem&application_name=ops", "-XAtc", "SELECT 1"]
    assert saw["password"] == "pw secret#1"
    assert (saw["service"], saw["service_text"]) == ("harvester",
                                                     "[harvester]\nsslpassword=key secret#2\n")
    assert (saw["mode"], saw["dir_mode"]) == (0o600, 0o700)
    assert not Path(saw["service_file"]).parent.exists()  # removed once psql exited
    assert "secret" not in done.stdout + done.stderr


@pytest.mark.skipif(not any(Path(d, "psql").exists() for d in
                            os.environ.get("PATH", "").split(os.pathsep)),
                    reason="no psql on PATH")
def test_libpq_takes_what_the_service_file_holds_beside_the_uri(db_url: str,
                                                                 tmp_path: Path) -> None:
    """The real libpq reads the temporary service file for what the URI leaves out
    (application_name stands in for sslpassword, which only a TLS client key with a
    passphrase would show), and refuses what a service file cannot carry."""
    conninfo, env = libpq_connection(db_url)
    with service_file({"application_name": "from the service file"}) as service:
        done = subprocess.run(
            ["psql", "--dbname", conninfo, "-XAtc", "SELECT current_setting('application_name')"],
            env={**subprocess_env(tmp_path), **env, **service}, capture_output=True, text=True,
            timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "from the service file"), done.stderr
    assert not Path(service["PGSERVICEFILE"]).exists()
    for bad in ("two\nlines", "trailing ", "\x07"):
        with pytest.raises(UserError, match=r"^HARVESTER_DATABASE_URL: sslpassword cannot be"), \
                service_file({"sslpassword": bad}):
            pass
    assert libpq_file_secrets("postgresql://u@h/db?sslpassword=a%26b&sslmode=require") == {
        "sslpassword": "a&b"}


@pytest.fixture
async def awkward_login(db_url: str) -> AsyncIterator[tuple[str, str]]:
    """A login whose name and password need percent-encoding in a URL."""
    name, password = f"op psql+{uuid.uuid4().hex[:6]}@x", "p@ss:w/rd%20 é"
    admin = await asyncpg.connect(db_url)
    quoted = await admin.fetchval("SELECT quote_ident($1)", name)
    try:
        await admin.execute(f"CREATE ROLE {quoted} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT USAGE ON SCHEMA harvester TO {quoted}")
        yield name, password
    finally:
        await admin.execute(f"DROP OWNED BY {quoted}")
        await admin.execute(f"DROP ROLE {quoted}")
        await admin.close()


@pytest.mark.skipif(not any(Path(d, "psql").exists() for d in
                            os.environ.get("PATH", "").split(os.pathsep)),
                    reason="no psql on PATH")
async def test_psql_connects_where_the_daemon_does(db_url: str, tmp_path: Path,
                                                   awkward_login: tuple[str, str]) -> None:
    name, password = awkward_login
    parts = urlsplit(db_url)
    hostport = parts.netloc.rpartition("@")[2]
    dsn = parts._replace(
        netloc=f"{quote(name, safe='')}:{quote(password, safe='')}@{hostport}",
        query="&".join(filter(None, [parts.query, "application_name=from-dsn",
                                     "search_path=harvester"]))).geturl()
    # What the daemon would do with this DSN, then what psql does with it.
    conn = await asyncpg.connect(dsn)
    try:
        expected = await conn.fetchval("SELECT current_user || '|' || "
                                       "current_setting('search_path')")
    finally:
        await conn.close()
    assert expected == f"{name}|harvester"
    query = ("SELECT current_user, current_setting('application_name'), "
             "current_setting('search_path'), coalesce((SELECT ssl::text FROM pg_stat_ssl "
             "WHERE pid = pg_backend_pid()), 'f')")
    env = subprocess_env(tmp_path, HARVESTER_DATABASE_URL=dsn)
    done = await asyncio.to_thread(harvester, "psql", "--", "-XAtc", query, env=env)
    assert done.returncode == 0, done.stderr
    user, app, path, _ = done.stdout.strip().split("|")
    assert (user, app, path) == (name, "from-dsn", "harvester")

    # TLS parameters reach libpq. Over TCP, sslmode=require either gets TLS or refuses a
    # server without it; over a Unix socket (the embedded server) libpq ignores sslmode.
    env["HARVESTER_DATABASE_URL"] = with_database(dsn, database_name(db_url)) + \
        "&sslmode=require"
    tls = await asyncio.to_thread(harvester, "psql", "--", "-XAtc", query, env=env)
    if parts.hostname is None:
        assert (tls.returncode, tls.stdout.strip().rpartition("|")[2]) == (0, "false")
    elif tls.returncode == 0:
        assert tls.stdout.strip().rpartition("|")[2] == "true"
    else:
        assert "server does not support SSL, but SSL was required" in tls.stderr


# ---------------------------------------------------------------- interrupted


async def test_an_interrupted_enqueue_says_nothing_was_enqueued(db_url: str, tmp_path: Path,
                                                                pool: asyncpg.Pool) -> None:
    env = subprocess_env(tmp_path, HARVESTER_DATABASE_URL=db_url)
    proc = subprocess.Popen([sys.executable, "-m", "harvester", "enqueue", "-"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write("".join(f"{uuid.uuid4()}\n" for _ in range(3)).encode())
        proc.stdin.flush()
        # The producer goes quiet; the command waits for more input inside its one
        # transaction (its connection is "idle in transaction").
        deadline = time.monotonic() + 30
        while not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'harvester' AND state = 'idle in transaction'"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "enqueue never started reading"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # one Ctrl-C is enough
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert (out, err) == (b"", b"harvester: interrupted; nothing enqueued\n")
    assert await pool.fetchval("SELECT count(*) FROM harvester.jobs") == 0
