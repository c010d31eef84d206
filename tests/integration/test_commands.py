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

from harvester.store import figures
from harvester.store.operators import OperatorStore
from harvester.tools.simulator import result_row
from tests.helpers import wait_until
from tests.stores import Store

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
        "next_poll_at = now() - interval '90 minutes', polls = 4, last_status = 202, "
        "upstream_status = 'extraction_done', next_step = 'result' "
        "WHERE job_id = $1", f.pending)
    await pool.execute(
        "UPDATE harvester.jobs SET next_poll_at = now() + interval '1 hour', polls = 1, "
        "last_status = 202 WHERE job_id = $1", f.due_later)
    await pool.execute(
        """
        UPDATE harvester.jobs
           SET state = 'stuck', polls = 3, last_status = 500, consecutive_500s = 3,
               upstream_status = 'completed', next_step = 'result',
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
        "INSERT INTO harvester.stuck_jobs (job_id, first_seen_at, times_seen, last_status, "
        "resolved_at, resolution, resolved_by) "
        "VALUES ($1, now() - interval '1 hour', 3, 500, now(), 'landed', 'harvester')",
        f.stuck_resolved)
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


async def add_workers(pool: asyncpg.Pool) -> None:
    """Two live daemons as their heartbeats leave them (one with a learned rate and both
    circuits open), and one whose heartbeat stopped long ago."""
    await pool.execute(
        """
        INSERT INTO harvester.workers (worker_id, hostname, pid, version, auth_circuit,
                                       permission_circuit, upstream_alarm, send_rate,
                                       paused_until, in_flight, upstream_clock_skew,
                                       heartbeat_at)
        VALUES ('w1', 'host-a', 42, '0.1.0', 'open', 'open', 'base_url_suspect', 287.5,
                now() + interval '30 seconds', 3, -20.04, now()),
               ('w2', 'host-b', 43, '0.1.0', 'closed', 'closed', NULL, NULL, NULL, 0, NULL,
                now()),
               ('w0', 'host-c', 41, '0.1.0', 'closed', 'closed', NULL, NULL, NULL, 9, 0.2,
                now() - interval '1 hour')
        """)


async def test_status_json_is_stable_and_counts_every_state(cli: Any, pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)
    await add_workers(pool)
    await pool.execute("UPDATE harvester.jobs SET leased_until = now() + interval '1 minute' "
                       "WHERE job_id = $1", f.due_later)
    result = await cli("status", "--json")
    assert result.status == 0, result.err
    document = result.json()
    assert sorted(document) == [
        "auth_circuit_open", "autovacuum", "due_now", "failed_by_reason", "in_flight", "jobs",
        "landed_last_hour", "landed_last_minute", "leased", "oldest_due_age_seconds",
        "oldest_finished_age_seconds", "open_by_upstream_status", "permission_circuit_open",
        "retention", "stuck_open", "tables", "total", "upstream_alarms", "workers"]
    assert document["jobs"] == {"pending": 2, "stuck": 1, "landed": 2, "failed": 2}
    assert document["total"] == 7
    assert document["due_now"] == 1
    assert 90 * 60 - 5 < document["oldest_due_age_seconds"] < 90 * 60 + 60
    # Leased = claimed by a daemon whose outcome is not written yet; in_flight is the
    # same number under its first name.
    assert (document["leased"], document["in_flight"]) == (1, 1)
    assert document["open_by_upstream_status"] == {"completed": 1, "extraction_done": 1,
                                                   "not_asked": 1}
    assert document["stuck_open"] == 1
    assert (document["landed_last_minute"], document["landed_last_hour"]) == (2, 2)
    assert document["failed_by_reason"] == {"expired": 1, "forbidden": 1}
    assert document["auth_circuit_open"] is True
    assert document["permission_circuit_open"] is True
    assert document["upstream_alarms"] == ["base_url_suspect"]
    workers = document["workers"]
    assert [(w["worker_id"], w["in_flight"], w["send_rate"], w["permission_circuit"],
             w["upstream_alarm"], w["upstream_clock_skew"]) for w in workers] == [
        ("w1", 3, 287.5, "open", "base_url_suspect", -20.04),
        ("w2", 0, None, "closed", None, None)]
    assert datetime.fromisoformat(workers[0]["paused_until"]).tzinfo is not None
    assert workers[1]["paused_until"] is None


async def test_status_shows_table_sizes_and_the_oldest_finished_job(
    cli: Any, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What bounds the tables (README "Retention"): their size, and how long ago the
    oldest finished job the purge may delete finished, next to the retention."""
    f = await put_jobs_in_each_state(pool)
    await pool.execute("UPDATE harvester.jobs SET updated_at = now() - interval '3 hours' "
                       "WHERE job_id = $1", f.failed_expired)
    await pool.execute("ANALYZE harvester.jobs; ANALYZE harvester.extraction_results")
    monkeypatch.setenv("HARVESTER_FINISHED_RETENTION", str(3 * 86400))
    monkeypatch.setenv("HARVESTER_RESULT_RETENTION", str(90 * 86400))
    document = (await cli("status", "--json")).json()
    assert 3 * 3600 - 5 < document["oldest_finished_age_seconds"] < 3 * 3600 + 60
    assert document["retention"] == {"finished_seconds": 3 * 86400,
                                     "results_seconds": 90 * 86400}
    tables = document["tables"]
    assert sorted(tables) == ["extraction_results", "jobs"]
    assert tables["jobs"]["rows_estimate"] == tables["jobs"]["rows"] == 7
    assert tables["extraction_results"]["rows_estimate"] == 2
    assert all(t["bytes"] >= 8192 and t["rows_counted"] for t in tables.values())
    lines = (await cli("status")).out.splitlines()
    assert any(line.startswith("tables: queue 7 rows, ") and "; mirror 2 rows, " in line
               and line.endswith(" (rows counted)") for line in lines), lines
    assert ("oldest finished job in the queue: 3.0h ago (retention 3.0d; mirror kept 90.0d)"
            in lines)
    on = await pool.fetchval("SELECT current_setting('autovacuum') = 'on'")
    assert document["autovacuum"] is on
    assert any(line.startswith("autovacuum: OFF") for line in lines) is not on

    monkeypatch.setenv("HARVESTER_FINISHED_RETENTION", "0")
    monkeypatch.delenv("HARVESTER_RESULT_RETENTION")
    await pool.execute("DELETE FROM harvester.jobs WHERE state IN ('landed', 'failed')")
    document = (await cli("status", "--json")).json()
    assert document["oldest_finished_age_seconds"] is None
    assert document["retention"] == {"finished_seconds": None, "results_seconds": None}
    assert ("oldest finished job in the queue: none (retention off: finished jobs are kept; "
            "mirror kept for ever)" in (await cli("status")).out.splitlines())


async def test_status_on_an_empty_queue(cli: Any) -> None:
    document = (await cli("status", "--json")).json()
    assert document["jobs"] == {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
    assert document["oldest_due_age_seconds"] is None
    assert document["auth_circuit_open"] is False
    assert document["permission_circuit_open"] is False
    assert (document["open_by_upstream_status"], document["upstream_alarms"]) == ({}, [])
    table = await cli("status")
    assert table.status == 0
    assert "daemons alive: none" in table.out
    assert "open jobs by upstream status" not in table.out


async def test_status_table_is_readable(cli: Any, pool: asyncpg.Pool) -> None:
    await put_jobs_in_each_state(pool)
    result = await cli("status")
    assert result.status == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].strip() == "harvester queue"
    rows = table_rows(result.out)
    assert rows[0] == ["state", "jobs", "detail"]
    assert rows[1:] == [
        ["pending", "2", "leased now 0 (claimed by a daemon, outcome not yet written)"],
        ["stuck", "1", "open stuck records 1"],
        ["landed", "2", "last minute 2, last hour 2"],
        ["failed", "2", "expired 1, forbidden 1"],
        ["total", "7", ""],
    ]
    assert "due now: 1 (the oldest has waited 90.0m)" in lines
    assert ("open jobs by upstream status: completed 1, extraction_done 1, not asked yet 1"
            in lines)
    assert "auth circuit: closed" in lines
    assert "permission circuit: closed" in lines
    assert "\x1b[" not in result.out  # no colour codes when stdout is not a terminal


async def test_status_shows_each_live_daemon_with_its_rate_circuits_and_alarm(
    cli: Any, pool: asyncpg.Pool
) -> None:
    await add_workers(pool)
    result = await cli("status")
    assert result.status == 0, result.err
    lines = result.out.splitlines()
    assert "auth circuit: OPEN (upstream rejects the API token)" in lines
    assert "permission circuit: OPEN (the API token lacks a permission, e.g. jobs:read)" in lines
    assert ("upstream alarm: base_url_suspect (every answer is a web page: check "
            "HARVESTER_API_BASE_URL)") in lines
    assert "daemons alive: 2" in lines
    # A skew worth a note (README "How upstream answers are handled"): one line per daemon.
    notes = [line for line in lines if line.startswith("upstream's clock:")]
    assert len(notes) == 1
    assert notes[0].startswith("upstream's clock: 20.0s behind w1's (")
    rows = table_rows(result.out)
    header = rows.index(["daemon", "host", "pid", "version", "requests in flight", "send rate",
                         "paused", "auth", "permission", "alarm", "upstream clock",
                         "heartbeat"])
    w1, w2 = rows[header + 1], rows[header + 2]
    assert w1[:6] == ["w1", "host-a", "42", "0.1.0", "3", "287.5/s"]
    assert w1[6].startswith("for ")
    assert w1[7:11] == ["open", "open", "base_url_suspect", "-20.0s"]
    assert w2[:11] == ["w2", "host-b", "43", "0.1.0", "0", "no limit found", "-", "closed",
                       "closed", "-", "-"]
    assert w2[11].endswith("s ago")


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
                             "last_status", "next_poll_at", "open_for_seconds", "resolution",
                             "resolution_note", "resolved_at", "resolved_by", "state",
                             "times_seen"]
    assert (first["resolved_at"], first["resolution"], first["resolved_by"]) == (None, None, None)
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
    assert (await cli("stuck", "--resolved")).out == "no closed stuck records\n"


