"""What the acceptance tests share: a PostgreSQL they may stop, a fleet of daemons they may
kill, a witness of every landing, and the audit that proves no job was lost or doubled.

The tests themselves read as scenarios (kill -9 here, restart PostgreSQL there); the
bookkeeping that makes their claims checkable lives here. Every process started through
these classes is stopped by its owner's ``close``/``destroy``, which the fixtures in
``conftest.py`` call whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from harvester.embedded import EmbeddedPostgres, ensure_database
from harvester.migrations import migrate
from harvester.tools.simulator import Mix, plan_for, result_row
from tests.helpers import Daemon

# ---------------------------------------------------------------- a PostgreSQL to restart


class Cluster:
    """An embedded PostgreSQL of the test's own, which it may stop and start at will.

    It lives in a ``tempfile.mkdtemp()`` directory opened to the ``pgserver`` user (the
    server runs as that user when the tests run as root), not under pytest's tmp_path:
    pytest makes its root directory private at every session start, which would cut a
    running server off from its own socket and data.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="harvester-acceptance-pg-"))
        self.root.chmod(0o755)
        self.embedded = EmbeddedPostgres(self.root)
        self.pgdata = self.embedded.pgdata
        self._socket_dir: Path | None = None
        self._user = "pgserver" if os.geteuid() == 0 else None

    def start_first(self) -> None:
        """initdb and start, the way the daemon's embedded mode does."""
        self.embedded.start()
        self._socket_dir = Path(self._postmaster_line(4))

    def _postmaster_line(self, index: int) -> str:
        return (self.pgdata / "postmaster.pid").read_text().splitlines()[index].strip()

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def uri(self, database: str = "postgres") -> str:
        assert self._socket_dir is not None
        return f"postgresql://postgres:@/{database}?host={self._socket_dir}"

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415 - optional extra

        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args],
                       user=self._user, check=True, timeout=60, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: every connection is cut and new ones are refused."""
        self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        """``pg_ctl start`` with the options pgserver uses: no TCP, the socket in pgdata."""
        assert self._socket_dir is not None
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}",
                     "-l", str(self.pgdata / "log"), "start")

    def destroy(self) -> None:
        """Stop the server (whoever started it last) and remove its files.

        pgserver's own handle is not used for this: after a restart it no longer knows
        the running postmaster. With the directory gone, its exit hook finds nothing."""
        try:
            if self.running:
                with contextlib.suppress(subprocess.SubprocessError):
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    async def create_migrated_database(self, name: str = "harvester") -> str:
        await ensure_database(self.uri("postgres"), name)
        conn = await asyncpg.connect(self.uri(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return self.uri(name)


# ---------------------------------------------------------------- a slow network


class LaggyLink:
    """A TCP relay in front of PostgreSQL that holds every answer back for ``delay``
    seconds (requests pass at once), as a far-away or overloaded database would.

    With it, a statement has long committed on the server while its result is still on
    the way: the moment a client that gives up on a statement has to get right."""

    def __init__(self, db_url: str, delay: float) -> None:
        parts = urlsplit(db_url)
        query = dict(parse_qsl(parts.query))
        self.delay = delay
        self._socket: str | None = None
        self._address = (parts.hostname or "127.0.0.1", parts.port or 5432)
        if query.get("host", "").startswith("/"):
            self._socket = f"{query['host']}/.s.PGSQL.{parts.port or 5432}"
        self._user = parts.username or "postgres"
        self._path = parts.path
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def start(self) -> LaggyLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"postgresql://{self._user}@127.0.0.1:{port}{self._path}"
        return self

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        if self._socket is not None:
            server_reader, server_writer = await asyncio.open_unix_connection(self._socket)
        else:
            server_reader, server_writer = await asyncio.open_connection(*self._address)
        self._writers += [client_writer, server_writer]
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def requests() -> None:
            while data := await client_reader.read(65536):
                server_writer.write(data)
                await server_writer.drain()
            server_writer.close()

        async def answers_in() -> None:
            while data := await server_reader.read(65536):
                held.put_nowait((time.monotonic() + self.delay, data))
            held.put_nowait((time.monotonic() + self.delay, b""))

        async def answers_out() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    client_writer.close()
                    return
                client_writer.write(data)
                await client_writer.drain()

        pumps = [asyncio.create_task(pump()) for pump in (requests, answers_in, answers_out)]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for writer in (client_writer, server_writer):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None


# ---------------------------------------------------------------- daemons


class Fleet:
    """Daemons started by one test: each ``spawn`` is a new process with its own log.

    ``close()`` kills whatever is still running, so no test leaves a daemon behind. The
    peak RSS of every process is sampled before it is stopped or killed."""

    def __init__(self, db_url: str, api_url: str, log_dir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.db_url = db_url
        self.api_url = api_url
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.daemons: list[Daemon] = []
        self.peak_rss_kib = 0

    def spawn(self, name: str | None = None, env: Mapping[str, str] | None = None,
              **kwargs: Any) -> Daemon:
        name = name or f"daemon-{len(self.daemons) + 1}"
        daemon = Daemon(self.db_url, self.api_url, self.log_dir, name=name,
                        env={**self.env, **(env or {})}, **kwargs)
        self.daemons.append(daemon.start())
        return daemon

    @property
    def running(self) -> list[Daemon]:
        return [d for d in self.daemons if d.proc is not None and d.proc.poll() is None]

    def sample_rss(self, daemon: Daemon) -> int:
        peak = daemon.peak_rss_kib() or 0
        self.peak_rss_kib = max(self.peak_rss_kib, peak)
        return peak

    async def kill(self, daemon: Daemon) -> int:
        self.sample_rss(daemon)
        daemon.kill()
        return await daemon.wait()

    async def stop(self, daemon: Daemon, timeout: float = 30.0) -> int:
        self.sample_rss(daemon)
        return await daemon.stop(timeout)

    async def stop_all(self) -> list[int]:
        return [await self.stop(d) for d in self.running]

    async def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill()
            if daemon.proc is not None:
                await daemon.wait()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for d in self.daemons for e in d.events(name)]

    def raw_logs(self) -> str:
        return "".join(d.raw_log() for d in self.daemons)

    def assert_healthy_logs(self, *, tracebacks_from: Iterable[str] = ()) -> None:
        """No vital task died, nothing but JSON lines on stderr, no traceback (except in
        warnings of the named loggers: asyncpg's pool logs one with each failed attempt
        to refill itself while the database is away)."""
        allowed = set(tracebacks_from)
        for daemon in self.daemons:
            name = daemon.log_path.name
            for event in daemon.events():
                assert event["event"] not in (
                    "daemon.task_failed", "daemon.task_exited", "<not json>"), f"{name}: {event}"
                if "Traceback" in json.dumps(event):
                    assert event.get("logger") in allowed and event.get("level") == "warning", (
                        f"{name} holds a traceback: {event}")


# ---------------------------------------------------------------- witnesses


class LandedWitness:
    """LISTENs on ``harvester_landed`` and counts notifications per job.

    The daemon notifies when a row enters the mirror (or changes), inside the landing
    transaction: a job notified twice was landed twice, one never notified was lost."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._conn: asyncpg.Connection | None = None

    async def start(self, db_url: str) -> LandedWitness:
        self._conn = await asyncpg.connect(db_url)
        await self._conn.add_listener("harvester_landed", self._on_notify)
        return self

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.counts[str(payload)] += 1

    @property
    def duplicates(self) -> dict[str, int]:
        return {job: n for job, n in self.counts.items() if n > 1}

    async def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.counts) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


