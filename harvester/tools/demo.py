"""``harvester demo``: the newcomer's path.

The demo starts, in one process tree, the embedded PostgreSQL, the simulated upstream
(its own process) and the daemon (``harvester run``, its own process, exactly as in
production), feeds a few thousand jobs with a realistic mix (most land after a few
202s, some get stuck, some 404, one short 429 window), shows live progress, and ends
with a summary and a sample query over the mirror. The database stays in place
afterwards, and the demo ends by printing the commands that look at it
(``harvester status --database harvester_demo`` and friends). Ctrl-C at any moment stops
everything cleanly. Its logs (``demo-logs`` in the data directory) are written afresh
by each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harvester.embedded import EmbeddedPostgres, recreate_database
from harvester.errors import EmbeddedDatabaseError, UserError
from harvester.settings import Settings, default_data_dir
from harvester.tools.processes import free_port, percentile, wait_ready

DEMO_DATABASE = "harvester_demo"
DEMO_TOKEN = "demo-token"  # noqa: S105 - the simulator's fake token
SAMPLE_QUERY = """\
SELECT domain,
       count(*)                                  AS rows,
       round(avg(quality_composite)::numeric, 3) AS avg_quality,
       max(harvested_at)::time(0)                AS last_harvested
  FROM harvester.extraction_results
 GROUP BY domain
 ORDER BY rows DESC"""


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="try it: embedded PostgreSQL + simulated upstream + daemon",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--jobs", type=int, default=3000, help="jobs to feed (default 3000)")
    demo.add_argument("--max-seconds", type=float, default=50.0,
                      help="stop waiting after this long (default 50)")
    demo.add_argument("--data-dir", dest="data_dir", metavar="PATH",
                      help="where the embedded PostgreSQL lives (HARVESTER_DATA_DIR)")
    demo.set_defaults(handler=cmd_demo)



# ---------------------------------------------------------------- processes


@asynccontextmanager
async def _child(args: list[str], env: dict[str, str] | None = None,
                 stdout: int | None = subprocess.DEVNULL, log: Path | None = None
                 ) -> AsyncIterator[asyncio.subprocess.Process]:
    # Each run writes its logs afresh: a demo run again and again must not grow them.
    handle = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115, ASYNC230
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=stdout, stderr=handle, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if log:
            handle.close()  # type: ignore[union-attr]


async def _start_simulator(stack: contextlib.AsyncExitStack, log: Path) -> str:
    proc = await stack.enter_async_context(_child(
        [sys.executable, "-m", "harvester", "simulate", "--port", "0", "--mix", "demo",
         "--token", DEMO_TOKEN, "--log-level", "warning"], stdout=subprocess.PIPE, log=log))
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    if not line.startswith("HARVESTER_API_BASE_URL="):
        raise EmbeddedDatabaseError(f"the simulated upstream did not start; see {log}")
    return line.split("=", 1)[1]


async def _start_daemon(stack: contextlib.AsyncExitStack, dsn: str, api_url: str, log: Path
                        ) -> str:
    """Start ``harvester run``; returns its admin server's URL once it is ready."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(Path.home()),
        "HARVESTER_DATABASE_URL": dsn, "HARVESTER_API_BASE_URL": api_url,
        "HARVESTER_API_TOKEN": DEMO_TOKEN, "HARVESTER_ADMIN_PORT": str(port),
        "HARVESTER_LOG_FORMAT": "json", "HARVESTER_LOG_LEVEL": "info",
        "HARVESTER_CONCURRENCY": "64", "HARVESTER_SHUTDOWN_GRACE": "5",
    }
    proc = await stack.enter_async_context(_child(
        [sys.executable, "-m", "harvester", "run", "--no-migrate"], env=env, log=log))
    try:
        await wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    except RuntimeError as exc:
        raise EmbeddedDatabaseError(f"{exc}; see {log}") from None
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- the run


