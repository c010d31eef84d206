"""A hostile upstream answers with a compression bomb: ~1 MB of gzip that inflates to
1 GiB of zeros, with and without a Content-Length, to a result GET and to batch-status.

The daemon must hold no more than ``HARVESTER_MAX_BODY_BYTES`` of it (README "How
upstream answers are handled"): its peak RSS stays small, ``/healthz`` keeps answering
all along, and the answer is the ``too_large`` fault (the job's ``last_error``, or the
failed batch-status call). Before the body limit held on decoded bytes, one such answer
with a Content-Length took the daemon to 3 GiB.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from harvester.api import BATCH_STATUS_PATH, RESULTS_PREFIX
from tests.acceptance.conftest import MakeFleet
from tests.helpers import Daemon, enqueue

INFLATED = 1 << 30
RSS_LIMIT = 200 * 1024 * 1024
"""The chaos test's bound for a daemon at work; the bomb alone would be 1 GiB."""
RSS_ABORT = 600 * 1024 * 1024
"""Past this the test stops the daemon rather than let it take the machine."""
PROBE_EVERY = 0.2
WATCH_AT_LEAST = 4.0


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """1 GiB of zeros, gzip'd at level 9 from a streamed source: about 1 MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(INFLATED >> 20)]
    parts.append(packer.flush())
    return b"".join(parts)


@dataclass
class HostileUpstream:
    """Serves ``bomb`` where ``target`` says ("result" or "status"); the other endpoint
    answers plainly: batch-status says every job is completed, a result GET is 404 (so
    that the job is followed through batch-status again)."""

    bomb: bytes
    target: str
    declared: bool
    served: int = 0
    url: str = ""

    async def _bomb(self, request: web.Request) -> web.StreamResponse:
        self.served += 1
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        if self.declared:
            return web.Response(body=self.bomb, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for start in range(0, len(self.bomb), 16 * 1024):
                await resp.write(self.bomb[start:start + 16 * 1024])
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    async def batch_status(self, request: web.Request) -> web.StreamResponse:
        if self.target == "status":
            return await self._bomb(request)
        ids = (await request.json())["jobIds"]
        return web.json_response([{"id": i, "status": "completed"} for i in ids])

    async def result(self, request: web.Request) -> web.StreamResponse:
        if self.target == "result":
            return await self._bomb(request)
        return web.json_response({"error": "not found"}, status=404)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(BATCH_STATUS_PATH, self.batch_status)
        app.router.add_get(RESULTS_PREFIX + "{job_id}", self.result)
        return app


@pytest.fixture
async def serve() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    try:
        yield runners
    finally:
        for runner in runners:
            await runner.cleanup()


async def start(upstream: HostileUpstream, runners: list[web.AppRunner]) -> HostileUpstream:
    runner = web.AppRunner(upstream.app(), handle_signals=False)
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return upstream


@dataclass
class Watch:
    probes: int = 0
    answered: int = 0
    peak_rss: int = 0


async def watch(daemon: Daemon, seen: Watch, stop: asyncio.Event) -> None:
    """Probe /healthz and read the peak RSS (the kernel's VmHWM) until ``stop``; kill the
    daemon if it runs away."""
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            seen.peak_rss = max(seen.peak_rss, (daemon.peak_rss_kib() or 0) * 1024)
            if seen.peak_rss > RSS_ABORT:
                daemon.kill()
                return
            seen.probes += 1
            try:
                async with session.get(daemon.admin_url + "/healthz") as resp:
                    seen.answered += resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(PROBE_EVERY)


async def last_error(pool: asyncpg.Pool, job_id: uuid.UUID) -> str:
    return str(await pool.fetchval(
        "SELECT coalesce(last_error, '') FROM harvester.jobs WHERE job_id = $1", job_id))


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("target", ["result", "status"])
async def test_a_compression_bomb_is_refused_too_large_with_little_memory_and_probes_answering(
    db_url: str, pool: asyncpg.Pool, fleets: MakeFleet, serve: list[web.AppRunner],
    bomb: bytes, target: str, declared: bool,
) -> None:
    upstream = await start(HostileUpstream(bomb, target, declared), serve)
    job_id = uuid.uuid4()
    await enqueue(pool, [job_id])
    fleet = fleets(db_url, upstream.url, {"HARVESTER_REQUEST_TIMEOUT": "20",
                                          "HARVESTER_LEASE_SECONDS": "30"})
    daemon = fleet.spawn(token=None)
    await daemon.wait_for_event("admin.listening")
    seen, stop = Watch(), asyncio.Event()
    watcher = asyncio.create_task(watch(daemon, seen, stop))
    started = time.monotonic()
    outcome = ""
    try:
        while time.monotonic() - started < 60 and not watcher.done():
            if target == "result":
                outcome = await last_error(pool, job_id)
            else:
                outcome = " ".join(str(e.get("error")) for e in
                                   daemon.events("upstream.batch_status_failing"))
            if ("HARVESTER_MAX_BODY_BYTES" in outcome and upstream.served >= 2
                    and time.monotonic() - started >= WATCH_AT_LEAST):
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await watcher
    seen.peak_rss = max(seen.peak_rss, (daemon.peak_rss_kib() or 0) * 1024)
    print(f"{target}/{'content-length' if declared else 'chunked'}: bombs served "
          f"{upstream.served}, peak RSS {seen.peak_rss >> 20} MiB, "
          f"/healthz {seen.answered}/{seen.probes}")

    assert seen.peak_rss < RSS_LIMIT, f"peak RSS {seen.peak_rss >> 20} MiB"
    assert seen.answered >= 0.9 * seen.probes, f"/healthz {seen.answered}/{seen.probes}"
    if target == "result":
        assert outcome.startswith("too_large:"), outcome
    assert "exceeds HARVESTER_MAX_BODY_BYTES=16777216 once decoded (gzip)" in outcome, outcome
    assert upstream.served >= 2
    assert await daemon.stop() == 0
    fleet.assert_healthy_logs()
