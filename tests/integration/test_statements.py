"""Every statement of the store, by name, EXPLAINed against a migrated database.

The store's SQL lives in ``harvester/store/queries/*.sql`` (README "Test it", layout).
This walks each file's every statement, and every variant its builders make, with
sample parameters: a statement that no longer parses, names a column that is gone or
binds a parameter of the wrong type fails here, before any test reaches it. On a queue
of some 100,000 rows the statements that must stay cheap as it grows are checked for
their index: the claims and the next due time on the due index, the purge on the
finished and harvested indexes, the open stuck records on their partial index, and no
statement reads a whole table where an index would do.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from harvester.jobquery import LISTABLE_STATES
from harvester.ports import JobCursor, Selection
from harvester.store import (
    changes,
    create_pool,
    figures,
    listen,
    mirror,
    operators,
    purge,
    queries,
    queue,
)
from harvester.store.listen import CHANNEL_JOBS, CHANNEL_PACE
from harvester.store.purge import RETENTION_LOCK_KEY

IDS = [uuid.uuid4(), uuid.uuid4()]
NOW = datetime.now(UTC)
SELECTIONS = [Selection("failed"), Selection("failed", ("not_found",), 60.0, 86400.0),
              Selection("stuck", (), 3600.0, None), Selection("stuck", (), None, 60.0)]
Variant = tuple[dict[str, str], tuple[Any, ...]]


def _heartbeat() -> tuple[Any, ...]:
    return ("w", "host", 1, "0.1.0", "closed", NOW, 0, None, "closed", None, None)


def _list_jobs() -> list[Variant]:
    variants: list[Variant] = []
    for state in LISTABLE_STATES:
        for reasons in ([], ["not_found"]) if state == "failed" else ([],):
            for after in (None, JobCursor(NOW, uuid.uuid4())):
                sql, args = operators.list_jobs_sql(state, reasons=reasons, limit=100,
                                                    after=after)
                where = sql.split("WHERE", 1)[1].split("ORDER BY")[0].strip()
                order = sql.split("ORDER BY", 1)[1].split("LIMIT")[0].strip()
                variants.append(({"where": where, "order": order}, tuple(args)))
    return variants


def _requeue() -> list[Variant]:
    variants: list[Variant] = [({"where": operators.BY_IDS}, (IDS,))]
    for selection in SELECTIONS:
        where, args = operators.selection_where(selection)
        variants.append(({"where": where}, tuple(args)))
    return variants


# (file, statement) -> the variants to EXPLAIN: the parts a builder fills, and parameters.
SAMPLES: dict[tuple[str, str], list[Variant]] = {
    ("queue", "claim"): [({}, (100, 60.0, "w"))],
    ("queue", "next_due"): [({}, ())],
    ("queue", "write"): [({}, (*queue.JOB_COLUMNS.arrays([]), *queue.RESULT_COLUMNS.arrays([]),
                               *queue.STUCK_COLUMNS.arrays([])))],
    ("queue", "release"): [({}, tuple(queue.RELEASE_COLUMNS.arrays([])))],
    ("queue", "heartbeat"): [({}, _heartbeat())],
    ("queue", "forget_worker"): [({}, ("w",))],
    ("queue", "forget_stale_workers"): [({}, ())],
    ("listen", "announce_pace"): [({}, (CHANNEL_PACE, "{}"))],
    ("listen", "keepalive"): [({}, ())],
    ("purge", "purge_lock"): [({}, (RETENTION_LOCK_KEY,))],
    ("purge", "purge_unlock"): [({}, (RETENTION_LOCK_KEY,))],
    ("purge", "purge_finished"): [({}, (86400.0, 1000))],
    ("purge", "purge_results"): [({}, (86400.0, 1000))],
    ("mirror", "compact"): [({}, (mirror.NIL, 500))],
    ("operators", "enqueue"): [({}, (IDS,))],
    ("operators", "requeue"): _requeue(),
    ("operators", "requeue_dry_run"): _requeue(),
    ("operators", "requeue_named"): [({}, (IDS,))],
    ("operators", "revive"): [({}, (IDS,))],
    ("operators", "notify_fed"): [({}, (CHANNEL_JOBS,))],
    ("operators", "acknowledge_stuck"): [({}, (IDS, "op", "a note"))],
    ("operators", "stuck_records"): [({"where": w, "order": o}, (100,))
                                     for w, o in operators.STUCK_LISTS.values()],
    ("operators", "stuck_count"): [({"where": w}, ()) for w, _ in operators.STUCK_LISTS.values()],
    ("operators", "list_jobs"): _list_jobs(),
    ("operators", "job"): [({}, (IDS[0],))],
    ("operators", "job_harvested"): [({}, (IDS[0],))],
    ("operators", "job_result"): [({}, (IDS[0],))],
    ("operators", "job_stuck"): [({}, (IDS[0],))],
    ("operators", "ping"): [({}, ())],
    ("schema", "table_exists"): [({}, ("jobs",))],
    ("changes", "changes_after"): [({}, (None, 1000)), ({}, (f"7/{IDS[0]}", 1000))],
    ("schema", "databases"): [({}, ())],
    **{("figures", name): [({}, ())] for name in figures.SQL if name != "table_sizes"},
    ("figures", "table_sizes"): [({}, (figures.COUNTED_BELOW,))],
}
UTILITY = {("operators", "durable")}
"""Statements EXPLAIN does not take (SET): run instead, in a transaction rolled back."""

# The indexes a statement's plan must walk on a large queue.
INDEXES: dict[tuple[str, str], set[str]] = {
    ("queue", "claim"): {"jobs_due_idx", "extraction_results_pkey"},
    ("queue", "next_due"): {"jobs_due_idx"},
    ("purge", "purge_finished"): {"jobs_landed_at_idx", "jobs_failed_idx", "stuck_jobs_pkey"},
    ("purge", "purge_results"): {"extraction_results_harvested_idx"},
    ("mirror", "compact"): {"extraction_results_pkey"},
    ("figures", "due_backlog"): {"jobs_due_idx"},
    ("figures", "stuck_open"): {"stuck_jobs_open_idx"},
    ("figures", "oldest_finished"): {"jobs_landed_at_idx", "jobs_failed_idx"},
    ("operators", "job"): {"jobs_pkey"},
    ("operators", "job_result"): {"extraction_results_pkey"},
}
# Statements that may read a whole table: status counts the finished jobs of each state;
# closed stuck records have no index of their own, so `harvester stuck --resolved` and
# `--all` read them all (bounded by retention: a closed record goes with its job), and
# the planner then joins the queue by hash. The open records never may.
WHOLE_TABLE: dict[tuple[str, str], set[str]] = {
    ("figures", "closed_jobs"): {"jobs"},
    ("figures", "failed_by_reason"): {"jobs"},
    # Counted only while their heap is under figures.COUNTED_BELOW (a few ms).
    ("figures", "table_sizes"): {"jobs", "extraction_results"},
    ("operators", "stuck_records"): {"stuck_jobs", "jobs"},
    ("operators", "stuck_count"): {"stuck_jobs"},
}


@pytest.fixture
async def large_queue(pool: asyncpg.Pool) -> asyncpg.Pool:
    """25,000 jobs in each state; stuck records for a tenth of the stuck, landed and
    failed jobs, most of them closed; mirror rows for the landed jobs and for 100,000
    more whose queue rows retention already deleted (the mirror outgrows the queue).
    (A small mirror: test_the_claim_probes_the_mirror_however_small_it_looks.)"""
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, state, next_poll_at, landed_at, failed_reason,
                                    updated_at)
        SELECT gen_random_uuid(), s.state,
               CASE WHEN s.state IN ('pending', 'stuck')
                    THEN now() + (g - 100) * interval '1 second' END,
               CASE WHEN s.state = 'landed' THEN now() - g * interval '1 minute' END,
               CASE WHEN s.state = 'failed' THEN 'not_found' END,
               now() - g * interval '1 minute'
          FROM generate_series(1, 25000) g,
               (VALUES ('pending'), ('stuck'), ('landed'), ('failed')) AS s(state)
        """)
    await pool.execute(
        """
        INSERT INTO harvester.stuck_jobs (job_id, first_seen_at, resolved_at)
        SELECT job_id, now() - g * interval '1 second', CASE WHEN g % 50 <> 0 THEN now() END
          FROM (SELECT job_id, row_number() OVER () AS g FROM harvester.jobs
                 WHERE state <> 'pending') AS j
         WHERE g % 10 = 0
        """)
    await pool.execute(
        """
        INSERT INTO harvester.extraction_results (job_id, id, org_id, domain, data_type,
               normalized, quality_completeness, quality_validation, quality_composite,
               created_at, payload, harvested_at)
        SELECT job_id, gen_random_uuid(), gen_random_uuid(), 'example.com', 'product', '{}',
               1, 1, 1, now(), '{}', landed_at
          FROM harvester.jobs WHERE state = 'landed'
        UNION ALL
        SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'example.com',
               'product', '{}'::jsonb, 1, 1, 1, now(), '{}'::jsonb, now() - g * interval '1 second'
          FROM generate_series(1, 100000) g
        """)
    await pool.execute("ANALYZE harvester.jobs; ANALYZE harvester.stuck_jobs; "
                       "ANALYZE harvester.extraction_results")
    return pool


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _statements() -> dict[tuple[str, str], str]:
    """Every statement of every file, as its adapter loaded it."""
    loaded = queries.loaded()
    found = {(file, name): text for file, statements in loaded.items()
             for name, text in statements.items()}
    # The schema checks are the commands'; they load the file when they run.
    found.update({("schema", name): text
                  for name, text in queries.load("schema").items()})
    return found


