"""Whatever is fed in, the answer is a clear refusal or a complete enqueue, never half.

hypothesis writes the inputs: enqueue files of valid IDs in every accepted spelling,
comments, blank lines, and lines that are surely bad (NUL bytes, near-miss and truncated
UUIDs, the nil UUID, invalid UTF-8, 300 KB lines); raw random bytes; admin API bodies of
random bytes, JSON of every shape and huge arrays. In-process runs take many examples;
the ``python -m harvester`` subprocess runs a few, since each starts an interpreter.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester.admin import BODY_LIMIT, MAX_IDS_PER_REQUEST
from harvester.commands.enqueue import enqueue_entries
from harvester.commands.ids import SHOWN_BAD_LINES
from harvester.feed import classify_lines
from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.integration.test_admin_api import AUTH, TOKEN, admin_client
from tests.stores import Store

FIXTURES_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
               HealthCheck.data_too_large, HealthCheck.large_base_example]

# ---------------------------------------------------------------- enqueue files

SPELLINGS: list[Callable[[uuid.UUID], str]] = [
    str, lambda u: str(u).upper(), lambda u: u.hex, lambda u: u.hex.upper(),
    lambda u: f"  {u}\t", lambda u: f"{u}  # from the nightly feed", lambda u: f"{u}\r",
]
job_ids = st.uuids().filter(lambda u: u.int != 0)
valid_lines = st.builds(lambda u, spell: (u, spell(u).encode()), job_ids,
                        st.sampled_from(SPELLINGS))
neutral_lines = st.sampled_from([b"", b"   ", b"# a comment", b"\t# note", b"#", b"\r"])


def _no_newline(data: bytes) -> bytes:
    return data.replace(b"\n", b"")


bad_lines = st.one_of(
    st.binary(max_size=60).map(lambda b: b"\x00" + _no_newline(b)),
    job_ids.map(lambda u: str(u)[:-1].encode() + b"g"),
    st.builds(lambda u, k: str(u)[:k].encode(), job_ids, st.integers(1, 35)),
    st.just(b"00000000-0000-0000-0000-000000000000"),
    st.integers(65_537, 300_000).map(lambda n: b"f" * n),
    st.text(max_size=40).map(lambda t: ("z" + t.replace("\n", "")).encode()),
    st.binary(max_size=40).map(lambda b: b"\xff" + _no_newline(b)),
    job_ids.map(lambda u: f"{u},{u}".encode()),
)


@dataclass
class Feed:
    """An enqueue file and what it is known to hold."""

    data: bytes
    ids: list[uuid.UUID]
    bad_line_numbers: list[int]


@st.composite
def feeds(draw: st.DrawFn, max_lines: int = 40) -> Feed:
    kinds = draw(st.lists(st.sampled_from(["valid", "valid", "neutral", "bad"]),
                          max_size=max_lines))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines: list[bytes] = []
    ids: list[uuid.UUID] = []
    bad: list[int] = []
    for number, kind in enumerate(kinds, start=1):
        if kind == "valid":
            job, line = draw(valid_lines)
            ids.append(job)
        elif kind == "neutral":
            line = draw(neutral_lines)
        else:
            line = draw(bad_lines)
            bad.append(number)
        lines.append(line)
    trailing = newline if draw(st.booleans()) and lines else b""
    return Feed(newline.join(lines) + trailing, ids, bad)


def _is_one_clear_line(text: str) -> bool:
    return "\n" not in text and text.isprintable() and len(text) < 300


async def count_jobs(store: Store) -> int:
    return int(await store.pool.fetchval("SELECT count(*) FROM harvester.jobs"))


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES_OK)
@given(feed=feeds())
async def test_an_enqueue_file_is_all_in_or_nothing(store: Store, feed: Feed) -> None:
    before = await count_jobs(store)
    report = await enqueue_entries(store, classify_lines(io.BytesIO(feed.data)),
                                   skip_invalid=False)
    after = await count_jobs(store)
    if feed.bad_line_numbers:
        assert not report.committed
        assert after == before
        assert report.new == 0
        assert report.invalid == len(feed.bad_line_numbers)
        assert [b.number for b in report.shown] == feed.bad_line_numbers[:SHOWN_BAD_LINES]
        for refusal in report.shown:
            assert _is_one_clear_line(str(refusal)), str(refusal)
    else:
        assert report.committed
        assert (report.valid, report.invalid) == (len(feed.ids), 0)
        assert after - before == report.new
        stored = await store.pool.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[])", feed.ids)
        assert stored == len(set(feed.ids))


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES_OK)
@given(feed=feeds())
async def test_skip_invalid_enqueues_exactly_the_valid_lines(store: Store, feed: Feed) -> None:
    before = await count_jobs(store)
    report = await enqueue_entries(store, classify_lines(io.BytesIO(feed.data)),
                                   skip_invalid=True)
    assert report.committed
    assert (report.valid, report.invalid) == (len(feed.ids), len(feed.bad_line_numbers))
    assert await count_jobs(store) - before == report.new
    stored = await store.pool.fetchval(
        "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[])", feed.ids)
    assert stored == len(set(feed.ids))


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES_OK)
@given(data=st.binary(max_size=4096))
async def test_random_bytes_are_refused_whole_or_enqueued_whole(store: Store, data: bytes
                                                                 ) -> None:
    before = await count_jobs(store)
    report = await enqueue_entries(store, classify_lines(io.BytesIO(data)), skip_invalid=False)
    after = await count_jobs(store)
    assert report.committed == (report.invalid == 0)
    assert after - before == (report.new if report.committed else 0)
    for refusal in report.shown:
        assert _is_one_clear_line(str(refusal)), str(refusal)


def run_enqueue(db_url: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(path.parent),
           "HARVESTER_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "harvester", "enqueue", "--file", str(path)],
                          env=env, cwd=path.parent, capture_output=True, text=True,
                          errors="replace", timeout=120, check=False)


def count_jobs_at(db_url: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM harvester.jobs"))
        finally:
            await conn.close()

    return asyncio.run(count())


def assert_clear_command_output(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 1 and out[0].startswith("new: "), proc.stdout
    errors = proc.stderr.splitlines()
    assert len(errors) <= SHOWN_BAD_LINES + 2, proc.stderr
    for line in errors:
        assert _is_one_clear_line(line), line


@settings(max_examples=6, deadline=None, suppress_health_check=FIXTURES_OK)
@given(feed=feeds(max_lines=30))
def test_the_enqueue_command_refuses_a_bad_file_in_clear_lines(db_url: str, feed: Feed) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.txt"
        path.write_bytes(feed.data)
        before = count_jobs_at(db_url)
        proc = run_enqueue(db_url, path)
        after = count_jobs_at(db_url)
    assert_clear_command_output(proc)
    if feed.bad_line_numbers:
        assert proc.returncode == 2, proc
        assert after == before
        shown = [line.split(":")[0] for line in proc.stderr.splitlines()
                 if line.startswith("line ")]
        assert shown == [f"line {n}" for n in feed.bad_line_numbers[:SHOWN_BAD_LINES]]
    else:
        assert proc.returncode == 0, proc
        assert after - before == int(proc.stdout.split()[1].rstrip(",").replace(",", ""))


@settings(max_examples=3, deadline=None, suppress_health_check=FIXTURES_OK)
@given(data=st.binary(min_size=1, max_size=200_000))
def test_the_enqueue_command_survives_random_bytes(db_url: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.bin"
        path.write_bytes(data)
        before = count_jobs_at(db_url)
        proc = run_enqueue(db_url, path)
        after = count_jobs_at(db_url)
    assert proc.returncode in (0, 2), proc
    assert_clear_command_output(proc)
    if proc.returncode == 2:
        assert after == before


# ---------------------------------------------------------------- admin API bodies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=30,
)
id_entries = st.one_of(job_ids.map(str), job_ids.map(lambda u: u.hex.upper()),
                       json_values, bad_lines.map(lambda b: b[:100].decode("utf-8", "replace")))
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4).map(
        lambda d: json.dumps(d).encode()),
    st.lists(id_entries, max_size=30).map(lambda items: json.dumps({"jobIds": items}).encode()),
    st.lists(job_ids.map(str), max_size=30).map(
        lambda items: json.dumps({"jobIds": items}).encode()),
    st.integers(1, 5000).map(lambda depth: b"[" * depth),
    st.integers(1, 5000).map(lambda depth: b'{"jobIds": ' + b"[" * depth + b"]" * depth + b"}"),
)


UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")


def expected_ids(raw: bytes) -> list[uuid.UUID] | None:
    """The IDs a body must enqueue, or None when it must be refused whole."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    items = document.get("jobIds") if isinstance(document, dict) else None
    if not isinstance(items, list) or len(items) > MAX_IDS_PER_REQUEST:
        return None
    ids = []
    for item in items:
        if not isinstance(item, str) or not UUID_TEXT.fullmatch(item.strip()):
            return None
        parsed = uuid.UUID(item.strip())
        if parsed.int == 0:
            return None
        ids.append(parsed)
    return ids


