"""Test helpers: the simulated upstream in-process, the daemon as a real subprocess.

The daemon under test is exactly what production runs (``python -m harvester run``),
talking to a real PostgreSQL and to the simulator over loopback. Its JSON log lines are
written to a file the test can read and search by event name.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp import web

from harvester.tools.processes import free_port
from harvester.tools.simulator import SIM_TOKEN, Mix, Simulator, serve


class SimulatedUpstream:
    """The simulator served from the test's own event loop."""

    def __init__(self, mix: Mix | None = None, token: str | None = SIM_TOKEN) -> None:
        self.simulator = Simulator(mix or Mix(), token=token)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def state(self) -> Any:
        return self.simulator.state

    async def start(self) -> SimulatedUpstream:
        self._runner, port = await serve(self.simulator, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def script(self, jobs: Mapping[uuid.UUID, Iterable[str]],
               batch_status: Mapping[uuid.UUID, str | None] | None = None) -> None:
        document: dict[str, Any] = {"jobs": {str(k): list(v) for k, v in jobs.items()}}
        statuses = {str(k): v for k, v in (batch_status or {}).items()}
        document["batch_status"] = statuses
        self.simulator.apply_script(document)

    def requests_for(self, job_id: uuid.UUID) -> list[Any]:
        return [s for s in self.state.log if s.job_id == str(job_id)]


DEFAULT_DAEMON_ENV = {
    "HARVESTER_LOG_FORMAT": "json",
    "HARVESTER_LOG_LEVEL": "info",
    "HARVESTER_REQUEST_TIMEOUT": "2",
    "HARVESTER_LEASE_SECONDS": "6",
    "HARVESTER_SHUTDOWN_GRACE": "5",
    "HARVESTER_AUTH_PROBE_INTERVAL": "0.5",
    "HARVESTER_CONCURRENCY": "32",
}


class Daemon:
    """``harvester run`` as a subprocess with its log in a file."""

    def __init__(self, db_url: str, api_url: str, log_dir: Path, *, name: str = "daemon",
                 token: str | None = SIM_TOKEN, env: Mapping[str, str] | None = None,
                 args: Iterable[str] = (), preexec_fn: Callable[[], None] | None = None) -> None:
        self.admin_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            **DEFAULT_DAEMON_ENV,
            "HARVESTER_DATABASE_URL": db_url,
            "HARVESTER_API_BASE_URL": api_url,
            "HARVESTER_ADMIN_PORT": str(self.admin_port),
            **({"HARVESTER_API_TOKEN": token} if token else {}),
            **(env or {}),
        }
        self.args = list(args)
        self.preexec_fn = preexec_fn  # e.g. lower a resource limit in the child
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> Daemon:
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harvester", "run", *self.args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=self._log_handle,
            preexec_fn=self.preexec_fn)  # noqa: PLW1509 - only sets a resource limit
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                found.append({"event": "<not json>", "raw": line})
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def raw_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_for_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if found:
                return found[-1]
            self._fail_if_exited()
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {name!r} event within {timeout}s; log:\n{self.raw_log()[-4000:]}")

    def _fail_if_exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}; log:\n"
                                 f"{self.raw_log()[-4000:]}")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.wait_for_event("daemon.started", timeout)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"daemon did not exit within {timeout}s; log:\n"
                                     f"{self.raw_log()[-4000:]}")
            await asyncio.sleep(0.05)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return int(self.proc.returncode)

    async def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return await self.wait(timeout) if self.proc is not None else 0
        self.send(signal.SIGTERM)
        return await self.wait(timeout)

    def peak_rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.get(
                self.admin_url + path, headers=headers) as resp:
            body = await resp.read()
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, body.decode()


async def enqueue(pool: asyncpg.Pool, ids: Iterable[uuid.UUID]) -> None:
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
        list(ids))


async def state_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM harvester.jobs GROUP BY state")
    counts = {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
    counts.update({r["state"]: r["n"] for r in rows})
    return counts


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_for_states(pool: asyncpg.Pool, timeout: float, **expected: int) -> dict[str, int]:
    last: dict[str, int] = {}

    async def check() -> bool:
        nonlocal last
        last = await state_counts(pool)
        return all(last.get(k, 0) == v for k, v in expected.items())

    try:
        await wait_until(check, timeout, f"states {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last counts {last}") from None
    return last


@asynccontextmanager
async def login_role(db_url: str, *grants: str) -> AsyncIterator[tuple[str, str]]:
    """A login role of the test's own, granted ``grants`` (statements with ``{role}``)
    in the test's database, and its DSN; dropped afterwards. Roles are the server's, so
    the name is unique; privileges stay confined to the test's database."""
    role = f"harvester_test_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        for grant in grants:
            await admin.execute(grant.format(role=role))
        parts = urlsplit(db_url)
        host = parts.netloc.rpartition("@")[2]
        yield role, parts._replace(netloc=f"{role}:{password}@{host}").geturl()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


DAEMON_GRANTS = (
    "GRANT USAGE ON SCHEMA harvester TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA harvester TO {role}",
)
"""What a daemon started with ``--no-migrate`` needs (README "The database's faults")."""