def test_every_statement_file_is_loaded_by_its_adapter_and_has_samples() -> None:
    assert {figures.SQL.file, listen.SQL.file, mirror.SQL.file, operators.SQL.file,
            purge.SQL.file, queue.SQL.file, changes.SQL.file} | {"schema"} == set(queries.files())
    statements = _statements()
    assert set(statements) == set(SAMPLES) | UTILITY
    for (file, name), text in statements.items():
        built = queries.loaded()[file].placeholders(name) if file != "schema" else set()
        for parts, _ in SAMPLES.get((file, name), []):
            assert set(parts) == built, (file, name)
        assert "{" not in text.replace("{where}", "").replace("{order}", ""), (file, name)


async def test_every_statement_explains_and_the_queue_stays_on_its_indexes(
        large_queue: asyncpg.Pool, db_url: str) -> None:
    # The daemon's own session settings (create_pool's queue_plans), as it runs them.
    daemon = await create_pool(db_url, min_size=1, max_size=1, queue_plans=True)
    try:
        async with daemon.acquire() as conn:
            for (file, name), text in sorted(_statements().items()):
                if (file, name) in UTILITY:
                    async with conn.transaction():
                        await conn.execute(text)
                    continue
                for parts, args in SAMPLES[(file, name)]:
                    sql = text.format(**parts) if parts else text
                    plan = json.loads(await conn.fetchval(
                        "EXPLAIN (FORMAT JSON) " + sql, *args))
                    _check(file, name, parts, plan[0]["Plan"])
            # The top-up claim is made from the claim: the same plan.
            plan = json.loads(await conn.fetchval(
                "EXPLAIN (FORMAT JSON) " + queue.CLAIM_SOON_SQL, 100, 60.0, "w", 1.0))
            _check("queue", "claim", {}, plan[0]["Plan"])
    finally:
        await daemon.close()


