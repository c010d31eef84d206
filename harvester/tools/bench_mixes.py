"""``harvester bench``'s phases (f) and (g): the lifecycle mix and a gateway limit the
daemons are not told (README "Performance", "How a job is followed", "Pace")."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg

from harvester.tools.benchkit import Phase, Running, daemon_process, peak_rss_mib, simulator_process
from harvester.tools.processes import percentile


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
