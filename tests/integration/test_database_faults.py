"""The fault table on a real PostgreSQL (README "The database's faults"): each fault the
store can meet, induced where it is confined to the test's own database or role, comes
out of the store as the error the table names; a read-only node's sessions are left
for fresh ones; a missing privilege is named at start; an unresolvable host is named
with its variable, by a resolver stubbed in-process (no name leaves this machine)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from harvester.daemon import connect_with_retry
from harvester.errors import (
    DatabaseConfigError,
    DatabaseHostUnknown,
    StoreTimedOut,
    StoreUnavailable,
)
from harvester.privileges import check_privileges
from harvester.store import create_pool
from tests.helpers import DAEMON_GRANTS, enqueue, login_role
from tests.integration.conftest import Cli
from tests.stores import Store


@contextlib.asynccontextmanager
async def database_setting(db_url: str, setting: str) -> AsyncIterator[str]:
    """``ALTER DATABASE <the test's> SET …`` for new sessions; reset afterwards."""
    admin = await asyncpg.connect(db_url)
    name = await admin.fetchval("SELECT current_database()")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET {setting}')
        yield name
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET {setting.split(maxsplit=1)[0]}')
        await admin.close()


async def test_a_read_only_node_is_waited_out_and_its_sessions_left(
        db_url: str, pool: asyncpg.Pool) -> None:
    """After a failover the old primary's sessions stay read-only: the store leaves them
    at the first 25006, so the next attempt reaches whatever the DSN now points to."""
    store = Store(pool)
    await enqueue(pool, [uuid.uuid4()])
    async with database_setting(db_url, "default_transaction_read_only = on"):
        await pool.expire_connections()  # the pool's next sessions open read-only
        with pytest.raises(StoreUnavailable) as caught:
            await store.claim(10, 60, "w")
        assert caught.value.code == "25006"
        assert "a read-only node" in str(caught.value)
    # Writable again for new sessions; the read-only ones were left by the store itself.
    assert len(await store.claim(10, 60, "w")) == 1


async def test_without_leaving_them_the_read_only_sessions_would_fail_for_good(
        db_url: str) -> None:
    """Why the store leaves them: a session opened read-only stays so."""
    async with database_setting(db_url, "default_transaction_read_only = on"):
        conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("UPDATE harvester.jobs SET polls = polls")
    finally:
        await conn.close()


@pytest.mark.parametrize(("setting", "code"), [
    ("statement_timeout = '200ms'", "57014"),
    ("lock_timeout = '200ms'", "55P03"),
])
async def test_a_statement_cut_by_a_timeout_while_an_operator_locks_the_queue(
        db_url: str, setting: str, code: str) -> None:
    operator = await asyncpg.connect(db_url)  # before the setting: not subject to it
    try:
        async with database_setting(db_url, setting):
            pool = await create_pool(db_url, min_size=1, max_size=2)
            try:
                async with operator.transaction():
                    await operator.execute("LOCK TABLE harvester.jobs IN ACCESS EXCLUSIVE MODE")
                    with pytest.raises(StoreTimedOut) as caught:
                        await Store(pool).claim(10, 60, "w")
                assert caught.value.code == code
                assert await Store(pool).claim(10, 60, "w") == []  # passes with the lock
            finally:
                await pool.close()
    finally:
        await operator.close()


async def test_too_many_connections_at_connect_is_waited_out_not_a_bad_dsn(db_url: str) -> None:
    """A database's connection limit (superusers are exempt: a role of the test's own)."""
    async with login_role(db_url, *DAEMON_GRANTS) as (_role, dsn):
        admin = await asyncpg.connect(db_url)
        name = await admin.fetchval("SELECT current_database()")
        try:
            await admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT 0')
            with pytest.raises(StoreUnavailable) as caught:
                await create_pool(dsn, min_size=1, max_size=1)
            assert caught.value.code == "53300"
            assert not isinstance(caught.value, DatabaseConfigError)
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT -1')
            await admin.close()


async def test_a_privilege_revoked_while_running_is_configuration_met_late(db_url: str) -> None:
    async with login_role(db_url, *DAEMON_GRANTS) as (role, dsn):
        pool = await create_pool(dsn, min_size=1, max_size=2)
        admin = await asyncpg.connect(db_url)
        try:
            await check_privileges(pool)  # all there at start
            await admin.execute(f"REVOKE UPDATE ON harvester.jobs FROM {role}")
            with pytest.raises(DatabaseConfigError) as caught:
                await Store(pool).claim(10, 60, "w")
            assert caught.value.code == "42501"
            assert str(caught.value).startswith("HARVESTER_DATABASE_URL: the role lacks a "
                                                "privilege (42501 ")
            await admin.execute(f"GRANT UPDATE ON harvester.jobs TO {role}")
            assert await Store(pool).claim(10, 60, "w") == []
        finally:
            await admin.close()
            await pool.close()


