"""What the commands print, from values alone: each command gets its data from the store
as a value and renders it, so the rendering is tested here without a database (the
integration tests run the same commands against PostgreSQL)."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harvester.commands.ack import render_ack
from harvester.commands.enqueue import EnqueueReport, render_enqueue
from harvester.commands.ids import SHOWN_IDS, Tally
from harvester.commands.jobs import render_jobs
from harvester.commands.migrate import render_migrate
from harvester.commands.requeue import render_requeue
from harvester.commands.status import render_status
from harvester.commands.stuck import render_stuck
from harvester.feed import BadInput
from harvester.jobquery import JobQuery
from harvester.migrations import Migration
from harvester.ports import JobCursor

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def wide_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cells are checked whole here, each on one line: tables as wide as $COLUMNS lets
    them (the default width of a pipe, 120, folds long cells: tests/unit/test_cli.py)."""
    monkeypatch.setenv("COLUMNS", "250")
IDS = sorted(uuid.UUID(int=n) for n in range(1, 61))


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def status_value(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "jobs": {"pending": 1200, "stuck": 3, "landed": 45000, "failed": 17},
        "total": 46220, "open_by_upstream_status": {"running": 900, "not_asked": 300},
        "due_now": 42, "oldest_due_age_seconds": 75.0, "leased": 64, "in_flight": 64,
        "stuck_open": 2, "landed_last_minute": 120, "landed_last_hour": 7000,
        "failed_by_reason": {"expired": 2, "not_found": 15},
        "auth_circuit_open": False, "permission_circuit_open": True,
        "upstream_alarms": ["base_url_suspect"],
        "workers": [{"worker_id": "w-1", "hostname": "pod-a", "pid": 7, "version": "0.1.0",
                     "in_flight": 64, "send_rate": None, "paused_until": NOW + timedelta(minutes=5),
                     "auth_circuit": "closed", "permission_circuit": "open",
                     "upstream_alarm": "base_url_suspect", "upstream_clock_skew": -20.4,
                     "heartbeat_age": 3.0}],
        "tables": {"jobs": {"rows": 46220, "rows_counted": True, "rows_estimate": 46220,
                            "bytes": 12 * 1024 * 1024},
                   "extraction_results": {"rows": 45000, "rows_counted": False,
                                          "rows_estimate": 45000, "bytes": 3 * 1024 ** 3}},
        "oldest_finished_age_seconds": 86400.0 * 3, "autovacuum": False,
        "retention": {"finished_seconds": 7 * 86400.0, "results_seconds": None},
    }
    value.update(changes)
    return value


def test_status_prints_the_queue_the_circuits_retention_and_the_daemons() -> None:
    out = io.StringIO()
    render_status(status_value(), False, out, now=NOW)
    text = out.getvalue()
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in lines(text) if line.count("│") >= 4}
    assert rows["pending"] == ["1,200", "leased now 64 (claimed by a daemon, outcome not yet "
                                        "written)"]
    assert rows["failed"] == ["17", "expired 2, not_found 15"]
    assert rows["total"][0] == "46,220"
    assert "due now: 42 (the oldest has waited 75.0s)" in text
    assert "open jobs by upstream status: running 900, not asked yet 300" in text
    assert "auth circuit: closed" in text
    assert "permission circuit: OPEN (the API token lacks a permission, e.g. jobs:read)" in text
    assert ("upstream alarm: base_url_suspect (every answer is a web page: check "
            "HARVESTER_API_BASE_URL)") in text
    # Counted rows plain, the statistics' with "~" (README "Retention").
    assert ("tables: queue 46,220 rows, 12.0 MiB; mirror ~45,000 rows, 3.0 GiB (rows "
            "counted; ~: PostgreSQL's live-row statistics)") in text
    assert ("oldest finished job in the queue: 3.0d ago (retention 7.0d; mirror kept for "
            "ever)") in text
    assert "autovacuum: OFF on this server" in text
    assert "daemons alive: 1" in text
    assert "upstream's clock: 20.4s behind w-1's" in text
    daemon = next(line for line in lines(text) if "pod-a" in line)
    assert [c.strip() for c in daemon.split("│")[1:-1]] == [
        "w-1", "pod-a", "7", "0.1.0", "64", "no limit found", "for 5.0m", "closed", "open",
        "base_url_suspect", "-20.4s", "3.0s ago"]


def test_status_without_daemons_or_due_jobs_says_so_and_json_is_the_value() -> None:
    quiet = status_value(workers=[], due_now=0, oldest_due_age_seconds=None, autovacuum=True,
                         upstream_alarms=[], open_by_upstream_status={})
    out = io.StringIO()
    render_status(quiet, False, out, now=NOW)
    text = out.getvalue()
    assert "due now: 0\n" in text
    assert "daemons alive: none (no heartbeat in the last 2 minutes)" in text
    assert "autovacuum" not in text and "upstream alarm" not in text
    assert "open jobs by upstream status" not in text
    out = io.StringIO()
    render_status(quiet, True, out)
    assert json.loads(out.getvalue()) == json.loads(json.dumps(quiet))


