"""``harvester bench``: end-to-end throughput against the simulated upstream, measured.

One run, one process tree: the simulator in its own process (so it does not share a
core with what is measured), then
  (a) the raw ceiling: a bare aiohttp GET loop at the same concurrency, no database;
  (b) the daemon, as production runs it (``harvester run`` in a subprocess), harvesting
      N jobs that land on the first poll;
  (c) the same after 1,000,000 jobs that are not due were added to the queue;
  (d) peak RSS of the daemon with 1,000 requests in flight (a slow simulator);
  (e) landing lag in the demo mix: from the moment upstream's Retry-After allowed the
      poll that found the row to the moment the row was in the mirror;
  (f) the lifecycle mix (README "How a job is followed"): jobs fed when their crawl
      starts, a quarter already finished, the rest finishing 2-120 s later, then 4 s of
      indexing behind 202s: requests per landed job and the landing lag from the moment
      upstream had the row;
  (g) a gateway limit the daemon is not told (README "Pace"): 300 requests/s, burst 30,
      429 + Retry-After 1, for one and for three daemons: landed rate as a share of the
      limit, the share of requests answered 429, each daemon's share of the requests;
      then the limit changing mid-run (300 → 100 → 300) and how long the rate takes to
      follow.
Figures are printed as tables (or ``--json``); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg

from harvester.api import RESULTS_PREFIX
from harvester.commands.database import check_scratch
from harvester.embedded import database_url, recreate_database
from harvester.settings import Settings
from harvester.tools.processes import free_port, percentile, wait_ready

BENCH_DATABASE = "harvester_bench"
BENCH_TOKEN = "bench-token"  # noqa: S105 - the simulator's fake token


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "bench", help="measure end-to-end throughput against the simulated upstream",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per phase (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="not-due jobs added for phase (c) (default 1000000; 0 skips)")
    parser.add_argument("--inflight", type=int, default=1000,
                        help="requests in flight for the RSS phase (d) (0 skips)")
    parser.add_argument("--lag-jobs", type=int, default=2000,
                        help="jobs for the demo-mix landing-lag phase (e) (0 skips)")
    parser.add_argument("--lifecycle-jobs", type=int, default=1200,
                        help="jobs for the lifecycle phase (f) (0 skips; takes ~2.5 min)")
    parser.add_argument("--gateway-jobs", type=int, default=6000,
                        help="jobs per run of the gateway phase (g) (0 skips; ~2.5 min)")
    parser.add_argument("--gateway-limit", type=float, default=300.0,
                        help="the gateway's requests/s in phase (g) (default 300)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--data-dir", dest="data_dir", metavar="PATH")
    parser.add_argument("--database", metavar="NAME", default=BENCH_DATABASE,
                        help="the scratch database on the same server, DROPPED and recreated "
                             f"at start (default {BENCH_DATABASE})")
    parser.set_defaults(handler=cmd_bench)


@dataclass
class Phase:
    name: str
    jobs: int
    seconds: float
    rate: float
    peak_rss_mib: float | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    note: str = ""
    cpu_us_per_job: dict[str, float] = field(default_factory=dict)
    """CPU time per job by process (Linux): where the time goes."""
    figures: dict[str, float | str] = field(default_factory=dict)
    """Phase-specific figures (requests per job, shares of a limit, …)."""


@dataclass
class Report:
    machine: dict[str, Any]
    concurrency: int
    phases: list[Phase] = field(default_factory=list)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        raw, daemon, backlog = self.phase("a"), self.phase("b"), self.phase("c")
        if raw and daemon and raw.rate:
            out["b/a"] = daemon.rate / raw.rate
        if daemon and backlog and daemon.rate:
            out["c/b"] = backlog.rate / daemon.rate
        return out


# ---------------------------------------------------------------- processes


@asynccontextmanager
async def simulator_process(mix: str, *sets: str, own_session: bool = False
                            ) -> AsyncIterator[tuple[str, int]]:
    """The simulator in a subprocess; yields its base URL and pid. ``own_session``: see
    :func:`daemon_process`."""
    args = [sys.executable, "-m", "harvester", "simulate", "--port", "0", "--mix", mix,
            "--token", BENCH_TOKEN, "--log-level", "warning",
            *[a for s in sets for a in ("--set", s)]]
    if mix != "demo":
        args.append("--no-record")
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE,
                                                start_new_session=own_session)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        if not line.startswith("HARVESTER_API_BASE_URL="):
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.split("=", 1)[1], proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


class CpuMeter:
    """CPU seconds used by the processes of a phase, read from /proc (Linux only)."""

    def __init__(self, roles: dict[str, int]) -> None:
        self.roles = roles
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._read()

    def _cpu(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self._tick

    def _postgres(self) -> float:
        total = 0.0
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == "postgres":
                        total += self._cpu(int(entry.name))
                except OSError:
                    continue
        return total

    def _read(self) -> dict[str, float]:
        readings = {role: self._cpu(pid) for role, pid in self.roles.items()}
        readings["postgres"] = self._postgres()
        return readings

    def per_job(self, jobs: int) -> dict[str, float]:
        if not Path("/proc/self/stat").exists() or jobs <= 0:
            return {}
        end = self._read()
        return {role: (end[role] - self._start.get(role, 0.0)) / jobs * 1e6 for role in end}


@dataclass(frozen=True)
class Running:
    pid: int
    admin_url: str

    async def counter(self, session: aiohttp.ClientSession, *names: str) -> float:
        """The sum of every sample of these counters in the daemon's /metrics."""
        async with session.get(self.admin_url + "/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                total += float(line.rsplit(" ", 1)[1])
        return total


@asynccontextmanager
async def daemon_process(dsn: str, api_url: str, concurrency: int, *, own_session: bool = False
                         ) -> AsyncIterator[Running]:
    """``harvester run`` in a subprocess, ready to work.

    ``own_session`` starts it in a session of its own, as PostgreSQL starts each backend:
    where the kernel groups processes by session for scheduling (autogroup), a machine
    busy with other work then shares the cores between it and the backends as between
    equals, instead of between all of this process tree and each backend."""
    admin_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(Path.home())),
        "HARVESTER_DATABASE_URL": dsn, "HARVESTER_API_BASE_URL": api_url,
        "HARVESTER_API_TOKEN": BENCH_TOKEN, "HARVESTER_CONCURRENCY": str(concurrency),
        "HARVESTER_ADMIN_PORT": str(admin_port), "HARVESTER_LOG_LEVEL": "warning",
        "HARVESTER_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "run", "--no-migrate", env=env,
        stdout=subprocess.DEVNULL, start_new_session=own_session)
    try:
        await wait_ready(f"http://127.0.0.1:{admin_port}/readyz", proc)
        yield Running(proc.pid, f"http://127.0.0.1:{admin_port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await proc.wait()




def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- phases


async def raw_ceiling(api_url: str, jobs: int, concurrency: int) -> Phase:
    """(a) A bare aiohttp GET loop: the most this machine can do without a database."""
    urls = [f"{api_url}{RESULTS_PREFIX}{uuid.uuid4()}" for _ in range(jobs)]
    headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    ok = 0
    position = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal ok, position
            while position < len(urls):
                url = urls[position]
                position += 1
                async with session.get(url) as resp:
                    await resp.read()
                    ok += resp.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Phase("a", ok, seconds, ok / seconds, note="bare aiohttp GET loop, no database")


async def harvest(pool: asyncpg.Pool, pid: int, jobs: int, name: str, note: str,
                  ready: dict[str, float] | None = None, limit: float = 600) -> Phase:
    """Feed ``jobs`` due jobs in one statement and time until all have landed.

    Landings are counted from the daemon's own ``harvester_landed`` notifications, so
    measuring costs the database nothing; a count query every 2 s catches jobs that
    ended failed or stuck (which send no landing notification)."""
    ids = [uuid.uuid4() for _ in range(jobs)]
    wanted = {str(i) for i in ids}
    landed_ids: set[str] = set()
    all_landed = asyncio.Event()

    def on_landed(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        job_id = str(payload)
        if job_id in wanted:
            landed_ids.add(job_id)
            if len(landed_ids) == jobs:
                all_landed.set()

    async with pool.acquire() as listener:
        await listener.add_listener("harvester_landed", on_landed)
        try:
            started = time.perf_counter()
            await pool.execute(
                "INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])", ids)
            deadline = time.monotonic() + limit
            while not all_landed.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_landed.wait(), 2.0)
                if all_landed.is_set():
                    break
                done = await pool.fetchval(
                    "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[]) "
                    "AND state IN ('landed', 'failed', 'stuck')", ids)
                if done >= jobs:
                    break
            seconds = time.perf_counter() - started
        finally:
            await listener.remove_listener("harvester_landed", on_landed)
    lags = await landing_lags(pool, ids, ready)
    landed = await pool.fetchval("SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[]) "
                                 "AND state = 'landed'", ids)
    return Phase(name, int(landed), seconds, landed / seconds, peak_rss_mib(pid),
                 percentile(lags, 50), percentile(lags, 99), note)


async def landing_lags(pool: asyncpg.Pool, ids: Sequence[uuid.UUID],
                       ready: dict[str, float] | None) -> list[float]:
    rows = await pool.fetch(
        "SELECT job_id, extract(epoch FROM landed_at)::float8 AS landed, "
        "extract(epoch FROM enqueued_at)::float8 AS enqueued "
        "FROM harvester.jobs WHERE job_id = ANY($1::uuid[]) AND state = 'landed'", ids)
    lags = []
    for row in rows:
        origin = row["enqueued"]
        if ready is not None:
            origin = ready.get(str(row["job_id"]), origin)
        lags.append(row["landed"] - origin)
    return lags



async def add_backlog(pool: asyncpg.Pool, rows: int) -> None:
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, next_poll_at)
        SELECT gen_random_uuid(), now() + interval '1 day' + g * interval '1 millisecond'
          FROM generate_series(1, $1::int) g
        """, rows)
    await pool.execute("VACUUM ANALYZE harvester.jobs")


@asynccontextmanager
async def bench_database(settings: Settings, name: str = BENCH_DATABASE
                         ) -> AsyncIterator[str]:
    """An empty, migrated database ``name`` (``--database``) on the configured server."""
    async with database_url(settings, database="postgres") as admin_dsn:
        yield await recreate_database(admin_dsn, name)


async def run_bench(settings: Settings, args: argparse.Namespace,
                    progress: TextIO) -> Report:
    report = Report(machine=_machine(), concurrency=args.concurrency)

    def say(text: str) -> None:
        progress.write(text + "\n")
        progress.flush()

    async with bench_database(settings, args.database) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=3)
        try:
            async with simulator_process("first-poll") as (api_url, sim_pid):
                say(f"(a) raw aiohttp GET loop, {args.jobs} requests, concurrency {args.concurrency}")
                meter = CpuMeter({"client": os.getpid(), "simulator": sim_pid})
                phase = await raw_ceiling(api_url, args.jobs, args.concurrency)
                phase.cpu_us_per_job = meter.per_job(phase.jobs)
                report.phases.append(phase)
                async with daemon_process(dsn, api_url, args.concurrency) as daemon:
                    pid = daemon.pid
                    say(f"(b) daemon harvesting {args.jobs} jobs that land on the first poll")
                    meter = CpuMeter({"daemon": pid, "simulator": sim_pid})
                    phase = await harvest(pool, pid, args.jobs, "b", "daemon, empty queue")
                    phase.cpu_us_per_job = meter.per_job(phase.jobs)
                    report.phases.append(phase)
                    if args.backlog:
                        say(f"(c) adding {args.backlog:,} jobs that are not due, then again")
                        await add_backlog(pool, args.backlog)
                        meter = CpuMeter({"daemon": pid, "simulator": sim_pid})
                        phase = await harvest(
                            pool, pid, args.jobs, "c",
                            f"daemon, {args.backlog:,} not-due jobs in the queue")
                        phase.cpu_us_per_job = meter.per_job(phase.jobs)
                        report.phases.append(phase)
            if args.inflight:
                latency = 0.5
                say(f"(d) {args.inflight} requests in flight (simulator latency {latency}s)")
                async with simulator_process("first-poll", f"latency={latency}") as (slow_url, _), \
                        daemon_process(dsn, slow_url, args.inflight) as daemon:
                    jobs = max(args.inflight * 4, 2000)
                    report.phases.append(await harvest(
                        pool, daemon.pid, jobs, "d",
                        f"concurrency {args.inflight}, 0.5 s per answer"))
            if args.lag_jobs:
                say(f"(e) demo mix, {args.lag_jobs} jobs: lag after the Retry-After allowed it")
                async with simulator_process("demo", "stuck=0", "stuck_then_land=0",
                                             "not_found_failed=0", "not_found_running=0",
                                             "forbidden=0", "malformed=0", "fault=0",
                                             "run_max=0", "pending_min=1",
                                             "pending_max=3") as (demo_url, _), \
                        daemon_process(dsn, demo_url, args.concurrency) as daemon:
                    ready: dict[str, float] = {}
                    phase = await harvest(pool, daemon.pid, args.lag_jobs, "e", "")
                    async with aiohttp.ClientSession() as session, \
                            session.get(demo_url + "/_sim/ready") as resp:
                        ready = await resp.json()
                    rows = await pool.fetch(
                        "SELECT job_id FROM harvester.jobs WHERE state = 'landed' "
                        "AND landed_at > now() - make_interval(secs => $1)", phase.seconds + 5)
                    lags = await landing_lags(pool, [r["job_id"] for r in rows], ready)
                    with_202 = [lag for lag, r in zip(lags, rows, strict=False)
                                if str(r["job_id"]) in ready]
                    phase.lag_p50 = percentile(with_202, 50)
                    phase.lag_p99 = percentile(with_202, 99)
                    phase.note = (f"demo mix (1-3 × 202, Retry-After 1 s); lag measured on "
                                  f"{len(with_202)} jobs from when the last 202 allowed the poll")
                    report.phases.append(phase)
            if args.lifecycle_jobs:
                say(f"(f) lifecycle mix, {args.lifecycle_jobs} jobs fed as their crawls start")
                report.phases.append(await lifecycle(pool, dsn, args.concurrency,
                                                     args.lifecycle_jobs))
            if args.gateway_jobs:
                for daemons in (1, 3):
                    say(f"(g) a gateway limit of {args.gateway_limit:g}/s, {daemons} daemon(s), "
                        f"{args.gateway_jobs} jobs")
                    report.phases.append(await gateway(pool, dsn, args.concurrency,
                                                       args.gateway_jobs, daemons,
                                                       args.gateway_limit))
                say(f"(g) the limit changes mid-run: {args.gateway_limit:g} → "
                    f"{args.gateway_limit / 3:g} → {args.gateway_limit:g} /s, three daemons")
                report.phases.append(await limit_change(pool, dsn, args.concurrency,
                                                        args.gateway_limit))
        finally:
            await pool.close()
    return report


async def _sim_get(url: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url + path) as resp:
        return await resp.json()


async def _feed_and_wait(pool: asyncpg.Pool, jobs: int, limit: float
                         ) -> tuple[list[uuid.UUID], float]:
    """Feed ``jobs`` new jobs in one statement; wait until none is open (or ``limit`` s)."""
    ids = [uuid.uuid4() for _ in range(jobs)]
    started = time.perf_counter()
    await pool.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])", ids)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        open_jobs = await pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[]) "
            "AND state IN ('pending', 'stuck')", ids)
        if open_jobs == 0:
            break
        await asyncio.sleep(0.25)
    return ids, time.perf_counter() - started


async def _landed(pool: asyncpg.Pool, ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT job_id, extract(epoch FROM landed_at)::float8 AS landed FROM harvester.jobs "
        "WHERE job_id = ANY($1::uuid[]) AND state = 'landed'", ids))


async def lifecycle(pool: asyncpg.Pool, dsn: str, concurrency: int, jobs: int) -> Phase:
    """(f) Requests per landed job and the lag from the moment upstream had the row."""
    async with simulator_process("lifecycle") as (url, _sim), \
            daemon_process(dsn, url, concurrency) as daemon:
        ids, seconds = await _feed_and_wait(pool, jobs, 400)
        stats = await _sim_get(url, "/_sim/stats")
        ready = await _sim_get(url, "/_sim/ready")
        rows = await _landed(pool, ids)
    lags = [r["landed"] - ready[str(r["job_id"])] for r in rows if str(r["job_id"]) in ready]
    landed = len(rows)
    gets, calls = stats["requests"], stats["batch_requests"]
    phase = Phase("f", landed, seconds, landed / seconds, peak_rss_mib(daemon.pid),
                  percentile(lags, 50), percentile(lags, 99),
                  "lifecycle mix: fed as crawls start, 2-120 s running, 4 s indexing")
    phase.figures = {
        "requests per landed job": round((gets + calls) / max(landed, 1), 3),
        "result GETs per landed job": round(gets / max(landed, 1), 3),
        "batch-status calls per landed job": round(calls / max(landed, 1), 3),
        "IDs per batch-status call": round(stats["batch_ids"] / max(calls, 1), 1),
        "batch-status calls by IDs asked": " ".join(f"{k}:{v}"
                                                    for k, v in stats["batch_sizes"].items()),
        "landing lag p90 (s)": round(percentile(lags, 90) or 0.0, 3),
        "early polls": stats["early_polls"],
        "not landed": jobs - landed,
    }
    return phase


@asynccontextmanager
async def _daemons(dsn: str, url: str, concurrency: int, count: int
                   ) -> AsyncIterator[list[Running]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(daemon_process(dsn, url, concurrency))
               for _ in range(count)]


async def _request_shares(daemons: list[Running]) -> list[float]:
    async with aiohttp.ClientSession() as session:
        sent = [await d.counter(session, "harvester_polls_total",
                                "harvester_batch_status_requests_total") for d in daemons]
    return [s / max(sum(sent), 1.0) for s in sent]


def _gateway_args(limit: float) -> tuple[str, ...]:
    return (f"rate_limit={limit}", "rate_burst=30", "rate_retry_after=1")


async def gateway(pool: asyncpg.Pool, dsn: str, concurrency: int, jobs: int, count: int,
                  limit: float) -> Phase:
    """(g) A gateway limit nobody told the daemons about."""
    async with simulator_process("first-poll", *_gateway_args(limit)) as (url, _sim), \
            _daemons(dsn, url, concurrency, count) as daemons:
        ids, seconds = await _feed_and_wait(pool, jobs, 300)
        stats = await _sim_get(url, "/_sim/stats")
        shares = await _request_shares(daemons)
        landed = len(await _landed(pool, ids))
    requests = stats["requests"] + stats["batch_requests"]
    phase = Phase("g", landed, seconds, landed / seconds, None, None, None,
                  f"gateway {limit:g}/s burst 30, {count} daemon(s), not told")
    phase.figures = {
        "landed rate / limit": round(landed / seconds / limit, 3),
        "429 share of requests": round(stats["rate_limited"] / max(requests, 1), 4),
        "requests while a 429 asked to wait": stats["during_pause"],
        "smallest daemon share of requests": round(min(shares), 3),
        "early polls": stats["early_polls"],
        "not landed": jobs - landed,
    }
    return phase


async def limit_change(pool: asyncpg.Pool, dsn: str, concurrency: int, limit: float
                       ) -> Phase:
    """(g) The limit drops to a third at 20 s and comes back at 40 s: seconds until the
    landed rate follows (within 15 % of the new limit for 3 s in a row)."""
    low = limit / 3
    async with simulator_process("first-poll", *_gateway_args(limit)) as (url, _sim), \
            _daemons(dsn, url, concurrency, 3) as daemons:
        ids = [uuid.uuid4() for _ in range(int(limit * 70))]
        start = time.time()
        await pool.execute("INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])", ids)
        async with aiohttp.ClientSession() as session:
            for at, rate in ((20.0, low), (40.0, limit)):
                await asyncio.sleep(max(0.0, start + at - time.time()))
                async with session.post(url + "/_sim/control", json={"rate_limit": rate}):
                    pass
        await asyncio.sleep(max(0.0, start + 60.0 - time.time()))
        stats = await _sim_get(url, "/_sim/stats")
        rows = await _landed(pool, ids)
        shares = await _request_shares(daemons)
    per_second = [0] * 61
    for r in rows:
        second = int(r["landed"] - start)
        if 0 <= second <= 60:
            per_second[second] += 1

    def follows(at: int, target: float) -> float | str:
        for s in range(at, 58):
            if all(abs(per_second[s + k] - target) <= 0.15 * target for k in range(3)):
                return float(s - at)
        return "not within the run"

    requests = stats["requests"] + stats["batch_requests"]
    phase = Phase("g", len(rows), 60.0, len(rows) / 60.0, None, None, None,
                  f"three daemons, limit {limit:g} → {low:g} at 20 s → {limit:g} at 40 s")
    phase.figures = {
        "seconds to follow the drop": follows(20, low),
        "seconds to follow the rise": follows(40, limit),
        "landed per second, 15-60 s": " ".join(str(n) for n in per_second[15:60]),
        "429 share of requests": round(stats["rate_limited"] / max(requests, 1), 4),
        "smallest daemon share of requests": round(min(shares), 3),
    }
    return phase


def _machine() -> dict[str, Any]:
    import platform  # noqa: PLC0415

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(terse=True), "when": time.strftime("%Y-%m-%d %H:%M")}


def render(report: Report, out: TextIO) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"harvester bench (concurrency {report.concurrency}, "
                        f"{report.machine['cpus']} CPUs, Python {report.machine['python']})")
    for column in ("phase", "jobs", "seconds", "jobs/s", "peak RSS", "lag p50", "lag p99", "what"):
        table.add_column(column, justify="right" if column not in ("phase", "what") else "left")
    for p in report.phases:
        table.add_row(p.name, f"{p.jobs:,}", f"{p.seconds:.2f}", f"{p.rate:,.0f}",
                      f"{p.peak_rss_mib:.0f} MiB" if p.peak_rss_mib else "-",
                      f"{p.lag_p50:.3f}s" if p.lag_p50 is not None else "-",
                      f"{p.lag_p99:.3f}s" if p.lag_p99 is not None else "-", p.note)
    console = Console(file=out, width=max(120, Console(file=out).width))
    console.print(table)
    for name, value in report.ratios().items():
        console.print(f"ratio {name}: {value:.2f}")
    measured = [p for p in report.phases if p.cpu_us_per_job]
    if measured:
        cpu = Table(title="CPU per job (µs), by process")
        roles = sorted({r for p in measured for r in p.cpu_us_per_job})
        cpu.add_column("phase")
        for role in [*roles, "total"]:
            cpu.add_column(role, justify="right")
        for p in measured:
            cells = [f"{p.cpu_us_per_job[r]:.0f}" if r in p.cpu_us_per_job else "-" for r in roles]
            cpu.add_row(p.name, *cells, f"{sum(p.cpu_us_per_job.values()):.0f}")
        console.print(cpu)
    for p in report.phases:
        if p.figures:
            figures = Table(title=f"phase {p.name}: {p.note}")
            figures.add_column("figure")
            figures.add_column("value", justify="right")
            for name, figure in p.figures.items():
                figures.add_row(name, str(figure))
            console.print(figures)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    check_scratch(settings, args.database, BENCH_DATABASE, "bench")
    report = asyncio.run(run_bench(settings, args, sys.stderr))
    if args.json:
        document = {"machine": report.machine, "concurrency": report.concurrency,
                    "phases": [asdict(p) for p in report.phases], "ratios": report.ratios()}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        render(report, sys.stdout)
    return 0