async def _counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM harvester.jobs GROUP BY state")
    counts = {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
    counts.update({r["state"]: int(r["n"]) for r in rows})
    return counts


def _view(counts: dict[str, int], total: int, progress: Progress, task: Any, rate: float,
          paused: bool) -> Group:
    progress.update(task, completed=total - counts["pending"])
    line = Table.grid(padding=(0, 3))
    for _ in range(6):
        line.add_column()
    line.add_row(f"[green]landed {counts['landed']:,}", f"[cyan]pending {counts['pending']:,}",
                 f"[yellow]stuck {counts['stuck']:,}", f"[red]failed {counts['failed']:,}",
                 f"{rate:,.0f} jobs/s",
                 "[magenta]upstream said 429: paused" if paused else "")
    return Group(progress, line)


async def run_demo(settings: Settings, jobs: int, max_seconds: float, out: TextIO) -> int:
    console = Console(file=out, highlight=False)
    data_dir = settings.data_dir
    logs = data_dir / "demo-logs"
    embedded = EmbeddedPostgres(data_dir)
    console.print(f"[bold]harvester demo[/]: embedded PostgreSQL in {embedded.pgdata}")
    await asyncio.to_thread(embedded.start)
    try:
        logs.mkdir(parents=True, exist_ok=True)
        dsn = await recreate_database(embedded.uri("postgres"), DEMO_DATABASE)
        async with contextlib.AsyncExitStack() as stack:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            stack.push_async_callback(pool.close)
            api_url = await _start_simulator(stack, logs / "simulator.log")
            console.print(f"simulated upstream at {api_url} (jobs finish 0-12 s after they are "
                          "fed, then index for 2 s; some stuck, some failed, a short 429)")
            admin_url = await _start_daemon(stack, dsn, api_url, logs / "daemon.log")
            console.print(f"daemon running (logs in {logs}, written afresh each run); "
                          f"feeding {jobs:,} jobs\n")
            ids = [uuid.uuid4() for _ in range(jobs)]
            await pool.execute(
                "INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])", ids)
            started = time.monotonic()
            await _watch(pool, api_url, admin_url, jobs, started, max_seconds, console)
            elapsed = time.monotonic() - started
            await _summary(pool, api_url, jobs, elapsed, console)
    finally:
        await asyncio.to_thread(embedded.stop)
    console.print("\nThe demo database is kept. Next, on the same database (each command starts "
                  "the embedded server for its session):")
    commands = next_commands(data_dir)
    width = max(len(command) for command, _ in commands) + 2
    for command, what in commands:
        console.print(f"  [bold]{command}[/]{' ' * (width - len(command))}# {what}",
                      soft_wrap=True)
    return 0


def next_commands(data_dir: Path) -> list[tuple[str, str]]:
    """The commands a newcomer runs after the demo, pointed at the demo's database
    (README "Try it"). Each shows something after a demo: the demo's mix fails jobs
    ``upstream_failed`` (batch-status says failed) and ``forbidden``, never
    ``not_found`` (tests/acceptance/test_demo.py runs the demo, then each of them)."""
    where = f" --database {DEMO_DATABASE}"
    if data_dir != default_data_dir():
        where += f" --data-dir {shlex.quote(str(data_dir))}"
    return [
        (f"harvester status{where}", "queue counts, backlog, circuits"),
        (f"harvester stuck{where}", "the open stuck records"),
        (f"harvester jobs --state failed{where}", "failed jobs and why"),
        (f"harvester jobs --state landed --limit 5{where}", "the last jobs to land"),
        (f"harvester requeue --reason upstream_failed --dry-run{where}",
         "how many a requeue would put back"),
        (f"harvester psql{where}", "SQL over the mirror"),
    ]


async def _paused(session: aiohttp.ClientSession, admin_url: str) -> bool:
    """The daemon is pausing for a 429's Retry-After now (its /metrics say until when: the
    heartbeat in harvester.workers comes every 5 s, longer than the demo's pause)."""
    try:
        async with session.get(admin_url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return False
    for line in text.splitlines():
        if line.startswith("harvester_paused_until_timestamp_seconds "):
            return float(line.split()[-1]) > time.time()
    return False


async def _watch(pool: asyncpg.Pool, api_url: str, admin_url: str, jobs: int, started: float,
                 max_seconds: float, console: Console) -> None:
    progress = Progress(TextColumn("resolved"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                        TimeElapsedColumn(), console=console)
    task = progress.add_task("demo", total=jobs)
    rate_window: list[tuple[float, int]] = []
    rate_limited = False
    async with aiohttp.ClientSession() as session:
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            while True:
                now = time.monotonic()
                if not rate_limited and now - started > 4:
                    # One short 429 window, to show the daemon pausing for everyone.
                    async with session.post(api_url + "/_sim/control",
                                            json={"rate_limit_for": 1.0, "retry_after": 2}):
                        rate_limited = True
                counts = await _counts(pool)
                paused = await _paused(session, admin_url)
                rate_window.append((now, counts["landed"]))
                rate_window = [(t, n) for t, n in rate_window if now - t <= 2.0]
                span = rate_window[-1][0] - rate_window[0][0]
                rate = (rate_window[-1][1] - rate_window[0][1]) / span if span > 0 else 0.0
                if counts["pending"] == 0 or now - started > max_seconds:
                    rate = counts["landed"] / max(now - started, 1e-9)  # the average, at the end
                    live.update(_view(counts, jobs, progress, task, rate, paused=False))
                    return
                live.update(_view(counts, jobs, progress, task, rate, paused))
                await asyncio.sleep(0.25)


async def _summary(pool: asyncpg.Pool, api_url: str, jobs: int, elapsed: float,
                   console: Console) -> None:
    counts = await _counts(pool)
    reasons = await pool.fetch("SELECT failed_reason, count(*) AS n FROM harvester.jobs "
                               "WHERE state = 'failed' GROUP BY 1 ORDER BY 2 DESC")
    async with aiohttp.ClientSession() as session:
        async with session.get(api_url + "/_sim/ready") as resp:
            ready: dict[str, float] = await resp.json()
        async with session.get(api_url + "/_sim/stats") as resp:
            stats = await resp.json()
    rows = await pool.fetch("SELECT job_id::text, extract(epoch FROM landed_at)::float8 AS t "
                            "FROM harvester.jobs WHERE state = 'landed'")
    lags = [r["t"] - ready[r["job_id"]] for r in rows if r["job_id"] in ready]
    table = Table(title=f"{jobs:,} jobs in {elapsed:.1f} s", show_header=True)
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    table.add_column("detail")
    table.add_row("landed", f"{counts['landed']:,}", "rows in harvester.extraction_results")
    table.add_row("stuck", f"{counts['stuck']:,}",
                  "completed upstream without a row (3 × 500): see harvester.open_stuck_jobs")
    table.add_row("failed", f"{counts['failed']:,}",
                  ", ".join(f"{r['failed_reason']} {r['n']}" for r in reasons))
    table.add_row("pending", f"{counts['pending']:,}", "still waiting" if counts["pending"] else "")
    console.print()
    console.print(table)
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    if p50 is not None and p99 is not None:
        console.print(f"landing lag, from the moment upstream had the row to the moment it was in "
                      f"the mirror: p50 {p50:.2f} s, p99 {p99:.2f} s ({len(lags):,} jobs)")
    console.print(f"upstream saw {stats['requests']:,} result GETs and "
                  f"{stats['batch_requests']:,} batch-status calls for {jobs:,} jobs, "
                  f"{stats['answered_429']} answered 429, "
                  f"{stats['early_polls']} earlier than its Retry-After, "
                  f"{stats['overlaps']} concurrent polls of one job")
    console.print("\n[bold]A query over the mirror:[/]")
    console.print(SAMPLE_QUERY, style="dim")
    sample = await pool.fetch(SAMPLE_QUERY)
    result = Table(show_header=True)
    for column in ("domain", "rows", "avg_quality", "last_harvested"):
        result.add_column(column)
    for row in sample[:5]:
        result.add_row(*(str(row[c]) for c in ("domain", "rows", "avg_quality", "last_harvested")))
    console.print(result)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    if args.jobs < 1 or args.jobs > 1_000_000:
        raise UserError("--jobs must be between 1 and 1000000")
    try:
        return asyncio.run(run_demo(settings, args.jobs, args.max_seconds, sys.stdout))
    except KeyboardInterrupt:
        sys.stdout.write("\ndemo stopped; the database is kept\n")
        return 130