def stuck_row(n: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "job_id": IDS[n], "state": "stuck", "first_seen_at": NOW - timedelta(hours=2),
        "last_seen_at": NOW, "times_seen": 3, "last_status": 500, "last_body": "x",
        "open_for_seconds": 7200.0, "next_poll_at": NOW + timedelta(minutes=10),
        "resolved_at": None, "resolution": None, "resolved_by": None, "resolution_note": None}
    row.update(changes)
    return row


def test_stuck_lists_open_records_and_says_when_the_list_is_cut() -> None:
    out = io.StringIO()
    render_stuck([stuck_row(0), stuck_row(1, next_poll_at=NOW - timedelta(seconds=1))], 5,
                 "open", False, out, now=NOW)
    text = out.getvalue()
    assert "open stuck jobs (5), oldest first" in text
    first = next(line for line in lines(text) if str(IDS[0]) in line)
    assert [c.strip() for c in first.split("│")[1:-1]] == [
        str(IDS[0]), "stuck", "2026-12-07 10:00:00", "2.0h", "3", "500", "in 10.0m"]
    assert "due now" in next(line for line in lines(text) if str(IDS[1]) in line)
    assert lines(text)[-1] == "showing 2 of 5 open stuck jobs; --limit 5 shows them all"


def test_closed_stuck_records_say_how_by_whom_and_why() -> None:
    closed = stuck_row(0, state="pending", resolved_at=NOW, resolution="acknowledged",
                       resolved_by="ops", resolution_note="ticket 4711")
    out = io.StringIO()
    render_stuck([closed], 1, "resolved", False, out, now=NOW)
    row = next(line for line in lines(out.getvalue()) if str(IDS[0]) in line)
    assert row.split("│")[-3:-1] == [" acknowledged by ops, 2026-12-07 12:00 ", " ticket 4711 "]
    out, err = io.StringIO(), io.StringIO()
    render_stuck([closed], 3, "resolved", True, out, err)
    assert [r["job_id"] for r in json.loads(out.getvalue())] == [str(IDS[0])]
    assert err.getvalue() == ("harvester: showing 1 of 3 closed stuck records; --limit 3 "
                              "shows them all\n")
    out = io.StringIO()
    render_stuck([], 0, "all", False, out)
    assert out.getvalue() == "no stuck records\n"


def test_a_page_of_jobs_ends_with_the_command_for_the_next() -> None:
    rows = [{"job_id": IDS[0], "state": "failed", "updated_at": NOW - timedelta(days=1),
             "next_poll_at": None, "polls": 1234, "last_status": 404, "last_error": "e" * 70,
             "failed_reason": "not_found", "upstream_status": None, "next_step": "result"}]
    following = JobCursor(NOW, IDS[1])
    out = io.StringIO()
    render_jobs(rows, following, JobQuery("failed", ("not_found",), 5), False, out,
                more_flags=" --database other", now=NOW)
    text = out.getvalue()
    assert "failed jobs (not_found)" in text
    row = next(line for line in lines(text) if str(IDS[0]) in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        str(IDS[0]), "2026-12-06 12:00:00", "1,234", "404", "not asked yet", "not_found",
        "e" * 60 + "…"]
    assert lines(text)[-1] == ("more: harvester jobs --state failed --reason not_found "
                               f"--limit 5 --database other --after {following}")
    out = io.StringIO()
    render_jobs(rows, None, JobQuery("failed"), True, out)
    assert json.loads(out.getvalue())["next"] is None


def test_open_jobs_show_when_they_are_due_and_an_empty_page_says_why() -> None:
    rows = [{"job_id": IDS[2], "state": "pending", "updated_at": NOW, "polls": 0,
             "next_poll_at": NOW + timedelta(seconds=30), "last_status": None,
             "last_error": None, "failed_reason": None, "upstream_status": "running",
             "next_step": "status"}]
    out = io.StringIO()
    render_jobs(rows, None, JobQuery("pending"), False, out, now=NOW)
    row = next(line for line in lines(out.getvalue()) if str(IDS[2]) in line)
    assert [c.strip() for c in row.split("│")[2:7]] == ["in 30.0s", "0", "-", "running", "status"]
    assert "more:" not in out.getvalue()
    out = io.StringIO()
    render_jobs([], None, JobQuery("failed", ("expired",), after=JobCursor(NOW, IDS[0])),
                False, out)
    assert out.getvalue() == "no failed jobs (expired) after this cursor\n"


def test_one_tally_counts_every_batch_and_names_the_first_ids() -> None:
    tally = Tally()
    for batch in (IDS[:15], IDS[15:40], IDS[40:]):
        tally.add("landed", batch)
        tally.add("requeued", len(batch))
    assert (tally.count("landed"), tally.count("requeued"), tally.count("unknown")) == (60, 60, 0)
    assert tally.first("landed") == IDS[:SHOWN_IDS]
    assert tally.first("unknown") == []