async def add_stuck(pool: asyncpg.Pool, n: int) -> list[uuid.UUID]:
    """``n`` open stuck records, first seen one minute apart (the first is the oldest)."""
    ids = [uuid.uuid4() for _ in range(n)]
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, state, polls, last_status) "
        "SELECT unnest($1::uuid[]), 'stuck', 3, 500", ids)
    await pool.execute(
        "INSERT INTO harvester.stuck_jobs (job_id, first_seen_at, last_status) "
        "SELECT id, now() - make_interval(mins => $2 - n::int), 500 "
        "FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)", ids, n)
    return ids


async def test_table_rows_are_right_before_any_analyze(
    cli: Any, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_class.reltuples is -1 until the first ANALYZE: status said ~0 rows after the
    demo (issue 23). Small tables are counted; large ones read the statistics' live rows
    (README "Retention"), also right without an ANALYZE."""
    await pool.execute("INSERT INTO harvester.jobs (job_id) "
                       "SELECT gen_random_uuid() FROM generate_series(1, 1500)")
    assert await pool.fetchval("SELECT reltuples FROM pg_class "
                               "WHERE oid = 'harvester.jobs'::regclass") < 1  # never analyzed
    counted = (await cli("status", "--json")).json()["tables"]["jobs"]
    assert (counted["rows"], counted["rows_counted"]) == (1500, True)
    gauges = await OperatorStore(pool).queue_gauges()
    assert gauges["table_rows:jobs"] == 1500

    monkeypatch.setattr(figures, "COUNTED_BELOW", -1)  # every table "large"

    async def statistics_caught_up() -> bool:
        tables = (await cli("status", "--json")).json()["tables"]
        return bool(tables["jobs"]["rows"] == 1500 and not tables["jobs"]["rows_counted"])

    await wait_until(statistics_caught_up, 20, "n_live_tup to count the inserted rows")
    assert (await OperatorStore(pool).queue_gauges())["table_rows:jobs"] == 1500
    shown = next(line for line in (await cli("status")).out.splitlines()
                 if line.startswith("tables: "))
    assert shown.startswith("tables: queue ~1,500 rows, "), shown
    assert shown.endswith(" (~ rows: PostgreSQL's live-row statistics)"), shown


async def test_stuck_limit_bounds_the_list_and_says_how_many_there_are(
    cli: Any, pool: asyncpg.Pool
) -> None:
    ids = await add_stuck(pool, 7)
    table = await cli("stuck", "--limit", "3")
    assert table.status == 0, table.err
    assert "open stuck jobs (7), oldest first" in table.out
    assert [r[0] for r in table_rows(table.out)[1:]] == [str(i) for i in ids[:3]]
    assert "showing 3 of 7 open stuck jobs; --limit 7 shows them all" in table.out

    as_json = await cli("stuck", "--json", "--limit", "2")
    assert [r["job_id"] for r in as_json.json()] == [str(i) for i in ids[:2]]
    assert as_json.err == "harvester: showing 2 of 7 open stuck jobs; --limit 7 shows them all\n"
    everything = await cli("stuck", "--json", "--limit", "7")
    assert len(everything.json()) == 7
    assert everything.err == ""
    assert len((await cli("stuck", "--json")).json()) == 7  # the default bound is 100
    # One rule for every --limit (issue 23): 1 or more, no 0 for "all", as in `jobs`.
    for bad in ("0", "-1"):
        refused = await cli("stuck", "--limit", bad)
        assert (refused.status, refused.err) == (
            2, f"harvester: --limit: 1 or more records (got {bad})\n")
    assert (await cli("jobs", "--state", "landed", "--limit", "0")).err == \
        "harvester: --limit: 1 to 1000 jobs per page (got 0)\n"


async def test_stuck_ack_closes_records_with_who_and_why_and_the_gauge_drops(
    cli: Any, pool: asyncpg.Pool, store: Store
) -> None:
    f = await put_jobs_in_each_state(pool)
    never, unknown = f.pending, uuid.uuid4()
    assert (await store.queue_gauges())["stuck_open"] == 1
    result = await cli("stuck", "ack", str(f.stuck), str(f.stuck_resolved), str(never),
                       str(unknown), "--by", "alice", "--note", "reported to justcrawl, #4711")
    assert result.status == 0, result.err
    assert result.out.splitlines() == [
        "acknowledged 1 stuck record(s) as alice",
        f"closed already 1: {f.stuck_resolved} (landed by harvester)",
        f"never stuck 1 job(s): {never}",
        f"not in the queue 1 job ID(s): {unknown}",
    ]
    record = await pool.fetchrow("SELECT * FROM harvester.stuck_jobs WHERE job_id = $1", f.stuck)
    assert record is not None
    assert (record["resolution"], record["resolved_by"], record["resolution_note"]) == \
        ("acknowledged", "alice", "reported to justcrawl, #4711")
    assert record["resolved_at"] is not None
    # The job keeps its state and its recheck; only the record closed.
    job = (await jobs_by_id(pool))[f.stuck]
    assert (job["state"], job["next_poll_at"] is not None) == ("stuck", True)
    gauges = await store.queue_gauges()
    assert (gauges["stuck_open"], gauges["oldest_stuck_age"]) == (0.0, 0.0)
    assert (await cli("stuck")).out == "no open stuck jobs\n"

    # Acknowledging again changes nothing and says who closed it.
    again = await cli("stuck", "ack", str(f.stuck), "--by", "bob", "--note", "again", "--json")
    assert again.json() == {
        "acknowledged": 0, "acknowledged_ids": [], "never_stuck": [], "never_stuck_count": 0,
        "unknown": [], "unknown_count": 0, "resolved_by": "bob", "note": "again",
        "closed_already": [{"job_id": str(f.stuck), "resolution": "acknowledged",
                            "resolved_by": "alice"}], "closed_already_count": 1}
    closed = await cli("stuck", "--resolved")
    rows = table_rows(closed.out)
    assert rows[0][-2:] == ["closed", "note"]
    by_id = {r[0]: r for r in rows[1:]}
    assert by_id[str(f.stuck)][-2].startswith("acknowledged by alice, ")
    assert by_id[str(f.stuck)][-1] == "reported to justcrawl, #4711"
    assert by_id[str(f.stuck_resolved)][-2].startswith("landed by harvester, ")
    assert len((await cli("stuck", "--all", "--json")).json()) == 2


async def test_stuck_ack_reads_ids_from_stdin_and_refuses_bad_input_whole(
    cli: Any, pool: asyncpg.Pool
) -> None:
    ids = await add_stuck(pool, 3)
    bad = await cli("stuck", "ack", "-", "--note", "n", "--by", "ops",
                    stdin=f"{ids[0]}\nnope\n".encode())
    assert bad.status == 2
    assert bad.err.splitlines() == [
        'line 2: not a UUID (expected 8-4-4-4-12 hexadecimal digits): "nope"',
        "harvester: 1 invalid line(s); nothing acknowledged"]
    assert await pool.fetchval("SELECT count(*) FROM harvester.open_stuck_jobs") == 3
    good = await cli("stuck", "ack", "--file", "-", "--note", "upstream incident 12",
                     "--by", "ops", stdin="\n".join(map(str, ids[:2])).encode() + b"\n")
    assert good.status == 0, good.err
    assert good.out == "acknowledged 2 stuck record(s) as ops\n"
    assert await pool.fetchval("SELECT count(*) FROM harvester.open_stuck_jobs") == 1
    for args, message in [
        (("stuck", "ack", str(ids[2]), "--note", "  "),
         "harvester: --note: say why, in 1 to 2000 characters\n"),
        (("stuck", "ack", "--note", "why"),
         "harvester: give the job IDs to acknowledge as arguments, with --file PATH, or - "
         "for stdin\n"),
        (("stuck", "ack", str(ids[2]), "--note", "why", "--by", "\x1b[31m"),
         "harvester: --by: a name of 1 to 200 printable characters\n"),
    ]:
        refused = await cli(*args)
        assert (refused.status, refused.err) == (2, message)
    missing_note = await cli("stuck", "ack", str(ids[2]))
    assert missing_note.status == 2
    assert "--note" in missing_note.err


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
    assert result.json() == {"requeued": 2, "dry_run": False, "landed_polled_again": [],
                             "landed_polled_again_count": 0, "unknown": [],
                             "unknown_count": 0}
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


async def test_requeue_by_id_polls_landed_jobs_again_and_names_unknown_ones(
    cli: Any, pool: asyncpg.Pool
) -> None:
    """A landed job named by ID is polled again on purpose (README "Retention"): reset
    like any requeued job and marked requeued, so the claim does not land it from the
    mirror. Its mirror row stays until the new answer is written."""
    f = await put_jobs_in_each_state(pool)
    before = await jobs_by_id(pool)
    unknown = uuid.uuid4()
    result = await cli("requeue", str(f.failed), str(f.landed).upper(), str(unknown),
                       str(f.due_later))
    assert result.status == 0, result.err
    assert result.out.splitlines() == [
        "requeued 3 job(s); they are due now",
        f"of which landed before, polled again 1: {f.landed}",
        f"not in the queue 1 job ID(s): {unknown}",
    ]
    after = await jobs_by_id(pool)
    landed = after[f.landed]
    assert (landed["state"], landed["due"], landed["requeued_now"]) == ("pending", True, True)
    assert landed["lease_seq"] == before[f.landed]["lease_seq"] + 1
    assert await pool.fetchval("SELECT count(*) FROM harvester.extraction_results "
                               "WHERE job_id = $1", f.landed) == 1
    assert (after[f.failed]["state"], after[f.failed]["due"]) == ("pending", True)
    assert (after[f.due_later]["state"], after[f.due_later]["due"]) == ("pending", True)
    assert unknown not in after

    as_json = await cli("requeue", str(f.stuck_resolved), "--json", "--dry-run")
    assert as_json.json() == {"requeued": 1, "dry_run": True,
                              "landed_polled_again": [str(f.stuck_resolved)],
                              "landed_polled_again_count": 1, "unknown": [],
                              "unknown_count": 0}
    assert (await jobs_by_id(pool))[f.stuck_resolved]["state"] == "landed"


async def test_requeue_by_id_brings_back_a_job_retention_deleted_from_the_queue(
    cli: Any, pool: asyncpg.Pool
) -> None:
    """Retention deleted the queue row; the mirror keeps the job's row. Requeueing the ID
    puts it back in the queue, marked requeued (so it is polled, not landed from the
    mirror); its stuck record went with the old row."""
    f = await put_jobs_in_each_state(pool)
    await pool.execute("DELETE FROM harvester.jobs WHERE job_id = ANY($1::uuid[])",
                       [f.landed, f.stuck_resolved])
    dry = await cli("requeue", str(f.landed), "--dry-run")
    assert dry.out.splitlines() == [
        "would requeue 1 job(s) (dry run: nothing changed)",
        f"of which landed before, to be polled again 1: {f.landed}"]
    assert f.landed not in await jobs_by_id(pool)
    result = await cli("requeue", str(f.landed), str(f.stuck_resolved), "--json")
    assert result.status == 0, result.err
    assert result.json()["requeued"] == 2
    assert result.json()["landed_polled_again_count"] == 2
    after = await jobs_by_id(pool)
    for job_id in (f.landed, f.stuck_resolved):
        job = after[job_id]
        assert (job["state"], job["due"], job["requeued_now"], job["polls"]) == (
            "pending", True, True, 0)
    assert await pool.fetchval("SELECT count(*) FROM harvester.stuck_jobs "
                               "WHERE job_id = $1", f.stuck_resolved) == 0


async def test_requeue_refuses_bad_usage_in_one_line(cli: Any, pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)
    neither = await cli("requeue")
    assert (neither.status, neither.err) == (
        2, "harvester: give job IDs (arguments, --file PATH, or - for stdin) or "
           "--state failed|stuck\n")
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


async def add_failed(pool: asyncpg.Pool, reason: str, failed_ago: str, n: int = 1
                     ) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, state, failed_reason, next_poll_at, updated_at, "
        "polls, next_step, upstream_status, finished_seen_at, consecutive_403s) "
        "SELECT unnest($1::uuid[]), 'failed', $2, NULL, now() - $3::text::interval, 5, 'result', "
        "'failed', now() - $3::text::interval, 2", ids, reason, failed_ago)
    return ids


async def test_requeue_aims_by_reason_and_age(cli: Any, pool: asyncpg.Pool) -> None:
    f = await put_jobs_in_each_state(pool)  # failed: forbidden and expired, just now
    old_404 = await add_failed(pool, "not_found", "3 days")
    new_404 = await add_failed(pool, "not_found", "10 minutes")
    gone = await add_failed(pool, "http_410", "2 hours")

    preview = await cli("requeue", "--reason", "not_found", "--dry-run")
    assert preview.out == "would requeue 2 job(s) (dry run: nothing changed)\n"
    assert (await jobs_by_id(pool))[old_404[0]]["state"] == "failed"

    recent = await cli("requeue", "--reason", "not_found", "--newer-than", "1h", "--json")
    assert recent.status == 0, recent.err
    assert recent.json()["requeued"] == 1
    after = await jobs_by_id(pool)
    assert after[new_404[0]]["state"] == "pending"
    assert after[old_404[0]]["state"] == "failed"

    both = await cli("requeue", "--state", "failed", "--reason", "http_410",
                     "--reason", "not_found", "--older-than", "1.5h")
    assert both.out == "requeued 2 job(s); they are due now\n"
    after = await jobs_by_id(pool)
    assert {after[j]["state"] for j in (old_404[0], gone[0])} == {"pending"}
    assert {after[j]["state"] for j in (f.failed, f.failed_expired)} == {"failed"}
    # A requeued job starts over as a fed one does: followed through batch-status first.
    job = after[gone[0]]
    assert (job["next_step"], job["finished_seen_at"], job["status_since"],
            job["consecutive_403s"], job["failed_reason"]) == ("status", None, None, 0, None)
    assert (job["polls"], job["upstream_status"]) == (5, "failed")  # history is kept

    stuck_aged = await cli("requeue", "--state", "stuck", "--older-than", "4h", "--dry-run")
    assert stuck_aged.out == "would requeue 0 job(s) (dry run: nothing changed)\n"
    stuck_young = await cli("requeue", "--state", "stuck", "--older-than", "2h", "--dry-run")
    assert stuck_young.out == "would requeue 1 job(s) (dry run: nothing changed)\n"


async def test_requeue_reads_ids_from_a_file_or_stdin_all_or_nothing(
    cli: Any, pool: asyncpg.Pool, tmp_path: Any
) -> None:
    f = await put_jobs_in_each_state(pool)
    path = tmp_path / "ids.txt"
    path.write_text(f"# from the incident\n{f.failed}\n{f.landed}\n\n{f.failed_expired}\n")
    dry = await cli("requeue", "--file", str(path), "--dry-run", "--json")
    assert dry.json()["requeued"] == 3
    assert dry.json()["dry_run"] is True
    assert (await jobs_by_id(pool))[f.failed]["state"] == "failed"
    from_file = await cli("requeue", "--file", str(path))
    assert from_file.status == 0, from_file.err
    assert from_file.out.splitlines() == ["requeued 3 job(s); they are due now",
                                          f"of which landed before, polled again 1: {f.landed}"]
    bad = await cli("requeue", "-", stdin=f"{f.stuck}\n{{not-a-uuid}}\n".encode())
    assert bad.status == 2
    assert bad.err.splitlines() == [
        'line 2: not a UUID (expected 8-4-4-4-12 hexadecimal digits): "{not-a-uuid}"',
        "harvester: 1 invalid line(s); nothing requeued"]
    assert (await jobs_by_id(pool))[f.stuck]["state"] == "stuck"
    braces = await cli("requeue", "-", stdin=f"{{{f.stuck}}}\n".encode())
    assert braces.out == "requeued 1 job(s); they are due now\n"
    assert (await jobs_by_id(pool))[f.stuck]["state"] == "pending"


async def test_requeue_refuses_mixed_or_malformed_aims_in_one_line(cli: Any) -> None:
    job = str(uuid.uuid4())
    for args, message in [
        (("requeue", job, "--reason", "not_found"),
         "give job IDs (arguments, --file or -) or a selection (--state, --reason, "
         "--older-than, --newer-than), not both"),
        (("requeue", "--older-than", "1h"),
         "--older-than and --newer-than need --state failed|stuck (or --reason)"),
        (("requeue", "--state", "stuck", "--reason", "expired"),
         "--reason applies to failed jobs only"),
        (("requeue", "--reason", "gone"),
         "--reason: 'gone' is not a failure reason (one of forbidden, upstream_failed, "
         "not_found, expired, or http_<status> such as http_410)"),
        (("requeue", "--state", "failed", "--older-than", "yesterday"),
         "--older-than: expected a duration such as 90s, 15m, 6h or 7d (got 'yesterday')"),
    ]:
        result = await cli(*args)
        assert (result.status, result.err) == (2, f"harvester: {message}\n"), args
