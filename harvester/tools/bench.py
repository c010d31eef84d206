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
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TextIO

import aiohttp
import asyncpg

from harvester.api import RESULTS_PREFIX
from harvester.commands.database import check_scratch
from harvester.embedded import database_url, recreate_database
from harvester.settings import Settings
from harvester.tools.bench_mixes import gateway, lifecycle, limit_change
from harvester.tools.benchkit import (
    BENCH_TOKEN,
    BusyMeter,
    CpuMeter,
    InFlightSampler,
    Phase,
    Report,
    daemon_process,
    peak_rss_mib,
    postmaster_of,
    simulator_process,
)
from harvester.tools.processes import percentile

BENCH_DATABASE = "harvester_bench"
__all__ = ["BENCH_TOKEN", "daemon_process", "simulator_process"]


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
                  ready: dict[str, float] | None = None, limit: float = 600,
                  admin_url: str | None = None) -> Phase:
    """Feed ``jobs`` due jobs in one statement and time until all have landed.

    With ``admin_url`` (the daemon's admin server) the phase also says how many CPUs of
    the machine were busy meanwhile and how many requests the daemon had in flight on
    average (its /metrics read every 0.25 s), of its concurrency.

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

    sampler = InFlightSampler(admin_url) if admin_url else None
    async with pool.acquire() as listener, \
            sampler if sampler is not None else contextlib.nullcontext():
        await listener.add_listener("harvester_landed", on_landed)
        busy = BusyMeter()
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
            busy_cpus = busy.busy_cpus()
        finally:
            await listener.remove_listener("harvester_landed", on_landed)
    lags = await landing_lags(pool, ids, ready)
    landed = await pool.fetchval("SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[]) "
                                 "AND state = 'landed'", ids)
    phase = Phase(name, int(landed), seconds, landed / seconds, peak_rss_mib(pid),
                  percentile(lags, 50), percentile(lags, 99), note)
    if sampler is not None:
        if busy_cpus is not None:
            phase.figures["CPUs busy (the whole machine)"] = round(busy_cpus, 2)
        if sampler.mean is not None:
            phase.figures["mean requests in flight"] = round(sampler.mean, 1)
    return phase


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
            server = postmaster_of(await pool.fetchval("SELECT pg_backend_pid()"))
            async with simulator_process("first-poll") as (api_url, sim_pid):
                say(f"(a) raw aiohttp GET loop, {args.jobs} requests, concurrency {args.concurrency}")
                meter = CpuMeter({"client": os.getpid(), "simulator": sim_pid}, server)
                phase = await raw_ceiling(api_url, args.jobs, args.concurrency)
                phase.cpu_us_per_job = meter.per_job(phase.jobs)
                report.phases.append(phase)
                async with daemon_process(dsn, api_url, args.concurrency) as daemon:
                    pid = daemon.pid
                    say(f"(b) daemon harvesting {args.jobs} jobs that land on the first poll")
                    meter = CpuMeter({"daemon": pid, "simulator": sim_pid}, server)
                    phase = await harvest(pool, pid, args.jobs, "b", "daemon, empty queue",
                                          admin_url=daemon.admin_url)
                    phase.cpu_us_per_job = meter.per_job(phase.jobs)
                    report.phases.append(phase)
                    if args.backlog:
                        say(f"(c) adding {args.backlog:,} jobs that are not due, then again")
                        await add_backlog(pool, args.backlog)
                        meter = CpuMeter({"daemon": pid, "simulator": sim_pid}, server)
                        phase = await harvest(
                            pool, pid, args.jobs, "c",
                            f"daemon, {args.backlog:,} not-due jobs in the queue",
                            admin_url=daemon.admin_url)
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
