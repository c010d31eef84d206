"""Pace with real daemons against the simulator's gateway limit (README "Pace"): a limit
nobody told them about is found without a storm, three daemons share it, and a limit
that disappears lets the rate climb back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from harvester.tools.simulator import Mix
from tests.helpers import Daemon, SimulatedUpstream, enqueue, wait_for_states

ENV = {"HARVESTER_CONCURRENCY": "64", "HARVESTER_LEASE_SECONDS": "60",
       "HARVESTER_REQUEST_TIMEOUT": "10"}


async def requests_sent(daemon: Daemon) -> float:
    """Result polls plus batch-status calls, from the daemon's own /metrics."""
    async with aiohttp.ClientSession() as session, \
            session.get(daemon.admin_url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("harvester_polls_total", "harvester_batch_status_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_an_unannounced_limit_is_found_without_a_storm_and_shared_by_three(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix(rate_limit=200, rate_burst=20,
                                      rate_retry_after=1)).start()
    ids = [uuid.uuid4() for _ in range(2400)]
    daemons = [Daemon(db_url, sim.url, tmp_path, name=f"d{i}", env=ENV).start()
               for i in range(3)]
    try:
        for daemon in daemons:
            await daemon.wait_ready()
        await enqueue(pool, ids)
        await wait_for_states(pool, 90, landed=2400)
        shares = [await requests_sent(d) for d in daemons]
    finally:
        for daemon in daemons:
            assert await daemon.stop() == 0
        await sim.stop()
    stats = sim.state.stats()
    total = stats["requests"] + stats["batch_requests"]
    # No storm (an unadapted fleet had three quarters of its requests refused); the
    # bench's gateway phase measures the figure on a quiet machine.
    assert stats["rate_limited"] / total <= 0.1, stats
    assert stats["early_polls"] == 0
    assert min(shares) / sum(shares) >= 0.15, shares  # no daemon starved
    for daemon in daemons:  # one line when an episode begins, not one per 429
        assert len(daemon.events("upstream.rate_limited")) <= 3


async def test_a_limit_that_disappears_lets_the_rate_climb_back(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix(rate_limit=100, rate_burst=10,
                                      rate_retry_after=1)).start()
    daemon = Daemon(db_url, sim.url, tmp_path, env=ENV).start()
    try:
        await daemon.wait_ready()
        await enqueue(pool, [uuid.uuid4() for _ in range(800)])
        await daemon.wait_for_event("upstream.rate_limited", 20)
        await wait_for_states(pool, 30, landed=800)
        sim.simulator.apply_control({"rate_limit": 0})  # the gateway lifts its limit
        more = [uuid.uuid4() for _ in range(6000)]
        await enqueue(pool, more)
        started = time.monotonic()
        await wait_for_states(pool, 60, landed=6800)
        seconds = time.monotonic() - started
        await asyncio.sleep(0.1)
    finally:
        assert await daemon.stop() == 0
        await sim.stop()
    # Limited to 100/s these would take a minute; the rate climbed back within seconds.
    assert seconds < 30, seconds
