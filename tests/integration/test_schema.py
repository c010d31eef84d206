"""The migrations are the whole schema, idempotent, and keep the claim on its index."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from harvester.migrations import load_migrations, migrate
from harvester.store import Connection
from harvester.store.purge import PURGE_FINISHED_SQL, PURGE_RESULTS_SQL
from harvester.store.queue import CLAIM_SQL

EXPECTED_COLUMNS = {
    "jobs": {
        "job_id": "uuid", "state": "text", "enqueued_at": "timestamp with time zone",
        "requeued_at": "timestamp with time zone", "updated_at": "timestamp with time zone",
        "next_poll_at": "timestamp with time zone", "polls": "integer", "last_status": "integer",
        "last_error": "text", "landed_at": "timestamp with time zone", "failed_reason": "text",
        "upstream_status": "text", "attempt": "integer", "consecutive_500s": "integer",
        "lease_seq": "bigint", "leased_until": "timestamp with time zone", "leased_by": "text",
        "next_step": "text", "status_checks": "integer",
        "status_checked_at": "timestamp with time zone", "status_since": "timestamp with time zone",
        "finished_seen_at": "timestamp with time zone", "consecutive_403s": "integer",
    },
    "extraction_results": {
        "job_id": "uuid", "id": "uuid", "org_id": "uuid", "domain": "text", "schema_id": "text",
        "data_type": "text", "normalized": "jsonb", "raw_blob_key": "text",
        "quality_completeness": "double precision", "quality_validation": "double precision",
        "quality_composite": "double precision", "latency_ms": "integer",
        "delivered_at": "timestamp with time zone", "created_at": "timestamp with time zone",
        "payload": "jsonb", "harvested_at": "timestamp with time zone", "changed_xid": "xid8",
    },
    "mirror_deletions": {
        "changed_xid": "xid8", "deleted_at": "timestamp with time zone", "job_ids": "ARRAY",
    },
    "stuck_jobs": {
        "job_id": "uuid", "first_seen_at": "timestamp with time zone",
        "last_seen_at": "timestamp with time zone", "times_seen": "integer",
        "last_status": "integer", "last_body": "text", "resolved_at": "timestamp with time zone",
        "resolution": "text", "resolved_by": "text", "resolution_note": "text",
    },
    "schema_migrations": {
        "version": "integer", "name": "text", "checksum": "text",
        "applied_at": "timestamp with time zone",
    },
    "workers": {
        "worker_id": "text", "hostname": "text", "pid": "integer", "version": "text",
        "started_at": "timestamp with time zone", "heartbeat_at": "timestamp with time zone",
        "auth_circuit": "text", "paused_until": "timestamp with time zone", "in_flight": "integer",
        "send_rate": "double precision", "permission_circuit": "text", "upstream_alarm": "text",
        "upstream_clock_skew": "double precision",
    },
}


async def _schema(conn: Connection) -> dict[str, dict[str, str]]:
    rows = await conn.fetch(
        """
        SELECT c.table_name, c.column_name, c.data_type
          FROM information_schema.columns c
          JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE c.table_schema = 'harvester' AND t.table_type = 'BASE TABLE'
        """)
    schema: dict[str, dict[str, str]] = {}
    for row in rows:
        schema.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    return schema


async def test_migrating_twice_equals_migrating_once(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        first = await migrate(conn)
        after_first = await _schema(conn)
        second = await migrate(conn)
        after_second = await _schema(conn)
        recorded = await conn.fetch("SELECT version, name FROM harvester.schema_migrations")
    finally:
        await conn.close()
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert second == []
    assert after_first == after_second
    assert [r["version"] for r in recorded] == [m.version for m in load_migrations()]


async def test_columns_and_types_match_the_spec(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await _schema(conn) == EXPECTED_COLUMNS
        views = await conn.fetch(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'harvester'")
    assert sorted(v["table_name"] for v in views) == ["open_stuck_jobs", "result_bodies"]


async def test_sql_feed_makes_a_due_pending_job_and_notifies(db_url: str, pool: asyncpg.Pool
                                                               ) -> None:
    listener = await asyncpg.connect(db_url)
    heard = asyncio.Queue[str]()
    await listener.add_listener("harvester_jobs", lambda *args: heard.put_nowait(args[2]))
    try:
        await pool.execute(
            "INSERT INTO harvester.jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING",
            uuid.UUID("6a0f0c2e-0d0c-4c4e-9a3b-0e5e1d6c7b8a"))
        row = await pool.fetchrow(
            "SELECT state, next_poll_at <= now() AS due, polls FROM harvester.jobs")
        channel = await asyncio.wait_for(heard.get(), timeout=5)
    finally:
        await listener.close()
    assert row is not None
    assert dict(row) == {"state": "pending", "due": True, "polls": 0}
    assert channel == "harvester_jobs"


async def test_a_changed_migration_is_refused(empty_db_url: str, tmp_path: object) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn)
        await conn.execute("UPDATE harvester.schema_migrations SET checksum = 'edited'")
        with pytest.raises(Exception, match="was changed after it was applied"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_concurrent_migrations_wait_for_the_lock(empty_db_url: str) -> None:
    conns = [await asyncpg.connect(empty_db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    applied = sorted(len(r) for r in results)
    assert applied == [0, 0, len(load_migrations())]


async def test_claim_uses_the_partial_index_with_100k_rows_not_due(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, next_poll_at)
        SELECT gen_random_uuid(), now() + interval '1 day' + g * interval '1 second'
          FROM generate_series(1, 100000) g
        """)
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, state, next_poll_at, landed_at)
        SELECT gen_random_uuid(), 'landed', NULL, now() FROM generate_series(1, 20000)
        """)
    await pool.execute("INSERT INTO harvester.jobs (job_id) SELECT gen_random_uuid() "
                       "FROM generate_series(1, 50)")
    # The mirror holds the landed jobs' rows and those of 10 due jobs fed again (their
    # queue rows purged, then fed anew): the claim lands those 10 without a poll.
    refed = [r["job_id"] for r in await pool.fetch(
        "SELECT job_id FROM harvester.jobs WHERE state = 'pending' AND next_poll_at <= now() "
        "LIMIT 10")]
    await pool.execute(
        """
        INSERT INTO harvester.extraction_results (job_id, id, org_id, domain, data_type,
               normalized, quality_completeness, quality_validation, quality_composite,
               created_at, payload)
        SELECT job_id, gen_random_uuid(), gen_random_uuid(), 'example.com', 'product', '{}',
               1, 1, 1, now(), '{}'
          FROM harvester.jobs WHERE state = 'landed' OR job_id = ANY($1::uuid[])
        """, refed)
    await pool.execute("ANALYZE harvester.jobs; ANALYZE harvester.extraction_results")
    async with pool.acquire() as conn, conn.transaction():
        plan = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + CLAIM_SQL,
                                   64, 60.0, "explain")
        claimed = await conn.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE leased_by = 'explain'")
        landed = await conn.fetchval(
            "SELECT count(*) FROM harvester.jobs WHERE job_id = ANY($1::uuid[]) "
            "AND state = 'landed' AND polls = 0 AND leased_by IS NULL", refed)
    plan = json.loads(plan)
    text = json.dumps(plan)
    assert "jobs_due_idx" in text
    assert "Seq Scan" not in text
    assert (claimed, landed) == (40, 10)
    # The scan stops at the due rows: it never walks the 100,000 that are not due.
    scans = _nodes(plan[0]["Plan"], "Index Scan") + _nodes(plan[0]["Plan"], "Index Only Scan")
    due_scan = next(n for n in scans if n.get("Index Name") == "jobs_due_idx")
    assert due_scan["Actual Rows"] <= 64
    # Whether a due job is in the mirror is one probe of its primary key, not a scan
    # (the probes run inside the due scan and count in its blocks).
    probes = [n for n in _nodes(due_scan, "Index Only Scan") + _nodes(due_scan, "Index Scan")
              if n.get("Index Name") == "extraction_results_pkey"]
    assert probes, text
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in probes) <= 10
    assert _blocks(due_scan) - sum(_blocks(n) for n in probes) < 100


async def test_the_purge_walks_the_finished_indexes_oldest_first(pool: asyncpg.Pool) -> None:
    """One purge batch reads about the rows it deletes, however many open and recent
    finished jobs the queue and the mirror hold (README "Retention")."""
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, next_poll_at)
        SELECT gen_random_uuid(), now() + g * interval '1 second'
          FROM generate_series(1, 50000) g
        """)
    for state, extra in (("landed", "landed_at"), ("failed", "failed_reason, updated_at")):
        value = "now() - interval '2 days'" if state == "landed" else \
            "'not_found', now() - interval '2 days'"
        await pool.execute(
            f"INSERT INTO harvester.jobs (job_id, state, next_poll_at, {extra}) "
            f"SELECT gen_random_uuid(), '{state}', NULL, {value} FROM generate_series(1, 600)")
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, state, next_poll_at, landed_at)
        SELECT gen_random_uuid(), 'landed', NULL, now() FROM generate_series(1, 50000)
        """)
    await pool.execute(
        """
        INSERT INTO harvester.extraction_results (job_id, id, org_id, domain, data_type,
               normalized, quality_completeness, quality_validation, quality_composite,
               created_at, payload, harvested_at)
        SELECT job_id, gen_random_uuid(), gen_random_uuid(), 'example.com', 'product', '{}',
               1, 1, 1, now(), '{}', coalesce(landed_at, now())
          FROM harvester.jobs WHERE state = 'landed'
        """)
    await pool.execute("ANALYZE harvester.jobs; ANALYZE harvester.extraction_results")
    for sql, deleted, index in ((PURGE_FINISHED_SQL, 1000, ("jobs_landed_at_idx",
                                                             "jobs_failed_idx")),
                                (PURGE_RESULTS_SQL, 600, ("extraction_results_harvested_idx",))):
        plan = json.loads(await pool.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, 86400.0, 1000))
        text = json.dumps(plan)
        assert "Seq Scan" not in text, text
        for name in index:
            assert name in text
        walked = [n for n in _nodes(plan[0]["Plan"], "Index Scan") if n["Index Name"] in index]
        assert sum(n["Actual Rows"] for n in walked) == deleted
        deletes = _nodes(plan[0]["Plan"], "ModifyTable")
        assert sum(n["Actual Rows"] for n in deletes) == deleted


def _blocks(node: dict[str, Any]) -> int:
    return int(node["Shared Hit Blocks"] + node.get("Shared Read Blocks", 0))


def _nodes(plan: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Node Type") == kind else []
    for child in plan.get("Plans", []):
        found += _nodes(child, kind)
    return found


async def test_version_2_closes_the_stuck_records_version_1_left_open(empty_db_url: str) -> None:
    """Version 1 closed a stuck record only when the row landed: a stuck job that then
    expired kept its record open for ever. Upgrading closes it, keeping how it ended."""
    first = next(m for m in load_migrations() if m.version == 1)
    expired, landed, still_stuck = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute(
            "CREATE SCHEMA harvester; CREATE TABLE harvester.schema_migrations (version integer "
            "PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz "
            "NOT NULL DEFAULT now())")
        await conn.execute(first.sql.replace("CREATE SCHEMA IF NOT EXISTS harvester;", ""))
        await conn.execute("INSERT INTO harvester.schema_migrations (version, name, checksum) "
                           "VALUES (1, $1, $2)", first.name, first.checksum)
        await conn.execute(
            """
            INSERT INTO harvester.jobs (job_id, state, next_poll_at, failed_reason, landed_at)
            VALUES ($1, 'failed', NULL, 'expired', NULL), ($2, 'landed', NULL, NULL, now()),
                   ($3, 'stuck', now(), NULL, NULL)
            """, expired, landed, still_stuck)
        await conn.execute(
            "INSERT INTO harvester.stuck_jobs (job_id, resolved_at) VALUES ($1, NULL), "
            "($2, now()), ($3, NULL)", expired, landed, still_stuck)
        applied = await migrate(conn)
        rows = {r["job_id"]: r for r in await conn.fetch(
            "SELECT job_id, resolved_at IS NOT NULL AS closed, resolution, resolved_by "
            "FROM harvester.stuck_jobs")}
        next_steps = {r["next_step"] for r in await conn.fetch(
            "SELECT next_step FROM harvester.jobs")}
    finally:
        await conn.close()
    assert [m.version for m in applied] == [m.version for m in load_migrations()][1:]
    assert dict(rows[expired]) | {"job_id": None} == {
        "job_id": None, "closed": True, "resolution": "expired", "resolved_by": "harvester"}
    assert (rows[landed]["closed"], rows[landed]["resolution"]) == (True, "landed")
    assert (rows[still_stuck]["closed"], rows[still_stuck]["resolution"]) == (False, None)
    assert next_steps == {"status"}