def _check(file: str, name: str, parts: dict[str, str], plan: dict[str, Any]) -> None:
    nodes = _nodes(plan)
    where = f"{file}.sql {name} {parts}:\n" + "\n".join(
        f"{n['Node Type']} {n.get('Relation Name', '')} {n.get('Index Name', '')} "
        f"{n.get('Subplan Name', '')} rows={n['Plan Rows']} cost={n['Total Cost']}"
        for n in nodes)
    seq = {n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"}
    allowed = WHOLE_TABLE.get((file, name), set()) if parts.get("where") != operators.OPEN_STUCK \
        else set()
    assert not seq & ({"jobs", "extraction_results", "stuck_jobs"} - allowed), where
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert INDEXES.get((file, name), set()) <= used, where


async def test_the_claim_probes_the_mirror_however_small_it_looks(
        pool: asyncpg.Pool, db_url: str) -> None:
    """A fresh deployment's bulk landing: 30,000 jobs due and a mirror of 30,000 rows
    (analyzed) that grows by hundreds a second. Asked for a full batch, the planner
    would hash the whole mirror at every claim (a Seq Scan costed 2,802 against 1,000
    probes at 8.3); the claim probes its primary key instead (README "Performance")."""
    await pool.execute(
        """
        INSERT INTO harvester.jobs (job_id, next_poll_at)
        SELECT gen_random_uuid(), now() - g * interval '1 ms' FROM generate_series(1, 30000) g
        """)
    await pool.execute(
        """
        INSERT INTO harvester.extraction_results (job_id, id, org_id, domain, data_type,
               normalized, quality_completeness, quality_validation, quality_composite,
               created_at, payload)
        SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'example.com',
               'product', '{}', 1, 1, 1, now(), '{}'
          FROM generate_series(1, 30000)
        """)
    await pool.execute("ANALYZE harvester.jobs; ANALYZE harvester.extraction_results")
    daemon = await create_pool(db_url, min_size=1, max_size=1, queue_plans=True)
    try:
        for sql, args in ((queue.CLAIM_SQL, (1000, 60.0, "w")),
                          (queue.CLAIM_SOON_SQL, (1000, 60.0, "w", 1.0))):
            plan = json.loads(await daemon.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
            nodes = _nodes(plan[0]["Plan"])
            mirror = [(n["Node Type"], n.get("Index Name")) for n in nodes
                      if n.get("Relation Name") == "extraction_results"]
            assert mirror == [("Index Only Scan", "extraction_results_pkey")], mirror
    finally:
        await daemon.close()


async def test_a_large_write_looks_its_jobs_up_by_key(pool: asyncpg.Pool, db_url: str) -> None:
    """The outcomes of 500 jobs written to a queue of 30,000 (analyzed): the fenced
    update finds each by the primary key rather than reading the whole queue into a
    hash table, as it did at PostgreSQL's default random_page_cost (create_pool's
    queue_plans; README "Performance")."""
    ids = await pool.fetch(
        """
        INSERT INTO harvester.jobs (job_id, next_poll_at)
        SELECT gen_random_uuid(), now() FROM generate_series(1, 30000)
        RETURNING job_id
        """)
    await pool.execute("ANALYZE harvester.jobs")
    rows = [{"job_id": r["job_id"], "lease_seq": 1, "state": "landed", "delay": 0.0,
             "polled": 1, "status": 200, "error": None, "keep_answer": False, "attempt": 0,
             "c500": 0, "c403": 0, "failed_reason": None, "step": None, "seen": None,
             "due_at": None} for r in ids[:500]]
    args = (*queue.JOB_COLUMNS.arrays(rows), *queue.RESULT_COLUMNS.arrays([]),
            *queue.STUCK_COLUMNS.arrays([]))
    daemon = await create_pool(db_url, min_size=1, max_size=1, queue_plans=True)
    try:
        plan = json.loads(await daemon.fetchval("EXPLAIN (FORMAT JSON) " + queue.SQL["write"],
                                                *args))
    finally:
        await daemon.close()
    nodes = _nodes(plan[0]["Plan"])
    jobs = [(n["Node Type"], n.get("Index Name")) for n in nodes
            if n.get("Relation Name") == "jobs" and n["Node Type"] != "ModifyTable"]
    assert jobs == [("Index Scan", "jobs_pkey")], jobs
