"""`harvester status`, `stuck` and `requeue`: readable tables and stable JSON, in-process.

Jobs are put in each state with plain SQL (as the daemon would leave them), then
``harvester.cli.main`` runs against the test's database in a worker thread (it runs its
own event loop) with stdout and stderr captured.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from harvester.tools.simulator import result_row

pytestmark = pytest.mark.usefixtures("restore_logging")


@dataclass(frozen=True)
class Fixture:
    """One job in each state, plus a second failed one and a stuck record that resolved."""

    pending: uuid.UUID
    due_later: uuid.UUID
    stuck: uuid.UUID
    landed: uuid.UUID
    failed: uuid.UUID
    failed_expired: uuid.UUID
    stuck_resolved: uuid.UUID


async def put_jobs_in_each_state(pool: asyncpg.Pool) -> Fixture:
    """Jobs in every state, written the way the daemon leaves them (SQL only)."""
    f = Fixture(*(uuid.uuid4() for _ in range(7)))
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id) SELECT unnest($1::uuid[])",
        [f.pending, f.due_later, f.stuck, f.landed, f.failed, f.failed_expired,
         f.stuck_resolved])
    # Enqueued two hours ago and still pending: the oldest due job.
    await pool.execute(
        "UPDATE harvester.jobs SET enqueued_at = now() - interval '2 hours', "
        "next_poll_at = now() - interval '90 minutes', polls = 4, last_status = 202 "
        "WHERE job_id = $1", f.pending)
    await pool.execute(
        "UPDATE harvester.jobs SET next_poll_at = now() + interval '1 hour', polls = 1, "
        "last_status = 202 WHERE job_id = $1", f.due_later)
    await pool.execute(
        """
        UPDATE harvester.jobs
           SET state = 'stuck', polls = 3, last_status = 500, consecutive_500s = 3,
               last_error = 'stuck: 3 consecutive 500s', next_poll_at = now() + interval '15 minutes'
         WHERE job_id = $1
        """, f.stuck)
    await pool.execute(
        "INSERT INTO harvester.stuck_jobs (job_id, first_seen_at, last_seen_at, times_seen, "
        "last_status, last_body) VALUES ($1, now() - interval '3 hours', now(), 7, 500, "
        "'{\"error\": \"job is completed but no extraction_results row landed\"}')", f.stuck)
    for job_id in (f.landed, f.stuck_resolved):
        row = result_row(job_id)
        await pool.execute(
            """
            UPDATE harvester.jobs
               SET state = 'landed', landed_at = now() - interval '30 seconds', polls = 2,
                   last_status = 200, next_poll_at = NULL
             WHERE job_id = $1
            """, job_id)
        await pool.execute(
            """
            INSERT INTO harvester.extraction_results
                   (job_id, id, org_id, domain, schema_id, data_type, normalized, raw_blob_key,
                    quality_completeness, quality_validation, quality_composite, latency_ms,
                    delivered_at, created_at, payload)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14,
                    $15::jsonb)
            """,
            job_id, uuid.UUID(row["id"]), uuid.UUID(row["orgId"]), row["domain"],
            row["schemaId"], row["dataType"], json.dumps(row["normalized"]), row["rawBlobKey"],
            row["qualityCompleteness"], row["qualityValidation"], row["qualityComposite"],
            row["latencyMs"],
            datetime.fromisoformat(row["deliveredAt"]) if row["deliveredAt"] else None,
            datetime.fromisoformat(row["createdAt"]), json.dumps(row))
    await pool.execute(
        "INSERT INTO harvester.stuck_jobs (job_id, times_seen, last_status, resolved_at) "
        "VALUES ($1, 3, 500, now())", f.stuck_resolved)
    await pool.execute(
        """
        UPDATE harvester.jobs
           SET state = 'failed', failed_reason = 'forbidden', last_status = 403, polls = 1,
               last_error = '403: token lacks jobs:read', next_poll_at = NULL,
               enqueued_at = now() - interval '8 days'
         WHERE job_id = $1
        """, f.failed)
    await pool.execute(
        "UPDATE harvester.jobs SET state = 'failed', failed_reason = 'expired', polls = 40, "
        "next_poll_at = NULL, enqueued_at = now() - interval '8 days' WHERE job_id = $1",
        f.failed_expired)
    return f


def table_rows(text: str) -> list[list[str]]:
    """The cells of a rich table (header and body rows), stripped."""
    return [[cell.strip() for cell in line[1:-1].replace("┃", "│").split("│")]
            for line in text.splitlines() if line[:1] in ("│", "┃")]


# ---------------------------------------------------------------- status


async def test_status_json_is_stable_and_counts_every_state(cli: Any, pool: asyncpg.Pool) -> None:
    await put_jobs_in_each_state(pool)
    await pool.execute(
        "INSERT INTO harvester.workers (worker_id, hostname, pid, version, auth_circuit, "
        "in_flight) VALUES ('w1', 'host-a', 42, '0.1.0', 'open', 3)")
    result = await cli("status", "--json")
    assert result.status == 0, result.err
    document = result.json()
    assert sorted(document) == [
        "auth_circuit_open", "due_now", "failed_by_reason", "in_flight", "jobs",
        "landed_last_hour", "landed_last_minute", "oldest_due_age_seconds", "stuck_open",
        "total", "workers"]
    assert document["jobs"] == {"pending": 2, "stuck": 1, "landed": 2, "failed": 2}
    assert document["total"] == 7
    assert document["due_now"] == 1
    assert 90 * 60 - 5 < document["oldest_due_age_seconds"] < 90 * 60 + 60
    assert document["in_flight"] == 0
    assert document["stuck_open"] == 1
    assert (document["landed_last_minute"], document["landed_last_hour"]) == (2, 2)
    assert document["failed_by_reason"] == {"expired": 1, "forbidden": 1}
    assert document["auth_circuit_open"] is True
    assert [(w["worker_id"], w["in_flight"]) for w in document["workers"]] == [("w1", 3)]


async def test_status_on_an_empty_queue(cli: Any) -> None:
    document = (await cli("status", "--json")).json()
    assert document["jobs"] == {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
    assert document["oldest_due_age_seconds"] is None
    assert document["auth_circuit_open"] is False
    table = await cli("status")
    assert table.status == 0
    assert "daemons alive: none" in table.out


async def test_status_table_is_readable(cli: Any, pool: asyncpg.Pool) -> None:
    await put_jobs_in_each_state(pool)
    result = await cli("status")
    assert result.status == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].strip() == "harvester queue"
    rows = table_rows(result.out)
    assert rows[0] == ["state", "jobs", "detail"]
    assert rows[1:] == [
        ["pending", "2", "claimed by a daemon right now 0"],
        ["stuck", "1", "open stuck records 1"],
        ["landed", "2", "last minute 2, last hour 2"],
        ["failed", "2", "expired 1, forbidden 1"],
        ["total", "7", ""],
    ]
    assert "due now: 1 (the oldest has waited 90.0m)" in lines
    assert "auth circuit: closed" in result.out
    assert "\x1b[" not in result.out  # no colour codes when stdout is not a terminal


# ---------------------------------------------------------------- stuck


async def test_stuck_lists_open_records_oldest_first_in_both_forms(cli: Any, pool: asyncpg.Pool
                                                                   ) -> None:
    f = await put_jobs_in_each_state(pool)
    newer = uuid.uuid4()
    await pool.execute("INSERT INTO harvester.jobs (job_id, state, polls) VALUES ($1, 'stuck', 3)",
                       newer)
    await pool.execute("INSERT INTO harvester.stuck_jobs (job_id, last_status) VALUES ($1, 500)",
                       newer)
    result = await cli("stuck", "--json")
    assert result.status == 0, result.err
    records = result.json()
    assert [r["job_id"] for r in records] == [str(f.stuck), str(newer)]  # resolved one absent
    first = records[0]
    assert sorted(first) == ["first_seen_at", "job_id", "last_body", "last_seen_at",
                             "last_status", "next_poll_at", "open_for_seconds", "state",
                             "times_seen"]
    assert first["times_seen"] == 7
    assert first["last_status"] == 500
    assert first["state"] == "stuck"
    assert 3 * 3600 - 5 < first["open_for_seconds"] < 3 * 3600 + 60
    assert datetime.fromisoformat(first["first_seen_at"]).tzinfo is not None

    table = await cli("stuck")
    assert table.status == 0
    assert "open stuck jobs (2), oldest first" in table.out
    rows = table_rows(table.out)
    assert rows[0] == ["job_id", "state", "first seen (UTC)", "open for", "times seen",
                       "last status", "next poll"]
    assert [r[0] for r in rows[1:]] == [str(f.stuck), str(newer)]
    assert rows[1][1] == "stuck"
    assert rows[1][3:6] == ["3.0h", "7", "500"]
    assert rows[1][6].startswith("in 1")  # 15 minutes from now, give or take
    assert rows[2][6] == "due now"


async def test_stuck_with_none_open_says_so(cli: Any) -> None:
    assert (await cli("stuck")).out == "no open stuck jobs\n"
    assert (await cli("stuck", "--json")).json() == []


# ---------------------------------------------------------------- requeue


async def jobs_by_id(pool: asyncpg.Pool) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT *, next_poll_at <= now() AS due, now() - requeued_at < interval '1 minute' "
        "AS requeued_now FROM harvester.jobs")
    return {r["job_id"]: r for r in rows}


async def test_requeue_failed_resets_to_pending_due_now_with_age_from_now(
    cli: Any, pool: asyncpg.Pool
) -> None:
    f = await put_jobs_in_each_state(pool)
    before = await jobs_by_id(pool)
    result = await cli("requeue", "--state", "failed", "--json")
    assert result.status == 0, result.err
    assert result.json() == {"requeued": 2, "landed_untouched": [], "unknown": []}
    after = await jobs_by_id(pool)
    for job_id in (f.failed, f.failed_expired):
        job = after[job_id]
        assert (job["state"], job["due"], job["requeued_now"]) == ("pending", True, True)
        assert job["failed_reason"] is None
        assert (job["attempt"], job["consecutive_500s"]) == (0, 0)
        assert job["lease_seq"] == before[job_id]["lease_seq"] + 1  # fences a late answer
        assert job["polls"] == before[job_id]["polls"]  # history is kept
        # MAX_AGE counts from requeued_at, not from the enqueue 8 days ago.
        assert job["enqueued_at"] < datetime.now(job["enqueued_at"].tzinfo) - timedelta(days=7)
    untouched = [f.pending, f.due_later, f.stuck, f.landed, f.stuck_resolved]
    assert all(dict(after[j]) == dict(before[j]) for j in untouched)

    again = await cli("requeue", "--state", "failed")
    assert again.out == "requeued 0 job(s); they are due now\n"


async def test_requeue_stuck_keeps_the_stuck_record_open(cli: Any, pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)
    result = await cli("requeue", "--state", "stuck")
    assert result.status == 0, result.err
    assert result.out == "requeued 1 job(s); they are due now\n"
    job = (await jobs_by_id(pool))[f.stuck]
    assert (job["state"], job["due"], job["requeued_now"], job["consecutive_500s"]) == \
        ("pending", True, True, 0)
    assert await pool.fetchval("SELECT count(*) FROM harvester.open_stuck_jobs") == 1


async def test_requeue_by_id_leaves_landed_jobs_alone_and_names_unknown_ones(
    cli: Any, pool: asyncpg.Pool
) -> None:
    f = await put_jobs_in_each_state(pool)
    before = await jobs_by_id(pool)
    unknown = uuid.uuid4()
    result = await cli("requeue", str(f.failed), str(f.landed).upper(), str(unknown),
                       str(f.due_later))
    assert result.status == 0, result.err
    assert result.out.splitlines() == [
        "requeued 2 job(s); they are due now",
        f"left alone 1 landed job(s): {f.landed}",
        f"not in the queue 1 job ID(s): {unknown}",
    ]
    after = await jobs_by_id(pool)
    assert dict(after[f.landed]) == dict(before[f.landed])
    assert (after[f.failed]["state"], after[f.failed]["due"]) == ("pending", True)
    assert (after[f.due_later]["state"], after[f.due_later]["due"]) == ("pending", True)
    assert unknown not in after

    as_json = await cli("requeue", str(f.landed), "--json")
    assert as_json.json() == {"requeued": 0, "landed_untouched": [str(f.landed)], "unknown": []}


async def test_requeue_refuses_bad_usage_in_one_line(cli: Any, pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)
    neither = await cli("requeue")
    assert (neither.status, neither.err) == (
        2, "harvester: give job IDs or --state failed|stuck (one of the two)\n")
    both = await cli("requeue", str(f.failed), "--state", "failed")
    assert both.status == 2
    bad = await cli("requeue", str(f.failed), "nope")
    assert bad.status == 2
    assert bad.err == ('harvester: argument 2: not a UUID (expected 8-4-4-4-12 hexadecimal '
                       'digits): "nope"; nothing requeued\n')
    assert (await jobs_by_id(pool))[f.failed]["state"] == "failed"
    wrong_state = await cli("requeue", "--state", "landed")
    assert wrong_state.status == 2
    assert "invalid choice: 'landed'" in wrong_state.err