def test_requeue_names_the_first_ids_and_counts_the_rest() -> None:
    tally = Tally()
    tally.add("requeued", 60)
    tally.add("landed", IDS[:25])
    tally.add("unknown", IDS[25:27])
    out = io.StringIO()
    render_requeue(tally, False, False, out)
    assert lines(out.getvalue()) == [
        "requeued 60 job(s); they are due now",
        f"of which landed before, polled again 25: {', '.join(map(str, IDS[:5]))} … and 20 more",
        f"not in the queue 2 job ID(s): {IDS[25]}, {IDS[26]}",
    ]
    out = io.StringIO()
    render_requeue(tally, True, False, out)
    assert out.getvalue().startswith("would requeue 60 job(s) (dry run: nothing changed)\n"
                                      "of which landed before, to be polled again 25:")
    out = io.StringIO()
    render_requeue(tally, True, True, out)
    assert json.loads(out.getvalue()) == {
        "requeued": 60, "dry_run": True, "landed_polled_again": [str(i) for i in IDS[:20]],
        "landed_polled_again_count": 25, "unknown": [str(IDS[25]), str(IDS[26])],
        "unknown_count": 2}


def test_acknowledging_says_what_became_of_each_id() -> None:
    tally = Tally()
    tally.add("acknowledged", IDS[:3])
    tally.add("closed_already", [(IDS[3], "landed", "harvester"), (IDS[4], "acknowledged", None)])
    tally.add("never_stuck", IDS[5:12])
    tally.add("unknown", [])
    out = io.StringIO()
    render_ack(tally, "ops", "ticket 4711", False, out)
    assert lines(out.getvalue()) == [
        "acknowledged 3 stuck record(s) as ops",
        f"closed already 2: {IDS[3]} (landed by harvester), {IDS[4]} (acknowledged)",
        f"never stuck 7 job(s): {', '.join(map(str, IDS[5:10]))} … and 2 more",
    ]
    out = io.StringIO()
    render_ack(tally, "ops", "ticket 4711", True, out)
    assert json.loads(out.getvalue()) == {
        "acknowledged": 3, "acknowledged_ids": [str(i) for i in IDS[:3]],
        "closed_already": [{"job_id": str(IDS[3]), "resolution": "landed",
                            "resolved_by": "harvester"},
                           {"job_id": str(IDS[4]), "resolution": "acknowledged",
                            "resolved_by": None}],
        "closed_already_count": 2, "never_stuck": [str(i) for i in IDS[5:12]],
        "never_stuck_count": 7, "unknown": [], "unknown_count": 0, "resolved_by": "ops",
        "note": "ticket 4711"}


def test_an_enqueue_report_counts_new_and_known_only_once_committed() -> None:
    refused = EnqueueReport(valid=3, invalid=25,
                            shown=[BadInput("line", n, "not a UUID") for n in range(1, 21)])
    refused.done.add("new", 3)
    out, err = io.StringIO(), io.StringIO()
    render_enqueue(refused, "line", "ids.txt", False, out, err)
    assert out.getvalue() == ("new: 0, already known: 0, invalid: 25 — nothing enqueued (use "
                              "--skip-invalid to enqueue the 3 valid ID(s))\n")
    assert lines(err.getvalue())[-1] == "… and 5 more invalid line(s)"
    assert len(lines(err.getvalue())) == 21

    skipped = EnqueueReport(valid=4, invalid=1, committed=True, stage="done",
                            shown=[BadInput("line", 2, "not a UUID")])
    skipped.done.add("new", 3)
    out, err = io.StringIO(), io.StringIO()
    render_enqueue(skipped, "line", "ids.txt", True, out, err)
    assert json.loads(out.getvalue()) == {
        "new": 3, "known": 1, "invalid": 1, "valid": 4, "committed": True,
        "errors": [str(BadInput("line", 2, "not a UUID"))], "errors_not_shown": 0}
    out, err = io.StringIO(), io.StringIO()
    render_enqueue(EnqueueReport(committed=True), "argument", "arguments", False, out, err)
    assert (out.getvalue(), err.getvalue()) == (
        "new: 0, already known: 0, invalid: 0\n", "no job IDs in arguments\n")


def test_migrate_says_what_it_applied_and_what_it_left() -> None:
    out = io.StringIO()
    render_migrate([Migration(3, "retention", "")], [9], out)
    text = lines(out.getvalue())
    assert text[0] == "applied 003_retention"
    assert text[1].startswith("schema at version ") and "nothing to apply" not in text[1]
    assert text[2] == ("note: the database also has migration(s) 9 from a newer harvester; "
                       "left as they are")
    out = io.StringIO()
    render_migrate([], [], out)
    assert out.getvalue().endswith(" (nothing to apply)\n")