async def check_admin_answer(status: int, text: str, content_type: str, raw: bytes,
                             before: int, after: int) -> None:
    assert content_type == "application/json", (status, text[:200])
    body: Any = json.loads(text)
    expected = expected_ids(raw)
    if expected is None:
        assert status in (400, 413), (status, body, raw[:100])
        assert isinstance(body["error"], str) and _is_one_clear_line(body["error"]), body
        assert after == before
    else:
        assert status == 200, (status, body, raw[:100])
        assert after - before == body["new"]


@settings(max_examples=400, deadline=None, suppress_health_check=FIXTURES_OK)
@given(raw=bodies)
async def test_any_admin_body_is_a_json_answer_and_never_half_enqueued(store: Store,
                                                                       raw: bytes) -> None:
    async with admin_client(store) as client:
        before = await count_jobs(store)
        async with client.post("/v1/jobs", data=raw, headers=AUTH) as resp:
            status, text, content_type = resp.status, await resp.text(), resp.content_type
        after = await count_jobs(store)
    await check_admin_answer(status, text, content_type, raw, before, after)


DEEP_BODIES = [b"[" * 100_000, b'{"jobIds": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
               b'{"jobIds": [' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"]}"]


async def test_deeply_nested_json_is_a_400_not_an_internal_error(store: Store) -> None:
    """A body nested deeper than the JSON parser's recursion limit is bad input like any
    other: a 400 that says so, not a 500 and a logged traceback."""
    async with admin_client(store) as client:
        for raw in DEEP_BODIES:
            before = await count_jobs(store)
            async with client.post("/v1/jobs", data=io.BytesIO(raw), headers=AUTH) as resp:
                status, text, content_type = resp.status, await resp.text(), resp.content_type
            after = await count_jobs(store)
            await check_admin_answer(status, text, content_type, raw, before, after)


