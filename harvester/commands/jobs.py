"""``harvester jobs``: one page of jobs in a state, in that state's index order, and the
command for the next page (README "Looking at jobs and requeueing them").

The question is parsed as the admin API's ``GET /v1/jobs`` parses it
(:class:`~harvester.jobquery.JobQuery`); only the wording of a mistake is this
command's (:func:`~harvester.commands.options.job_query_mistake`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.table import Table

from harvester.commands import options, render
from harvester.commands.database import Target, open_store
from harvester.jobquery import DEFAULT_PAGE, LISTABLE_STATES, MAX_PAGE, BadJobQuery, JobQuery
from harvester.ports import JobCursor
from harvester.settings import Settings


def add_parser(sub: Any) -> None:
    jobs = sub.add_parser(
        "jobs", help="list jobs by state (and failure reason), a page at a time",
        # Written out: argparse would show --state as optional, and it is not (the
        # question needs a state; --reason names failed).
        usage="%(prog)s (--state STATE | --reason REASON [--reason REASON ...]) [--limit N] "
              "[--after CURSOR] [--json] [--data-dir PATH] [--database NAME] "
              "[--log-level LEVEL] [--log-format FORMAT]",
        description="One page of jobs in a state, in the order of that state's index: "
                    "pending and stuck by next poll time (most overdue first), landed by "
                    "landing time and failed by failure time (most recent first). The last "
                    "line gives the command for the next page (--after CURSOR).")
    jobs.add_argument("--state", choices=LISTABLE_STATES, metavar="STATE",
                      help=f"which jobs: {', '.join(LISTABLE_STATES)}; required unless "
                           "--reason, which implies failed")
    jobs.add_argument("--reason", action="append", default=[], metavar="REASON",
                      help="failed jobs with this reason: forbidden, upstream_failed, "
                           "not_found, expired or http_<status>; repeatable")
    jobs.add_argument("--limit", type=int, default=DEFAULT_PAGE, metavar="N",
                      help=f"jobs per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE}); the "
                           "last line pages on")
    jobs.add_argument("--after", metavar="CURSOR", help="the cursor a previous page printed")
    jobs.add_argument("--json", action="store_true",
                      help='print {"jobs": [...], "next": CURSOR or null} as JSON')
    options.add_reading(jobs)
    jobs.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_jobs(settings, args.state, args.reason, args.limit, args.after,
                                args.json, sys.stdout, database=args.database))


async def cmd_jobs(settings: Settings, state: str | None, reasons: Sequence[str], limit: int,
                   after: str | None, as_json: bool, out: TextIO,
                   database: str | None = None) -> int:
    """One page of jobs in a state (README "Commands"); the next page's command at the
    end."""
    try:
        query = JobQuery.parse(state, reasons, limit, after)
    except BadJobQuery as exc:
        raise options.job_query_mistake(exc) from None
    async with open_store(settings, database=database) as store:
        rows, following = await store.list_jobs(query.state, reasons=query.reasons,
                                                limit=query.limit, after=query.after)
    render_jobs(rows, following, query, as_json, out, more_flags=Target(settings, database).flags)
    return 0


def render_jobs(rows: list[dict[str, Any]], following: JobCursor | None, query: JobQuery,
                as_json: bool, out: TextIO, *, more_flags: str = "",
                now: datetime | None = None) -> None:
    """A page of ``query``; ``more_flags`` point the next page's command at the same
    database."""
    state, reasons, limit, cursor = query.state, query.reasons, query.limit, query.after
    if as_json:
        render.dump_json({"jobs": rows, "next": None if following is None else str(following)}, out)
        return
    console = render.console(out)
    title = f"{state} jobs" + (f" ({', '.join(reasons)})" if reasons else "")
    if not rows:
        console.print(f"no {title}" + (" after this cursor" if cursor else ""))
        return
    time_column, time_key = {"pending": ("next poll", "next_poll_at"),
                             "stuck": ("next poll", "next_poll_at"),
                             "landed": ("landed (UTC)", "landed_at"),
                             "failed": ("failed (UTC)", "updated_at")}[state]
    table = Table(title=title, header_style="bold")
    for column in ("job_id", time_column, "polls", "last status", "upstream status",
                   "reason" if state == "failed" else "next step", "last error"):
        table.add_column(column, no_wrap=column in ("job_id", time_column),
                         justify="right" if column in ("polls", "last status") else "left")
    now = now or datetime.now(UTC)
    for row in rows:
        at: datetime = row[time_key]
        when = (("due now" if at <= now else f"in {render.duration((at - now).total_seconds())}")
                if time_key == "next_poll_at" else f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}")
        error = row["last_error"] or ""
        table.add_row(str(row["job_id"]), when, f"{row['polls']:,}",
                      "-" if row["last_status"] is None else str(row["last_status"]),
                      row["upstream_status"] or "not asked yet",
                      (row["failed_reason"] if state == "failed" else row["next_step"]) or "-",
                      error[:60] + ("…" if len(error) > 60 else ""))
    render.print_table(console, table)
    if following is not None:
        flags = [f"--state {state}", *(f"--reason {r}" for r in reasons)]
        if limit != DEFAULT_PAGE:
            flags.append(f"--limit {limit}")
        console.print(f"more: harvester jobs {' '.join(flags)}{more_flags} --after {following}")
