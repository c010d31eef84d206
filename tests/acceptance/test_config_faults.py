"""Configuration mistakes fail fast, in one line, as a user meets them: through the
``harvester`` command in a real process (README "Configuration", "Security").

- A DSN that can never work (``sslmode=bogus``, a CA file that is not there or holds no
  certificate, a database that does not exist, a parameter the server does not know)
  is exit status 2 and one line naming ``HARVESTER_DATABASE_URL``, for every command
  that opens the database, never a retry loop, never the password.
- A database that accepts connections and never answers is named (host:port and the
  wait), ``connect_timeout`` in the DSN is honoured, and SIGTERM is acted on at once in
  every phase of ``run``: connecting, waiting for another replica's migration lock.
  ``daemon.exit`` is logged whatever the way out, except a mistake of the user's: then
  the one line is all ``run`` writes (README "Commands").
- An admin port in use or an admin host that does not resolve is one line, exit 2.

The database that never answers is a listener on loopback in the test's own process;
nothing here sends a packet off this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest

from harvester.migrations import MIGRATION_LOCK_KEY
from harvester.tools.processes import free_port
from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.conftest import with_database
from tests.helpers import Daemon, enqueue, wait_for_states

PASSWORD = "pw-Xq7mZ2-never-shown"
SIGTERM_BOUND = 3.0  # the requirement: acted on within a second or two


def with_query(dsn: str, query: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}{query}"


def with_password(dsn: str) -> str:
    """The same server, with a password in the DSN (trust auth ignores it) so that the
    tests can check it is never shown."""
    scheme, _, rest = dsn.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if not at:
        userinfo, hostpart = "postgres", rest
    user = userinfo.split(":")[0] or "postgres"
    return f"{scheme}://{user}:{PASSWORD}@{hostpart}"


def harvester(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60.0
              ) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
            "HARVESTER_LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "harvester", *args], env={**base, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def plain_lines(stderr: str) -> list[str]:
    """stderr without the JSON log lines: what a person reads as the error."""
    lines = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


def log_events(stderr: str) -> list[dict[str, object]]:
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


COMMANDS: dict[str, Sequence[str]] = {
    "run": ["run"],
    "migrate": ["migrate"],
    "status": ["status"],
    "enqueue": ["enqueue", str(uuid.uuid4())],
    "stuck": ["stuck"],
    "requeue": ["requeue", "--state", "failed"],
}


def run_env(dsn: str) -> dict[str, str]:
    return {"HARVESTER_DATABASE_URL": dsn, "HARVESTER_API_BASE_URL": "http://127.0.0.1:9",
            "HARVESTER_ADMIN_PORT": str(free_port())}


def assert_one_line_naming_the_dsn(proc: subprocess.CompletedProcess[str], *expected: str
                                   ) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
    lines = plain_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("harvester: HARVESTER_DATABASE_URL: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert proc.returncode == 2, proc.stderr
    return lines[0]


# ---------------------------------------------------------------- DSNs that can never work


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_sslmode_is_one_line_for_every_command(db_url: str, tmp_path: Path,
                                                     command: str) -> None:
    """Used to be retried for ever as an outage (ClientConfigurationError)."""
    dsn = with_query(with_password(db_url), f"sslmode=bogus&password={PASSWORD}")
    proc = harvester(*COMMANDS[command], env=run_env(dsn), cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, "sslmode", "verify-full")
    if command == "run":
        # The one line is the whole of stderr: no daemon.exit log event before it.
        assert not [e for e in log_events(proc.stderr) if e["event"] == "daemon.exit"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_ca_file_is_named_for_every_command(db_url: str, tmp_path: Path,
                                                      command: str) -> None:
    """Used to be retried for ever on a FileNotFoundError that named no file."""
    missing = tmp_path / "nonexistent.pem"
    dsn = with_query(with_password(db_url), f"sslmode=verify-full&sslrootcert={missing}")
    proc = harvester(*COMMANDS[command], env=run_env(dsn), cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, f"sslrootcert={missing}", "No such file")


@pytest.mark.parametrize("command", ["run", "status"])
def test_a_ca_file_without_a_certificate_is_named(db_url: str, tmp_path: Path,
                                                  command: str) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("REPLACE_ME\n")
    dsn = with_query(with_password(db_url), f"sslmode=require&sslrootcert={junk}")
    proc = harvester(*COMMANDS[command], env=run_env(dsn), cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, f"sslrootcert={junk}", "no certificate")


@pytest.mark.parametrize("command", ["run", "status"])
def test_what_the_server_refuses_at_connect_is_one_line(db_url: str, tmp_path: Path,
                                                        command: str) -> None:
    """A database that does not exist, a DSN parameter the server does not know: the
    server's refusal is the same on every attempt."""
    missing_db = with_password(with_database(db_url, "no_such_database_x"))
    proc = harvester(*COMMANDS[command], env=run_env(missing_db), cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, "InvalidCatalogNameError", "no_such_database_x")
    typo = with_query(with_password(db_url), "applicaton_name=x")
    proc = harvester(*COMMANDS[command], env=run_env(typo), cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, "applicaton_name")


