"""Operator reads stay bounded as the queue grows: every page of `harvester jobs` /
``GET /v1/jobs`` walks its state's index in order and stops after one page (README
"Commands"), whatever the number of rows in other states or further down the list."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from harvester.ports import JobCursor
from harvester.store.operators import list_jobs_sql
from tests.stores import Store

INDEX = {"pending": "jobs_due_idx", "stuck": "jobs_due_idx", "landed": "jobs_landed_at_idx",
         "failed": "jobs_failed_idx"}


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.fixture
async def big_queue(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, state, next_poll_at, landed_at, failed_reason,
                                    updated_at)
        SELECT gen_random_uuid(), s.state,
               CASE WHEN s.state IN ('pending', 'stuck') THEN now() + g * interval '1 second' END,
               CASE WHEN s.state = 'landed' THEN now() - g * interval '1 second' END,
               CASE WHEN s.state = 'failed'
                    THEN (ARRAY['not_found', 'expired', 'forbidden'])[1 + g % 3] END,
               now() - g * interval '1 second'
          FROM generate_series(1, 40000) g,
               (VALUES ('pending'), ('stuck'), ('landed'), ('failed')) AS s(state)
        """)
    await pool.execute("ANALYZE harvester.jobs")
    return pool


async def test_a_page_walks_its_index_and_stops(big_queue: asyncpg.Pool) -> None:
    async with big_queue.acquire() as conn:
        # As a prepared statement reused many times would run: a generic plan.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for state in INDEX:
            for paged in (False, True):
                await _check_page(conn, state, paged)


async def _check_page(conn: Any, state: str, paged: bool) -> None:
    after = None
    if paged:
        open_state = state in ("pending", "stuck")
        at = datetime.now(UTC) + (timedelta(hours=1) if open_state else -timedelta(hours=1))
        after = JobCursor(at, uuid.uuid4())
    reasons = ["not_found"] if state == "failed" else []
    sql, args = list_jobs_sql(state, reasons=reasons, limit=100, after=after)
    plan = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql,
                                          *args))
    rows = await conn.fetch(sql, *args)
    where = f"{state}, paged={paged}: {json.dumps(plan, indent=1)}"
    assert len(rows) == 101, where
    nodes = _nodes(plan[0]["Plan"])
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], where
    scans = [n for n in nodes if n.get("Index Name")]
    assert [n["Index Name"] for n in scans] == [INDEX[state]], where
    # About one page of rows (an incremental sort reads one tie group further; a failure
    # reason filter steps over the other reasons), never the 40,000 of the state.
    assert scans[0]["Actual Rows"] <= (200 if not reasons else 400), where


async def test_queue_gauges_count_open_jobs_by_upstream_status(pool: asyncpg.Pool) -> None:
    """The figures behind harvester_queue_jobs_by_upstream_status and HarvesterNothingLands:
    NULL is "not asked yet", a status nobody knows yet is "other", closed jobs not at all."""
    rows = [("pending", None), ("pending", None), ("pending", "running"),
            ("pending", "extraction_done"), ("pending", "paused_by_admin"),
            ("stuck", "completed"), ("landed", "completed"), ("failed", "failed")]
    for state, upstream in rows:
        await pool.execute(
            "INSERT INTO harvester.jobs (job_id, state, upstream_status, next_poll_at, "
            "landed_at, failed_reason) VALUES ($1, $2, $3, CASE WHEN $2 IN ('pending', "
            "'stuck') THEN now() END, CASE WHEN $2 = 'landed' THEN now() END, "
            "CASE WHEN $2 = 'failed' THEN 'upstream_failed' END)", uuid.uuid4(), state, upstream)
    gauges = await Store(pool).queue_gauges()
    by_upstream = {k: v for k, v in gauges.items() if k.startswith("upstream:")}
    assert by_upstream == {"upstream:pending:not_asked": 2.0, "upstream:pending:running": 1.0,
                           "upstream:pending:extraction_done": 1.0,
                           "upstream:pending:other": 1.0, "upstream:stuck:completed": 1.0}
    assert (gauges["pending"], gauges["stuck"]) == (5.0, 1.0)