async def refusal_at_start(db_url: str, *grants: str) -> tuple[str, str | None]:
    """What ``check_privileges`` says of a role of the test's own granted ``grants``:
    (the role, its refusal or None)."""
    async with login_role(db_url, *grants) as (role, dsn):
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await check_privileges(pool)
        except DatabaseConfigError as exc:
            return role, str(exc)
        finally:
            await pool.close()
    return role, None


async def test_at_start_every_missing_privilege_is_named(db_url: str) -> None:
    role, refused = await refusal_at_start(
        db_url, *DAEMON_GRANTS, "REVOKE UPDATE ON harvester.jobs FROM {role}",
        "REVOKE INSERT ON harvester.extraction_results FROM {role}")
    assert refused == (
        f'HARVESTER_DATABASE_URL: role "{role}" lacks UPDATE on harvester.jobs, INSERT on '
        "harvester.extraction_results: grant them, or use a role that has them (README "
        "\"The database's faults\")")


async def test_at_start_a_role_without_the_schema_is_told_so(db_url: str) -> None:
    role, refused = await refusal_at_start(db_url)
    assert refused == (f'HARVESTER_DATABASE_URL: role "{role}" lacks USAGE on schema harvester: '
                       "grant it, or use a role that has them (README \"The database's "
                       "faults\")")


async def test_column_grants_count_as_the_privilege(db_url: str) -> None:
    _role, refused = await refusal_at_start(
        db_url, *DAEMON_GRANTS, "REVOKE UPDATE ON harvester.workers FROM {role}",
        "GRANT UPDATE (heartbeat_at) ON harvester.workers TO {role}")
    assert refused is None


# ---------------------------------------------------------------- a host that does not resolve

UNRESOLVABLE = "db.internal"


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``socket.getaddrinfo`` stubbed: ``db.internal`` does not resolve, addresses pass
    through, any other name fails the test before it could leave the machine."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def stub(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        asked.append(str(name))
        if name == UNRESOLVABLE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            raise AssertionError(f"a lookup of {name!r} would leave the machine") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stub)
    return asked


DSN = f"postgresql://harvester:sekret-pw-4711@{UNRESOLVABLE}:5432/harvester?connect_timeout=2"


async def test_an_unresolvable_host_names_the_host_and_the_variable(resolver: list[str]) -> None:
    with pytest.raises(DatabaseHostUnknown) as caught:
        await create_pool(DSN, min_size=1, max_size=1)
    assert str(caught.value) == (f'HARVESTER_DATABASE_URL: cannot resolve host "{UNRESOLVABLE}" '
                                 "(Name or service not known)")
    assert UNRESOLVABLE in resolver


async def test_run_keeps_trying_an_unresolvable_host_until_stopped(resolver: list[str]) -> None:
    """DNS comes back (a pod's resolver during a rollout): ``run`` waits, saying why."""
    stop = asyncio.Event()
    with capture_logs() as logs:
        attempt = asyncio.create_task(connect_with_retry(DSN, stop, max_size=2))
        while len([e for e in logs if e["event"] == "store.connect_failed"]) < 2:
            assert not attempt.done(), attempt
            await asyncio.sleep(0.05)
        stop.set()
        assert await asyncio.wait_for(attempt, 5) is None
    failed = [e for e in logs if e["event"] == "store.connect_failed"]
    assert failed[0]["error"] == (f'HARVESTER_DATABASE_URL: cannot resolve host "{UNRESOLVABLE}" '
                                  "(Name or service not known)")
    assert "sekret" not in repr(logs)


@pytest.mark.parametrize("command", [["status"], ["enqueue", str(uuid.uuid4())], ["migrate"]])
async def test_a_command_stops_with_one_line_for_an_unresolvable_host(
        cli: Cli, resolver: list[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("HARVESTER_DATABASE_URL", DSN)
    result = await cli(*command)
    assert result.status == 2
    assert result.err_lines[-1] == (f'harvester: HARVESTER_DATABASE_URL: cannot resolve host '
                                    f'"{UNRESOLVABLE}" (Name or service not known)')
    assert "Traceback" not in result.err and "sekret" not in result.err