# ---------------------------------------------------------------- a database that never answers


class SilentServer:
    """Accepts TCP connections on loopback and never says a word."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[None]] = []

    async def start(self) -> SilentServer:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.append(task)
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass  # the client reset the connection: as good as closed

    def dsn(self, query: str = "") -> str:
        dsn = f"postgresql://harvester:{PASSWORD}@127.0.0.1:{self.port}/harvester"
        return with_query(dsn, query) if query else dsn

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.close()
        # Let each handler see its end of file and finish, rather than be cancelled
        # with the event loop.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self.server is not None:
            await self.server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    server = await SilentServer().start()
    try:
        yield server
    finally:
        await server.stop()


async def test_status_names_a_silent_database_and_honours_connect_timeout(
        silent: SilentServer, tmp_path: Path) -> None:
    """Used to be silent for 60 s, then `TimeoutError: TimeoutError`."""
    started = time.monotonic()
    proc = await asyncio.to_thread(harvester, "status", cwd=tmp_path, timeout=30, env={
        "HARVESTER_DATABASE_URL": silent.dsn("connect_timeout=1")})
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert silent.accepted >= 1
    assert plain_lines(proc.stderr) == [
        f"harvester: cannot reach the database: database unavailable: no answer from "
        f"127.0.0.1:{silent.port} within 1 s (connect_timeout in HARVESTER_DATABASE_URL; "
        "default 10 s)"]
    assert PASSWORD not in proc.stderr
    assert took < 20, "connect_timeout=1 must not wait asyncpg's 60 s"


async def test_run_retries_a_silent_database_and_stops_at_once_on_sigterm(
        silent: SilentServer, tmp_path: Path) -> None:
    daemon = Daemon(silent.dsn("connect_timeout=1"), "http://127.0.0.1:9", tmp_path).start()
    try:
        failed = await daemon.wait_for_event("store.connect_failed", 15)
        assert f"no answer from 127.0.0.1:{silent.port} within 1 s" in str(failed["error"])
        assert (await daemon.get("/healthz"))[0] == 200
        sent = time.monotonic()
        assert await daemon.stop(timeout=10) == 0
        assert time.monotonic() - sent < SIGTERM_BOUND
    finally:
        await daemon.stop()
    assert [e["reason"] for e in daemon.events("daemon.exit")] == ["signal"]
    assert PASSWORD not in daemon.raw_log()


async def test_sigterm_during_a_connect_attempt_is_acted_on_at_once(
        silent: SilentServer, tmp_path: Path) -> None:
    """The default connect timeout is 10 s; SIGTERM does not wait for it (it took 57 s
    with asyncpg's 60 s default, past the Deployment's 45 s grace)."""
    daemon = Daemon(silent.dsn(), "http://127.0.0.1:9", tmp_path).start()
    try:
        connecting = await daemon.wait_for_event("store.connecting", 15)
        assert connecting["where"] == f"127.0.0.1:{silent.port}"
        assert connecting["connect_timeout"] == 10.0
        await asyncio.sleep(0.5)  # inside the attempt, which would last 10 s
        sent = time.monotonic()
        assert await daemon.stop(timeout=15) == 0
        assert time.monotonic() - sent < SIGTERM_BOUND
    finally:
        await daemon.stop()
    assert not daemon.events("store.connect_failed")
    assert [e["reason"] for e in daemon.events("daemon.exit")] == ["signal"]


async def test_sigterm_while_another_replica_holds_the_migration_lock(
        db_url: str, tmp_path: Path) -> None:
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        daemon = Daemon(db_url, "http://127.0.0.1:9", tmp_path).start()
        try:
            await daemon.wait_for_event("migrate.waiting_for_lock", 30)
            await asyncio.sleep(0.5)
            sent = time.monotonic()
            assert await daemon.stop(timeout=15) == 0
            assert time.monotonic() - sent < SIGTERM_BOUND
        finally:
            await daemon.stop()
        # The daemon gave up its wait and closed its connections; the lock stayed ours.
        assert await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'harvester' "
            "AND datname = current_database()") == 0
        assert await holder.fetchval("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await holder.close()
    assert [e["reason"] for e in daemon.events("daemon.exit")] == ["signal"]
    assert not daemon.events("daemon.started")


async def test_a_dsn_with_connect_timeout_works_end_to_end(
        db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet) -> None:
    """connect_timeout is the client's: asyncpg used to send it to the server, which
    refused the connection ("unrecognized configuration parameter")."""
    sim = await simulators(Mix())
    fleet = fleets(with_query(db_url, "connect_timeout=5"), sim.url)
    daemon = fleet.spawn()
    await daemon.wait_ready()
    await daemon.wait_for_event("listen.started", 15)
    ids = [uuid.uuid4() for _ in range(20)]
    await enqueue(pool, ids)
    await wait_for_states(pool, 30, landed=len(ids))
    assert await fleet.stop(daemon) == 0


# ---------------------------------------------------------------- TLS to PostgreSQL


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (openssl CLI)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join([b"SFATAL\0", b"VFATAL\0", b"C" + sqlstate.encode() + b"\0",
                       b"M" + message.encode() + b"\0"]) + b"\0"
    return b"E" + (len(fields) + 4).to_bytes(4, "big") + fields


class TlsRefusingServer:
    """Speaks just enough of PostgreSQL's protocol over TLS to refuse a login: accepts
    the SSLRequest, handshakes with its certificate, answers the startup message with
    "password authentication failed". Loopback only."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handshakes = 0
        self._handlers: list[asyncio.Task[None]] = []

    async def start(self) -> TlsRefusingServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.append(task)
        try:
            await reader.readexactly(8)  # SSLRequest
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context)
            self.handshakes += 1
            length = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(length - 4)  # the startup message
            writer.write(error_response(
                "28P01", 'password authentication failed for user "harvester"'))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client refused our certificate, or hung up
        finally:
            writer.close()

    def dsn(self, query: str) -> str:
        return f"postgresql://harvester:{PASSWORD}@127.0.0.1:{self.port}/harvester?{query}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self.server is not None:
            await self.server.wait_closed()


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsRefusingServer]:
    cert, key = self_signed(tmp_path, "server")
    server = await TlsRefusingServer(cert, key).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.parametrize("command", ["run", "status"])