# ---------------------------------------------------------------- the audit


@dataclass
class Audit:
    """The whole queue and mirror, summed up; ``problems()`` lists every broken promise."""

    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    mirror_rows: int = 0
    mirror_distinct_jobs: int = 0
    landed_without_row: int = 0
    rows_without_landed_job: int = 0
    open_without_next_poll: int = 0
    failed_without_reason: int = 0
    live_leases: int = 0
    leases_left: int = 0
    polls: int = 0

    @property
    def lost(self) -> int:
        """Jobs neither landed, failed nor stuck, and not pending with a next poll either."""
        return self.open_without_next_poll + self.landed_without_row + (
            self.jobs - sum(self.states.values()))

    @property
    def duplicates(self) -> int:
        return self.mirror_rows - self.mirror_distinct_jobs + self.rows_without_landed_job

    def problems(self, *, released: bool = True) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} job(s) lost")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate or stray mirror row(s)")
        if self.failed_without_reason:
            found.append(f"{self.failed_without_reason} failed job(s) without a reason")
        if self.live_leases:
            found.append(f"{self.live_leases} job(s) still under a live lease")
        if released and self.leases_left:
            found.append(f"{self.leases_left} open job(s) still carry a lease")
        return found


async def audit(conn: asyncpg.Pool | asyncpg.Connection) -> Audit:
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM harvester.jobs) AS jobs,
               (SELECT count(*) FROM harvester.extraction_results) AS mirror_rows,
               (SELECT count(DISTINCT job_id) FROM harvester.extraction_results)
                   AS mirror_distinct_jobs,
               (SELECT count(*) FROM harvester.jobs j WHERE j.state = 'landed' AND NOT EXISTS
                   (SELECT 1 FROM harvester.extraction_results r WHERE r.job_id = j.job_id))
                   AS landed_without_row,
               (SELECT count(*) FROM harvester.extraction_results r WHERE NOT EXISTS
                   (SELECT 1 FROM harvester.jobs j WHERE j.job_id = r.job_id
                       AND j.state = 'landed')) AS rows_without_landed_job,
               (SELECT count(*) FROM harvester.jobs WHERE state IN ('pending', 'stuck')
                   AND next_poll_at IS NULL) AS open_without_next_poll,
               (SELECT count(*) FROM harvester.jobs WHERE state = 'failed'
                   AND coalesce(failed_reason, '') = '') AS failed_without_reason,
               (SELECT count(*) FROM harvester.jobs WHERE leased_until > now()) AS live_leases,
               (SELECT count(*) FROM harvester.jobs WHERE state IN ('pending', 'stuck')
                   AND leased_until IS NOT NULL) AS leases_left,
               (SELECT coalesce(sum(polls), 0) FROM harvester.jobs) AS polls
        """)
    assert row is not None
    states = {r["state"]: r["n"] for r in await conn.fetch(
        "SELECT state, count(*) AS n FROM harvester.jobs GROUP BY state")}
    return Audit(states={k: states.get(k, 0) for k in ("pending", "stuck", "landed", "failed")},
                 **{k: int(v) for k, v in dict(row).items()})


async def audit_url(db_url: str) -> Audit:
    conn = await asyncpg.connect(db_url)
    try:
        return await audit(conn)
    finally:
        await conn.close()


async def count_landed(db_url: str) -> int | None:
    """Landed jobs, read on a fresh connection; None while the database is away."""
    try:
        conn = await asyncpg.connect(db_url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE state = 'landed'"))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    finally:
        await conn.close()


async def wait_landed(db_url: str, count: int, timeout: float, *, fleet: Fleet | None = None
                      ) -> int:
    """Until ``count`` jobs have landed; tolerant of a database that comes and goes."""
    deadline = time.monotonic() + timeout
    landed: int | None = None
    while time.monotonic() < deadline:
        landed = await count_landed(db_url)
        if landed is not None and landed >= count:
            return landed
        if fleet is not None:
            for daemon in fleet.daemons[-1:]:
                daemon._fail_if_exited()
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {landed} of {count} jobs landed within {timeout}s")


async def assert_mirror_is_upstream(conn: asyncpg.Pool | asyncpg.Connection, seed: int) -> None:
    """Every mirror row equals, field by field, the row the simulator served."""
    rows = await conn.fetch("SELECT e.*, b.body FROM harvester.extraction_results AS e "
                            "JOIN harvester.result_bodies AS b USING (job_id)")
    for row in rows:
        served = result_row(row["job_id"], seed=seed)
        where = f"job {row['job_id']}"
        assert json.loads(row["body"]) == served, where
        assert (str(row["id"]), str(row["org_id"])) == (served["id"], served["orgId"]), where
        assert (row["domain"], row["schema_id"], row["data_type"], row["raw_blob_key"]) == (
            served["domain"], served["schemaId"], served["dataType"], served["rawBlobKey"]), where
        assert json.loads(row["normalized"]) == served["normalized"], where
        assert (row["quality_completeness"], row["quality_validation"],
                row["quality_composite"], row["latency_ms"]) == (
            served["qualityCompleteness"], served["qualityValidation"],
            served["qualityComposite"], served["latencyMs"]), where
        delivered = served["deliveredAt"]
        assert row["delivered_at"] == (datetime.fromisoformat(delivered) if delivered else None)
        assert row["created_at"] == datetime.fromisoformat(served["createdAt"]), where


# ---------------------------------------------------------------- fates


FINAL_FATES: dict[str, tuple[str, str | None]] = {
    "stuck": ("stuck", None),
    "not_found_failed": ("failed", "upstream_failed"),
    "not_found_unknown": ("failed", "not_found"),
    "forbidden": ("failed", "forbidden"),
    "gone": ("failed", "http_410"),
}


def expected_end(job_id: uuid.UUID, mix: Mix) -> tuple[str, str | None]:
    """Where a job drawn from ``mix`` must end: (state, failed_reason)."""
    return FINAL_FATES.get(plan_for(job_id, mix).fate, ("landed", None))


def expected_counts(ids: Iterable[uuid.UUID], mix: Mix) -> Counter[str]:
    return Counter(expected_end(job_id, mix)[0] for job_id in ids)


def new_ids(count: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(count)]