HUGE_BODIES = [
    json.dumps({"jobIds": [str(uuid.uuid4()) for _ in range(MAX_IDS_PER_REQUEST + 1)]}).encode(),
    json.dumps({"jobIds": [0] * (BODY_LIMIT // 3)}).encode()[:BODY_LIMIT + 10],
    json.dumps({"jobIds": list(range(200_000))}).encode(),
    json.dumps({"jobIds": ["x" * 900_000]}).encode(),
    json.dumps({"jobIds": [str(uuid.uuid4()) for _ in range(MAX_IDS_PER_REQUEST - 1)]
                + ["not-a-uuid"]}).encode(),
]


async def test_a_running_daemon_answers_bad_admin_bodies_without_a_traceback(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet
) -> None:
    sim = await simulators(Mix())
    fleet = fleets(db_url, sim.url, {"HARVESTER_ADMIN_TOKEN": TOKEN})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    samples = [*HUGE_BODIES, *DEEP_BODIES, b"\xff\xfe\x00garbage", b"null", b'{"jobIds": null}',
               json.dumps({"jobIds": [str(uuid.uuid4()), 1.5, None]}).encode()]
    async with aiohttp.ClientSession() as session:
        for raw in samples:
            before = await pool.fetchval("SELECT count(*) FROM harvester.jobs")
            async with session.post(daemon.admin_url + "/v1/jobs", data=io.BytesIO(raw),
                                    headers=AUTH) as resp:
                status, text, content_type = resp.status, await resp.text(), resp.content_type
            after = await pool.fetchval("SELECT count(*) FROM harvester.jobs")
            await check_admin_answer(status, text, content_type, raw, before, after)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert await fleet.stop(daemon) == 0
    fleet.assert_healthy_logs()
    assert not daemon.events("admin.handler_failed")
