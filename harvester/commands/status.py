"""``harvester status``: the queue's numbers, the circuits, the live daemons and what
retention has left to do (README "Commands", "Operating")."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from rich.console import Console
from rich.table import Table

from harvester.commands import options, render
from harvester.commands.database import open_store
from harvester.settings import Settings
from harvester.upstream_clock import NOTABLE as CLOCK_NOTABLE


def add_parser(sub: Any) -> None:
    st = sub.add_parser("status", help="queue counts, backlog, stuck, circuits, live daemons",
                        description="Queue counts by state, due-now count, oldest due age, jobs "
                                    "leased by a daemon, open jobs by upstream status, open "
                                    "stuck count, landed in the last minute/hour, failures by "
                                    "reason, the auth and permission circuits, and each live "
                                    "daemon's requests in flight and send rate.")
    st.add_argument("--json", action="store_true", help="print the numbers as JSON")
    options.add_reading(st)
    st.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_status(settings, args.json, sys.stdout, database=args.database))


_UPSTREAM_NAMES: Final = {"not_asked": "not asked yet",
                          "unknown": "unknown to batch-status"}


async def cmd_status(settings: Settings, as_json: bool, out: TextIO,
                     database: str | None = None) -> int:
    async with open_store(settings, database=database) as store:
        status = await store.status()
    # This command's configuration: the daemons' if they share it (a ConfigMap).
    status["retention"] = {"finished_seconds": settings.finished_retention or None,
                           "results_seconds": settings.result_retention or None}
    render_status(status, as_json, out)
    return 0


def render_status(status: dict[str, Any], as_json: bool, out: TextIO,
                  now: datetime | None = None) -> None:
    """``status`` as the store reads it, with this command's retention settings."""
    if as_json:
        render.dump_json(status, out)
        return
    console = render.console(out)
    jobs = status["jobs"]
    table = Table(title="harvester queue", show_header=True, header_style="bold")
    table.add_column("state")
    table.add_column("jobs", justify="right")
    table.add_column("detail")
    table.add_row("pending", f"{jobs['pending']:,}",
                  f"leased now {status['leased']:,} (claimed by a daemon, outcome not yet "
                  "written)")
    table.add_row("stuck", f"{jobs['stuck']:,}", f"open stuck records {status['stuck_open']:,}")
    table.add_row("landed", f"{jobs['landed']:,}",
                  f"last minute {status['landed_last_minute']:,}, "
                  f"last hour {status['landed_last_hour']:,}")
    reasons = ", ".join(f"{k} {v:,}" for k, v in status["failed_by_reason"].items())
    table.add_row("failed", f"{jobs['failed']:,}", reasons)
    table.add_row("total", f"{status['total']:,}", "", style="bold")
    render.print_table(console, table)
    age = status["oldest_due_age_seconds"]
    console.print(f"due now: {status['due_now']:,}"
                  + (f" (the oldest has waited {render.duration(age)})" if age is not None else ""))
    upstream = status["open_by_upstream_status"]
    if upstream:
        console.print("open jobs by upstream status: " + ", ".join(
            f"{_UPSTREAM_NAMES.get(k, k)} {v:,}" for k, v in upstream.items()))
    circuit = "OPEN (upstream rejects the API token)" if status["auth_circuit_open"] else "closed"
    console.print(f"auth circuit: {circuit}")
    permission = ("OPEN (the API token lacks a permission, e.g. jobs:read)"
                  if status["permission_circuit_open"] else "closed")
    console.print(f"permission circuit: {permission}")
    for alarm in status["upstream_alarms"]:
        console.print(f"upstream alarm: {alarm}"
                      + (" (every answer is a web page: check HARVESTER_API_BASE_URL)"
                         if alarm == "base_url_suspect" else ""))
    _print_retention(console, status)
    _print_daemons(console, status["workers"], now or datetime.now(UTC))


def _print_daemons(console: Console, workers: list[dict[str, Any]], now: datetime) -> None:
    if not workers:
        console.print("daemons alive: none (no heartbeat in the last 2 minutes)")
        return
    console.print(f"daemons alive: {len(workers)}")
    for w in workers:
        skew = w["upstream_clock_skew"]
        if skew is not None and abs(skew) >= CLOCK_NOTABLE:
            console.print(f"upstream's clock: {abs(skew):.1f}s {'ahead of' if skew > 0 else 'behind'}"
                          f" {w['worker_id']}'s (Retry-After dates are read against upstream's "
                          "Date header, so waits stay as asked; check both hosts' time sources)")
    daemons = Table(show_header=True, header_style="bold")
    for column in ("daemon", "host", "pid", "version", "requests in flight", "send rate",
                   "paused", "auth", "permission", "alarm", "upstream clock", "heartbeat"):
        daemons.add_column(column, justify="right" if column in (
            "pid", "requests in flight", "send rate", "upstream clock", "heartbeat") else "left")
    for w in workers:
        paused = w["paused_until"]
        skew = w["upstream_clock_skew"]
        daemons.add_row(
            w["worker_id"], w["hostname"], str(w["pid"]), w["version"], f"{w['in_flight']:,}",
            "no limit found" if w["send_rate"] is None else f"{w['send_rate']:,.1f}/s",
            f"for {render.duration((paused - now).total_seconds())}" if paused and paused > now
            else "-",
            w["auth_circuit"], w["permission_circuit"], w["upstream_alarm"] or "-",
            "-" if skew is None else f"{skew:+.1f}s",
            f"{render.duration(w['heartbeat_age'])} ago")
    render.print_table(console, daemons)


def _print_retention(console: Console, status: dict[str, Any]) -> None:
    """Table sizes, the oldest finished queue row and the retention that should bound it
    (README "Retention")."""
    tables = status["tables"]
    sizes = "; ".join(f"{label} {'' if tables[name]['rows_counted'] else '~'}"
                      f"{tables[name]['rows']:,} rows, {render.byte_size(tables[name]['bytes'])}"
                      for name, label in (("jobs", "queue"), ("extraction_results", "mirror")))
    counted = {t["rows_counted"] for t in tables.values()}
    how = ("rows counted" if counted == {True}
           else "~ rows: PostgreSQL's live-row statistics" if counted == {False}
           else "rows counted; ~: PostgreSQL's live-row statistics")
    console.print(f"tables: {sizes} ({how})")
    retention = status["retention"]
    finished = retention["finished_seconds"]
    results = retention["results_seconds"]
    kept = ("retention " + (render.duration(finished) if finished else "off: finished jobs are kept")
            + "; mirror " + (f"kept {render.duration(results)}" if results else "kept for ever"))
    age = status["oldest_finished_age_seconds"]
    console.print("oldest finished job in the queue: "
                  + (f"{render.duration(age)} ago" if age is not None else "none") + f" ({kept})")
    if not status["autovacuum"]:
        console.print("autovacuum: OFF on this server: the space of deleted rows is reused "
                      "only after a VACUUM (README \"Retention\")")
