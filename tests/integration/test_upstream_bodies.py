"""The upstream client against a real aiohttp server on loopback: what it asks for, and
every way a body can come back encoded (README "How upstream answers are handled").

A compressed body is decoded by harvester under ``HARVESTER_MAX_BODY_BYTES`` counted
after decoding; a coding it did not ask for, a cut or corrupt stream, are faults, never
results stored as compressed bytes.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from harvester.api import BATCH_STATUS_PATH, RESULTS_PREFIX
from harvester.policy import Response, StatusAnswer, TransportFailure
from harvester.settings import load_settings
from harvester.upstream import Upstream

LIMIT = 64 * 1024
JOB = uuid.UUID("00000000-0000-4000-8000-000000000001")
ROW = b'{"id": "x", "jobId": "00000000-0000-4000-8000-000000000001"}'

Serve = Callable[[bytes, dict[str, str], bool], Awaitable[Upstream]]
SEEN_HEADERS: dict[str, str] = {}
"""The headers of the last request any test server here received."""


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a server answering every request with one body and headers (chunked when
    asked: no Content-Length), and an Upstream pointed at it."""
    runners: list[web.AppRunner] = []
    clients: list[Upstream] = []

    async def start(body: bytes, headers: dict[str, str], chunked: bool) -> Upstream:
        async def answer(request: web.Request) -> web.StreamResponse:
            SEEN_HEADERS.clear()
            SEEN_HEADERS.update(request.headers)
            if not chunked:
                return web.Response(body=body, headers=headers)
            resp = web.StreamResponse(headers=headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for start in range(0, len(body), 4096):
                await resp.write(body[start:start + 4096])
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_get(RESULTS_PREFIX + "{job_id}", answer)
        app.router.add_post(BATCH_STATUS_PATH, answer)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        settings = load_settings({"api_base_url": f"http://127.0.0.1:{runner.addresses[0][1]}",
                                  "max_body_bytes": LIMIT}, env_file=None)
        client = await Upstream(settings).__aenter__()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
        for runner in runners:
            await runner.cleanup()


ENCODED = {
    "identity": (ROW, {}),
    "gzip": (gzip.compress(ROW), {"Content-Encoding": "gzip"}),
    "x-gzip": (gzip.compress(ROW), {"Content-Encoding": "x-gzip"}),
    "deflate (zlib)": (_deflate(ROW, zlib.MAX_WBITS), {"Content-Encoding": "deflate"}),
    "deflate (raw)": (_deflate(ROW, -zlib.MAX_WBITS), {"Content-Encoding": "deflate"}),
}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("encoded", sorted(ENCODED))
async def test_a_body_in_any_coding_asked_for_arrives_decoded(serve: Serve, encoded: str,
                                                              chunked: bool) -> None:
    body, headers = ENCODED[encoded]
    upstream = await serve(body, {"Content-Type": "application/json", **headers}, chunked)
    answer = await upstream.fetch_result(JOB)
    assert isinstance(answer, Response), answer
    assert (answer.status, answer.body) == (200, ROW)
    assert SEEN_HEADERS["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("body", "headers", "kind", "says"), [
    (gzip.compress(bytes(LIMIT + 1)), {"Content-Encoding": "gzip"}, "too_large",
     f"exceeds HARVESTER_MAX_BODY_BYTES={LIMIT} once decoded (gzip)"),
    (_deflate(bytes(10 * LIMIT), -zlib.MAX_WBITS), {"Content-Encoding": "deflate"}, "too_large",
     "once decoded (deflate)"),
    (bytes(LIMIT + 1), {}, "too_large", "HARVESTER_MAX_BODY_BYTES"),
    (ROW, {"Content-Encoding": "br"}, "protocol", "Content-Encoding 'br' is not supported"),
    (gzip.compress(ROW), {"Content-Encoding": "deflate, gzip"}, "protocol", "not supported"),
    (gzip.compress(ROW)[:-6], {"Content-Encoding": "gzip"}, "protocol", "truncated"),
    (gzip.compress(ROW) + b"junk", {"Content-Encoding": "gzip"}, "protocol", "stray bytes"),
    (b"plain text", {"Content-Encoding": "gzip"}, "protocol", "corrupt"),
], ids=["gzip-bomb", "raw-deflate-bomb", "identity", "br", "stacked", "cut", "trailing",
        "not-gzip"])
async def test_a_body_past_the_limit_or_undecodable_is_a_fault(
        serve: Serve, body: bytes, headers: dict[str, str], kind: str, says: str,
        chunked: bool) -> None:
    upstream = await serve(body, {"Content-Type": "application/json", **headers}, chunked)
    answer = await upstream.fetch_result(JOB)
    assert isinstance(answer, TransportFailure), answer
    assert answer.kind == kind
    assert says in answer.detail


async def test_a_declared_identity_body_past_the_limit_is_refused_unread(serve: Serve) -> None:
    upstream = await serve(bytes(LIMIT + 1), {}, False)
    answer = await upstream.fetch_result(JOB)
    assert isinstance(answer, TransportFailure)
    assert answer.detail == (f"body of {LIMIT + 1} bytes exceeds "
                             f"HARVESTER_MAX_BODY_BYTES={LIMIT}")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_batch_status_decodes_its_answer_and_refuses_a_bomb(serve: Serve,
                                                                 chunked: bool) -> None:
    listed = b'[{"id": "%s", "status": "running"}]' % str(JOB).encode()
    upstream = await serve(gzip.compress(listed), {"Content-Encoding": "gzip"}, chunked)
    answer = await upstream.batch_status([JOB])
    assert answer == StatusAnswer({JOB: "running"}, date=answer.date)
    assert answer.date is not None  # upstream's clock, for its Retry-After dates

    bomb = await serve(gzip.compress(bytes(100 * LIMIT)), {"Content-Encoding": "gzip"}, chunked)
    refused = await bomb.batch_status([JOB])
    assert refused.statuses is None
    answer = refused
    assert answer.error is not None
    assert f"exceeds HARVESTER_MAX_BODY_BYTES={LIMIT} once decoded (gzip)" in answer.error
