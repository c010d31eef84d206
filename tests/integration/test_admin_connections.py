"""The admin server's connection rules over real sockets (README "Security"): a
connection that has not sent a whole request within the time allowed is closed, kept-
alive connections too once idle that long, and at the cap the connection idle longest
of the busiest peer address makes room for a new one.

Served by :class:`~harvester.admin.Admin` itself (``start()``), with the rules' numbers
made small so that the test takes a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from harvester.admin import Admin
from harvester.admin_connections import MAX_CONNECTIONS, Connections, connection_cap
from harvester.metrics import Metrics
from harvester.settings import load_settings
from tests.integration.conftest import ServeAdmin

WITHIN = 0.4
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Start = Callable[..., Awaitable[Admin]]


@pytest.fixture
def start_admin(serve_admin: ServeAdmin) -> Start:
    async def start(cap: int = 8, checks: Callable[[], Awaitable[dict[str, bool]]] | None = None,
                    within: float = WITHIN) -> Admin:
        settings = load_settings({"admin_port": 0}, env_file=None)
        return await serve_admin(Admin(settings, None, Metrics(), checks,
                                       connections=Connections(within=within, cap=cap)))

    return start


async def connect(admin: Admin, source: str = "127.0.0.1") -> Streams:
    return await asyncio.open_connection("127.0.0.1", admin.port, local_addr=(source, 0))


async def closed_within(streams: Streams, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading whatever
    it sends first)."""
    reader, _ = streams
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def healthz(streams: Streams) -> bytes:
    reader, writer = streams
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(2):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        return await reader.readexactly(length)


def close(*all_streams: Streams) -> None:
    for _, writer in all_streams:
        writer.close()


@pytest.mark.parametrize(("limit", "cap"), [
    (1024, 128), (20_000, MAX_CONNECTIONS), (200, 25), (16, 8), (0, MAX_CONNECTIONS)])
def test_the_cap_leaves_most_descriptors_to_the_rest_of_the_daemon(limit: int, cap: int) -> None:
    assert connection_cap(limit) == cap


async def test_a_connection_that_never_finishes_a_request_is_closed(start_admin: Start) -> None:
    admin = await start_admin()
    silent = await connect(admin)
    slow = await connect(admin)
    slow[1].write(b"GET /healthz HTTP/1.1\r\nHo")
    assert await closed_within(silent, WITHIN + 1.0)
    assert await closed_within(slow, 1.0)
    assert admin.connections.open == 0
    close(silent, slow)


async def test_a_kept_alive_connection_gets_the_same_time_after_each_answer(
        start_admin: Start) -> None:
    admin = await start_admin(within=2.0)
    streams = await connect(admin)
    for _ in range(3):  # each answer restarts the clock: 3 × 1 s > 2 s, still open
        assert await healthz(streams) == b'{"status": "ok"}'
        await asyncio.sleep(1.0)
    assert await closed_within(streams, 2.0 + 1.0)
    close(streams)


async def test_at_the_cap_the_busiest_peers_longest_idle_connection_makes_room(
        start_admin: Start) -> None:
    admin = await start_admin(cap=4, within=10.0)  # only the cap closes anything here
    crowd = [await connect(admin, "127.0.0.2") for _ in range(3)]
    neighbour = await connect(admin, "127.0.0.3")
    await asyncio.sleep(0.05)
    assert admin.connections.open == 4
    probe = await connect(admin)
    assert await healthz(probe) == b'{"status": "ok"}'
    assert await closed_within(crowd[0], 1.0)  # the first of the peer holding the most
    assert not await closed_within(crowd[1], 0.2)
    assert not await closed_within(neighbour, 0.2)
    assert admin.connections.open == 4
    close(probe, neighbour, *crowd)


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(
        start_admin: Start) -> None:
    release = asyncio.Event()

    async def stuck() -> dict[str, bool]:
        await release.wait()
        return {"database": True}

    admin = await start_admin(cap=2, checks=stuck, within=10.0)
    busy = [await connect(admin) for _ in range(2)]
    for _, writer in busy:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await asyncio.sleep(0.1)
    refused = await connect(admin)
    assert await closed_within(refused, 1.0)
    release.set()
    for reader, _ in busy:  # the busy ones were left alone and are answered
        async with asyncio.timeout(2):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    close(refused, *busy)
