"""The admin server as a browser or a scanner meets it (README "Security"), served by
:class:`~harvester.admin.Admin` itself over a real socket and a real database.

Open job reads (no token, loopback) answer only to a loopback ``Host``, so a web page
that rebinds its name to 127.0.0.1 gets nothing; nothing of the job API is cacheable;
no answer names the server's version; and what aiohttp's parser refuses is answered in
the same JSON as every other error.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest

from harvester.admin import Admin, host_name
from harvester.metrics import Metrics
from harvester.settings import load_settings
from tests.integration.conftest import ServeAdmin
from tests.integration.test_admin_api import TOKEN, ready
from tests.stores import Store

Start = Callable[..., Awaitable[Admin]]


@pytest.fixture
def start_admin(store: Store, serve_admin: ServeAdmin) -> Start:
    async def start(token: str | None = None) -> Admin:
        settings = load_settings({"admin_port": 0, "admin_token": token}, env_file=None)
        return await serve_admin(Admin(settings, store, Metrics(), ready))

    return start


async def exchange(admin: Admin, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as it is and read one answer: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    try:
        writer.write(raw)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    return int(status_line.split()[1]), headers, body


def get(path: str, host: str | None = "127.0.0.1", extra: str = "") -> bytes:
    """A GET as bytes; without a Host, HTTP/1.0 (HTTP/1.1 requires one)."""
    if host is None:
        return f"GET {path} HTTP/1.0\r\n{extra}\r\n".encode()
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8080", "127.0.0.1"), ("LOCALHOST", "localhost"), ("localhost.:80", "localhost"),
    ("[::1]:8080", "::1"), ("[::1]", "::1"), ("evil.example", "evil.example"),
    ("127.0.0.1.evil.example:8080", "127.0.0.1.evil.example"), ("::1", "::1"),
])
def test_the_name_in_a_host_header(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(("host", "served"), [
    ("127.0.0.1", True), ("127.0.0.1:8080", True), ("localhost:8080", True), ("[::1]:8080", True),
    (None, True),  # no browser leaves Host out
    ("evil.example", False), ("evil.example:8080", False), ("127.0.0.1.nip.io", False),
    ("192.168.1.20:8080", False),
])
async def test_open_job_reads_answer_only_to_a_loopback_host(start_admin: Start,
                                                             host: str | None,
                                                             served: bool) -> None:
    admin = await start_admin()
    job = uuid.uuid4()
    await admin.store.enqueue([job])  # type: ignore[union-attr]
    for path in (f"/v1/jobs/{job}", "/v1/jobs?state=pending"):
        status, headers, body = await exchange(admin, get(path, host))
        assert headers["content-type"].startswith("application/json")
        if served:
            assert status == 200, body
        else:
            assert status == 403
            assert "DNS rebinding" in json.loads(body)["error"]
            assert str(job) not in body.decode()
    # The probes stay open to any Host: the kubelet asks by the pod's address.
    status, _, _ = await exchange(admin, get("/healthz", "10.1.2.3:8080"))
    assert status == 200


async def test_with_a_token_any_host_may_read(start_admin: Start) -> None:
    admin = await start_admin(token=TOKEN)
    status, _, body = await exchange(admin, get(
        f"/v1/jobs/{uuid.uuid4()}", "harvester.jobs.svc:8080",
        f"Authorization: Bearer {TOKEN}\r\n"))
    assert (status, json.loads(body)) == (404, {"error": "unknown job"})


UNKNOWN_JOB = "5b0d8a8e-27c1-4d55-9a43-3c51d3ac6c1e"


@pytest.mark.parametrize(("request_bytes", "token", "status"), [
    (get("/v1/jobs?state=pending"), None, 200),
    (get(f"/v1/jobs/{UNKNOWN_JOB}"), None, 404),
    (get("/v1/jobs/not-a-uuid"), None, 400),
    (get("/v1/jobs/x", host="evil.example"), None, 403),
    (get("/v1/nothing-here"), None, 404),
    (get("/v1/jobs?state=pending", extra="Authorization: Bearer wrong\r\n"), TOKEN, 401),
    (b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
     b"Connection: close\r\n\r\n{}", TOKEN, 401),
], ids=["list", "unknown-job", "bad-id", "foreign-host", "no-route", "wrong-token", "post"])
async def test_nothing_of_the_job_api_is_kept_by_a_cache(
        start_admin: Start, request_bytes: bytes, token: str | None, status: int) -> None:
    admin = await start_admin(token=token)
    got, headers, _ = await exchange(admin, request_bytes)
    assert got == status
    assert headers["cache-control"] == "no-store"


async def test_no_answer_names_a_version(start_admin: Start) -> None:
    admin = await start_admin()
    for raw in (get("/healthz"), get("/metrics"), get("/nothing"), get("/v1/jobs/x"),
                get("/" + "a" * 10_000), b"NOT HTTP AT ALL\r\n\r\n"):
        _, headers, _ = await exchange(admin, raw)
        assert headers["server"] == "harvester"
    _, headers, _ = await exchange(admin, get("/healthz"))
    assert "cache-control" not in headers  # the probes are not job data


@pytest.mark.parametrize("raw", [
    get("/v1/jobs/" + "a" * 10_000),                       # a path over 8 KB
    get("/healthz", extra=f"X-Padding: {'p' * 10_000}\r\n"),  # a header over 8 KB
    b"NOT HTTP AT ALL\r\n\r\n",
], ids=["long-path", "long-header", "not-http"])
async def test_what_the_parser_refuses_is_a_json_error(start_admin: Start, raw: bytes) -> None:
    admin = await start_admin()
    status, headers, body = await exchange(admin, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"error": "bad request: the request line or headers could "
                                         "not be read (longer than 8 KB, or not HTTP)"}
    # and the server still answers afterwards
    assert (await exchange(admin, get("/healthz")))[0] == 200
