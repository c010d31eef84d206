"""The admin job API over real HTTP (aiohttp's TestServer on a loopback socket) against a
real database: auth, validation, limits, and one job in each state."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from harvester.admin import BODY_LIMIT, MAX_IDS_PER_REQUEST, SHOWN_ERRORS, Admin
from harvester.metrics import Metrics
from harvester.settings import load_settings
from harvester.store import create_pool
from harvester.tools.simulator import result_row
from tests.integration.test_commands import put_jobs_in_each_state
from tests.stores import Store

TOKEN = "admin-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOT_A_UUID = "not a UUID (expected 8-4-4-4-12 hexadecimal digits)"

Client = TestClient[Any, Any]


async def ready() -> dict[str, bool]:
    return {"database": True}


@asynccontextmanager
async def admin_client(store: Store, token: str | None = TOKEN, host: str = "127.0.0.1"
                       ) -> AsyncIterator[Client]:
    """The admin app as configured for ``host``, served on a loopback test socket."""
    settings = load_settings({"admin_token": token, "admin_host": host}, env_file=None)
    admin = Admin(settings, store, Metrics(), ready)
    async with TestClient(TestServer(admin.app())) as client:
        yield client


async def call(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


async def queued(pool: asyncpg.Pool) -> set[str]:
    return {str(r["job_id"]) for r in await pool.fetch("SELECT job_id FROM harvester.jobs")}


PostJobs = Callable[..., Awaitable[tuple[int, Any]]]


# ---------------------------------------------------------------- auth


async def test_write_endpoints_are_disabled_without_an_admin_token(store: Store,
                                                                    pool: asyncpg.Pool) -> None:
    job = str(uuid.uuid4())
    async with admin_client(store, token=None) as client:
        for headers in ({}, AUTH):
            status, body = await call(client, "POST", "/v1/jobs", json={"jobIds": [job]},
                                      headers=headers)
            assert status == 403
            assert body == {"error": "write endpoints are disabled: set HARVESTER_ADMIN_TOKEN "
                                     "to enable POST /v1/jobs"}
        assert await queued(pool) == set()
        # Reading needs no token when none is configured (the server binds loopback).
        await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", uuid.UUID(job))
        status, body = await call(client, "GET", f"/v1/jobs/{job}")
        assert (status, body["state"]) == (200, "pending")


async def test_posting_needs_the_right_bearer_token(store: Store, pool: asyncpg.Pool) -> None:
    job = str(uuid.uuid4())
    wrong: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer caf\u00e9"},
    ]
    async with admin_client(store) as client:
        for headers in wrong:
            async with client.post("/v1/jobs", json={"jobIds": [job]}, headers=headers) as resp:
                assert resp.status == 401, headers
                assert await resp.json() == {"error": "missing or wrong bearer token"}
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert await queued(pool) == set()

        for scheme in ("Bearer", "bearer"):
            status, body = await call(client, "POST", "/v1/jobs", json={"jobIds": [job]},
                                      headers={"Authorization": f"{scheme} {TOKEN}"})
            assert status == 200
        assert body == {"new": 0, "known": 1, "invalid": 0, "duplicates_in_request": 0}
        assert await queued(pool) == {job}


async def test_reading_a_job_needs_the_token_when_one_is_configured(store: Store,
                                                                    pool: asyncpg.Pool) -> None:
    job = uuid.uuid4()
    await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", job)
    async with admin_client(store) as client:
        status, body = await call(client, "GET", f"/v1/jobs/{job}")
        assert (status, body) == (401, {"error": "missing or wrong bearer token"})
        status, body = await call(client, "GET", f"/v1/jobs/{job}",
                                  headers={"Authorization": "Bearer nope"})
        assert status == 401
        status, body = await call(client, "GET", f"/v1/jobs/{job}", headers=AUTH)
        assert (status, body["job_id"]) == (200, str(job))


OFF_LOOPBACK = ["0.0.0.0", "::", "", "10.1.2.3", "harvester.internal"]


async def test_off_loopback_job_reads_need_a_token_and_say_so_when_none_is_set(
        store: Store, pool: asyncpg.Pool) -> None:
    """Bound where others can reach it, with no token configured, GET /v1/jobs/{id}
    used to hand the job and its mirror row to anyone (README "Security")."""
    job = uuid.uuid4()
    await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", job)
    for host in OFF_LOOPBACK:
        async with admin_client(store, token=None, host=host) as client:
            for headers in ({}, AUTH):
                status, body = await call(client, "GET", f"/v1/jobs/{job}", headers=headers)
                assert status == 403, host
                assert body == {"error": "job reads are disabled: the admin server listens on "
                                         f"{host}, not on loopback; set HARVESTER_ADMIN_TOKEN "
                                         "and send it as a bearer token"}
                assert str(job) not in json.dumps(body)
            # The kubelet and Prometheus need no token.
            for path in ("/healthz", "/readyz", "/metrics"):
                async with client.get(path) as resp:
                    assert resp.status == 200, (host, path)


async def test_off_loopback_with_a_token_reads_need_it(store: Store, pool: asyncpg.Pool
                                                       ) -> None:
    job = uuid.uuid4()
    await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", job)
    async with admin_client(store, host="0.0.0.0") as client:
        status, body = await call(client, "GET", f"/v1/jobs/{job}")
        assert (status, body) == (401, {"error": "missing or wrong bearer token"})
        status, body = await call(client, "GET", f"/v1/jobs/{job}", headers=AUTH)
        assert (status, body["job_id"]) == (200, str(job))


async def test_on_loopback_reads_stay_open_without_a_token(store: Store, pool: asyncpg.Pool
                                                           ) -> None:
    job = uuid.uuid4()
    await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", job)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        async with admin_client(store, token=None, host=host) as client:
            status, body = await call(client, "GET", f"/v1/jobs/{job}")
            assert (status, body["state"]) == (200, "pending"), host


# ---------------------------------------------------------------- validation


async def test_valid_ids_are_enqueued_normalised_with_counts(store: Store, pool: asyncpg.Pool
                                                             ) -> None:
    known, fresh = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO harvester.jobs (job_id) VALUES ($1)", known)
    async with admin_client(store) as client:
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH, json={
            "jobIds": [str(fresh).upper(), f"  {fresh.hex}  ", str(known)]})
    assert status == 200
    assert body == {"new": 1, "known": 2, "invalid": 0, "duplicates_in_request": 1}
    rows = await pool.fetch("SELECT job_id, state, next_poll_at <= now() AS due "
                            "FROM harvester.jobs WHERE job_id = $1", fresh)
    assert [(r["state"], r["due"]) for r in rows] == [("pending", True)]


async def test_one_bad_entry_enqueues_nothing_and_all_bad_entries_are_listed(
    store: Store, pool: asyncpg.Pool
) -> None:
    good = str(uuid.uuid4())
    entries: list[Any] = [good, "nope", 42, None, {"id": good}, "", "x" * 10_000,
                          "3f2504e0-4f89-11d3-9a0c-0305e82c3301\u0000",
                          "00000000-0000-0000-0000-000000000000", [True]]
    async with admin_client(store) as client:
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH,
                                  json={"jobIds": entries})
    assert status == 400
    assert body == {
        "error": "9 invalid job ID(s); nothing was enqueued",
        "invalid_count": 9,
        "invalid": [
            {"index": 1, "value": "nope", "reason": NOT_A_UUID},
            {"index": 2, "value": "42", "reason": "not a string (number)"},
            {"index": 3, "value": "null", "reason": "not a string (null)"},
            {"index": 4, "value": json.dumps({"id": good}), "reason": "not a string (object)"},
            {"index": 5, "value": "", "reason": "empty"},
            {"index": 6, "value": "x" * 60 + "… (10,000 characters)",
             "reason": "too long for a UUID"},
            {"index": 7, "value": "3f2504e0-4f89-11d3-9a0c-0305e82c3301\\x00",
             "reason": "contains a NUL byte"},
            {"index": 8, "value": "00000000-0000-0000-0000-000000000000",
             "reason": "the nil UUID is not a job ID"},
            {"index": 9, "value": "[true]", "reason": "not a string (array)"},
        ],
    }
    assert await queued(pool) == set()


async def test_the_list_of_bad_entries_is_capped(store: Store) -> None:
    async with admin_client(store) as client:
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH,
                                  json={"jobIds": [f"bad-{n}" for n in range(500)]})
    assert status == 400
    assert body["invalid_count"] == 500
    assert len(body["invalid"]) == SHOWN_ERRORS
    assert body["invalid"][-1]["index"] == SHOWN_ERRORS - 1


async def test_malformed_bodies_are_400_with_a_reason(store: Store, pool: asyncpg.Pool) -> None:
    bodies: list[bytes] = [b"", b"not json", b"\xff\xfe\x00", b'["a"]', b'{"ids": []}',
                           b'{"jobIds": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}', b"null"]
    async with admin_client(store) as client:
        for raw in bodies:
            status, body = await call(client, "POST", "/v1/jobs", headers=AUTH, data=raw)
            assert status == 400, raw
            assert body["error"].startswith("body must be"), body
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH,
                                  json={"jobIds": [str(uuid.uuid4())
                                                   for _ in range(MAX_IDS_PER_REQUEST + 1)]})
        assert status == 400
        assert body["error"] == (f"at most {MAX_IDS_PER_REQUEST} job IDs per request "
                                 f"(got {MAX_IDS_PER_REQUEST + 1}); split the batch")
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH, json={"jobIds": []})
        assert (status, body["new"]) == (200, 0)
    assert await queued(pool) == set()


async def test_a_body_past_the_limit_is_413_and_nothing_is_enqueued(store: Store,
                                                                    pool: asyncpg.Pool) -> None:
    ids = [str(uuid.uuid4()) for _ in range(BODY_LIMIT // 36)]
    raw = json.dumps({"jobIds": ids}).encode()
    assert len(raw) > BODY_LIMIT
    async with admin_client(store) as client:
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH, data=io.BytesIO(raw))
    assert (status, body) == (413, {"error": f"request body larger than {BODY_LIMIT} bytes"})
    assert await queued(pool) == set()


# ---------------------------------------------------------------- reading jobs


async def test_get_shows_each_state(store: Store, pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)
    async with admin_client(store) as client:
        async def get(job_id: uuid.UUID) -> dict[str, Any]:
            status, body = await call(client, "GET", f"/v1/jobs/{job_id}", headers=AUTH)
            assert status == 200
            assert isinstance(body, dict)
            return body

        pending = await get(f.pending)
        assert (pending["state"], pending["polls"], pending["last_status"]) == ("pending", 4, 202)
        assert pending["result"] is None
        assert pending["stuck"] is None
        assert pending["next_poll_at"] is not None

        stuck = await get(f.stuck)
        assert (stuck["state"], stuck["polls"], stuck["last_status"]) == ("stuck", 3, 500)
        assert stuck["last_error"] == "stuck: 3 consecutive 500s"
        assert stuck["stuck"]["times_seen"] == 7
        assert stuck["stuck"]["resolved_at"] is None
        assert stuck["result"] is None

        failed = await get(f.failed)
        assert (failed["state"], failed["failed_reason"], failed["last_status"]) == \
            ("failed", "forbidden", 403)
        assert failed["last_error"] == "403: token lacks jobs:read"
        assert failed["next_poll_at"] is None

        landed = await get(f.landed)
        served = result_row(f.landed)
        assert (landed["state"], landed["polls"], landed["last_status"]) == ("landed", 2, 200)
        assert landed["landed_at"] is not None
        row = landed["result"]
        assert row["payload"] == served
        assert row["normalized"] == served["normalized"]
        assert (row["id"], row["org_id"], row["domain"], row["quality_composite"]) == \
            (served["id"], served["orgId"], served["domain"], served["qualityComposite"])
        assert row["harvested_at"] is not None

        resolved = await get(f.stuck_resolved)
        assert resolved["stuck"]["resolved_at"] is not None

        # Any spelling of the ID finds the job.
        assert (await get(uuid.UUID(str(f.pending).upper())))["job_id"] == str(f.pending)
        status, body = await call(client, "GET", f"/v1/jobs/{str(f.pending).upper()}",
                                  headers=AUTH)
        assert (status, body["job_id"]) == (200, str(f.pending))

        status, body = await call(client, "GET", f"/v1/jobs/{uuid.uuid4()}", headers=AUTH)
        assert (status, body) == (404, {"error": "unknown job"})
        status, body = await call(client, "GET", "/v1/jobs/not-a-job", headers=AUTH)
        assert (status, body) == (400, {"error": f"job ID {NOT_A_UUID}"})


async def test_everything_else_is_a_json_404_or_405(store: Store) -> None:
    async with admin_client(store) as client:
        for path in ("/", "/nope", "/v1/jobs/", "/v1/jobs/a/b", "/v2/jobs"):
            status, body = await call(client, "GET", path, headers=AUTH)
            assert (status, body) == (404, {"error": "not found"}), path
        status, body = await call(client, "DELETE", "/v1/jobs", headers=AUTH)
        assert (status, body) == (405, {"error": "method not allowed"})
        status, body = await call(client, "PUT", f"/v1/jobs/{uuid.uuid4()}", headers=AUTH)
        assert status == 405
        status, body = await call(client, "GET", "/healthz")
        assert (status, body) == (200, {"status": "ok"})


async def test_a_database_that_is_away_is_a_json_503_and_nothing_half_done(db_url: str) -> None:
    closed = await create_pool(db_url, min_size=1, max_size=1)
    await closed.close()
    async with admin_client(Store(closed)) as client:
        status, body = await call(client, "POST", "/v1/jobs", headers=AUTH,
                                  json={"jobIds": [str(uuid.uuid4())]})
        assert (status, body) == (503, {"error": "database unavailable; nothing was enqueued, "
                                                 "try again"})
        status, body = await call(client, "GET", f"/v1/jobs/{uuid.uuid4()}", headers=AUTH)
        assert (status, body) == (503, {"error": "database unavailable"})


# ---------------------------------------------------------------- following and listing


async def test_get_shows_what_batch_status_said_and_how_a_stuck_record_closed(
    store: Store, pool: asyncpg.Pool
) -> None:
    f = await put_jobs_in_each_state(pool)
    await pool.execute(
        """
        UPDATE harvester.jobs
           SET upstream_status = 'running', status_checked_at = now() - interval '5 seconds',
               status_since = now() - interval '10 minutes', status_checks = 12,
               next_step = 'status'
         WHERE job_id = $1
        """, f.due_later)
    await pool.execute(
        "UPDATE harvester.stuck_jobs SET resolved_at = now(), resolution = 'acknowledged', "
        "resolved_by = 'alice', resolution_note = 'ticket 4711' WHERE job_id = $1", f.stuck)
    async with admin_client(store) as client:
        status, body = await call(client, "GET", f"/v1/jobs/{f.due_later}", headers=AUTH)
        assert status == 200
        assert (body["upstream_status"], body["status_checks"], body["next_step"]) == \
            ("running", 12, "status")
        assert body["finished_seen_at"] is None
        checked = datetime.fromisoformat(body["status_checked_at"])
        since = datetime.fromisoformat(body["status_since"])
        assert since < checked
        status, body = await call(client, "GET", f"/v1/jobs/{f.pending}", headers=AUTH)
        assert (body["upstream_status"], body["next_step"], body["status_checked_at"]) == \
            ("extraction_done", "result", None)
        status, body = await call(client, "GET", f"/v1/jobs/{f.stuck}", headers=AUTH)
        assert {k: body["stuck"][k] for k in ("resolution", "resolved_by", "resolution_note")} \
            == {"resolution": "acknowledged", "resolved_by": "alice",
                "resolution_note": "ticket 4711"}
        status, body = await call(client, "GET", f"/v1/jobs/{f.stuck_resolved}", headers=AUTH)
        assert (body["stuck"]["resolution"], body["stuck"]["resolved_by"]) == \
            ("landed", "harvester")


async def add_jobs(pool: asyncpg.Pool, n: int, state: str, reason: str | None = None
                   ) -> list[uuid.UUID]:
    """``n`` jobs in ``state``, one second apart in that state's order column."""
    ids = [uuid.uuid4() for _ in range(n)]
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, state, failed_reason, next_poll_at, landed_at,
                                    updated_at)
        SELECT id, $2,
               CASE WHEN $2 = 'failed' THEN coalesce($3, 'not_found') END,
               CASE WHEN $2 IN ('pending', 'stuck') THEN now() + make_interval(secs => n) END,
               CASE WHEN $2 = 'landed' THEN now() - make_interval(secs => n) END,
               now() - make_interval(secs => n)
          FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)
        """, ids, state, reason)
    return ids


async def test_jobs_are_listed_by_state_a_bounded_page_at_a_time(store: Store,
                                                                  pool: asyncpg.Pool) -> None:
    pending = await add_jobs(pool, 5, "pending")
    failed_404 = await add_jobs(pool, 4, "failed", "not_found")
    failed_403 = await add_jobs(pool, 2, "failed", "forbidden")
    landed = await add_jobs(pool, 3, "landed")
    async with admin_client(store) as client:
        async def pages(query: str) -> list[list[str]]:
            found: list[list[str]] = []
            cursor: str | None = None
            while True:
                path = f"/v1/jobs?{query}" + (f"&after={cursor}" if cursor else "")
                status, body = await call(client, "GET", path, headers=AUTH)
                assert status == 200, body
                found.append([job["job_id"] for job in body["jobs"]])
                cursor = body["next"]
                if cursor is None:
                    return found

        # Open jobs: the next due first; landed and failed: the most recent first.
        assert await pages("state=pending&limit=2") == [
            [str(j) for j in pending[:2]], [str(j) for j in pending[2:4]], [str(pending[4])]]
        assert await pages("state=landed&limit=5") == [[str(j) for j in landed]]
        assert await pages("reason=not_found&limit=3") == [
            [str(j) for j in failed_404[:3]], [str(failed_404[3])]]
        both = await pages("state=failed&reason=forbidden&reason=not_found&limit=10")
        assert sorted(both[0]) == sorted(str(j) for j in failed_404 + failed_403)
        assert await pages("state=stuck") == [[]]

        status, body = await call(client, "GET", "/v1/jobs?reason=not_found&limit=1",
                                  headers=AUTH)
        job = body["jobs"][0]
        assert (job["state"], job["failed_reason"]) == ("failed", "not_found")
        assert sorted(job) == sorted([
            "job_id", "state", "enqueued_at", "requeued_at", "updated_at", "next_poll_at",
            "polls", "last_status", "last_error", "failed_reason", "upstream_status",
            "status_checked_at", "next_step", "landed_at", "leased_until"])

        for query, message in [
            ("", "state must be one of pending, stuck, landed, failed"),
            ("state=everything", "state must be one of pending, stuck, landed, failed"),
            ("state=pending&reason=not_found", "reason applies to state=failed only"),
            ("reason=gone", "reason must be one of forbidden, upstream_failed, not_found, "
                            "expired or http_<status>"),
            ("state=failed&limit=0", "limit must be a whole number from 1 to 1000"),
            ("state=failed&limit=1001", "limit must be a whole number from 1 to 1000"),
            ("state=failed&limit=ten", "limit must be a whole number from 1 to 1000"),
            ("state=failed&after=bogus", 'after must be the cursor of a previous page '
                                         '(its "next")'),
            ("state=failed&page=2", "unknown query parameter(s): page"),
        ]:
            status, body = await call(client, "GET", f"/v1/jobs?{query}", headers=AUTH)
            assert (status, body) == (400, {"error": message}), query
        status, body = await call(client, "GET", "/v1/jobs?state=failed")
        assert status == 401
    async with admin_client(store, token=None) as client:
        status, body = await call(client, "GET", "/v1/jobs?state=landed")
        assert (status, len(body["jobs"])) == (200, 3)