async def test_a_server_certificate_the_ca_does_not_vouch_for_is_one_line(
        tls_server: TlsRefusingServer, tmp_path: Path, command: str) -> None:
    other_ca, _ = self_signed(tmp_path, "another-ca")
    dsn = tls_server.dsn(f"sslmode=verify-full&sslrootcert={other_ca}")
    proc = await asyncio.to_thread(harvester, *COMMANDS[command], env=run_env(dsn),
                                   cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, "certificate verify failed")
    assert tls_server.handshakes == 0


@pytest.mark.parametrize("command", ["run", "status"])
async def test_with_the_right_ca_tls_gets_through_and_a_wrong_password_is_one_line(
        tls_server: TlsRefusingServer, tmp_path: Path, command: str) -> None:
    dsn = tls_server.dsn(f"sslmode=verify-full&sslrootcert={tmp_path / 'server.pem'}")
    proc = await asyncio.to_thread(harvester, *COMMANDS[command], env=run_env(dsn),
                                   cwd=tmp_path, timeout=30)
    assert_one_line_naming_the_dsn(proc, "InvalidPasswordError",
                                   'password authentication failed for user "harvester"')
    assert tls_server.handshakes == 1  # not retried: the answer would be the same


# ---------------------------------------------------------------- the admin server cannot listen


def test_an_admin_port_in_use_is_one_line_and_exit_2(db_url: str, tmp_path: Path) -> None:
    """Used to be a 31-line traceback ending in OSError: [Errno 98]."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**run_env(db_url), "HARVESTER_ADMIN_PORT": str(port)}
        proc = harvester("run", env=env, cwd=tmp_path, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # The whole of stderr: no JSON daemon.exit line before the message (issue 23).
    assert proc.stderr.splitlines() == [
        f"harvester: HARVESTER_ADMIN_PORT: 127.0.0.1:{port} is already in use (another "
        "harvester on this machine?); choose a free port"]


def test_an_admin_host_that_does_not_resolve_is_one_line_and_exit_2(
        db_url: str, tmp_path: Path) -> None:
    """Used to be a socket.gaierror traceback.

    The name has spaces: the C library refuses it as a host name without asking DNS,
    so resolution fails here and now. (``no-such-host.invalid`` would be sent to the
    machine's resolver, off loopback.)"""
    env = {**run_env(db_url), "HARVESTER_ADMIN_HOST": "no such host.invalid"}
    proc = harvester("run", env=env, cwd=tmp_path, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = plain_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "harvester: HARVESTER_ADMIN_HOST: cannot resolve 'no such host.invalid'"), lines[0]
