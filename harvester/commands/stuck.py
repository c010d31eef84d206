"""``harvester stuck``: the stuck records, open ones oldest first, or the closed ones
with how, by whom and why they closed (README "Stuck records"); ``stuck ack`` is
:mod:`harvester.commands.ack`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from rich.table import Table

from harvester.commands import ack, options, render
from harvester.commands.database import open_store
from harvester.errors import UserError
from harvester.jobquery import DEFAULT_PAGE
from harvester.settings import Settings


def add_parser(sub: Any) -> None:
    stuck = sub.add_parser("stuck", help="stuck records (open ones, oldest first); stuck ack",
                           description="The open stuck records (upstream says completed but "
                                       "no result row landed), oldest first. A record closes "
                                       "when its job ends (landed, failed, expired) or when an "
                                       "operator acknowledges it: `harvester stuck ack`.")
    stuck.add_argument("--json", action="store_true",
                       help="print a JSON array of records (at most --limit; stderr says when "
                            "there are more)")
    stuck.add_argument("--limit", type=int, default=DEFAULT_PAGE, metavar="N",
                       help=f"show at most N records, 1 or more (default {DEFAULT_PAGE}); "
                            "a list cut short says how many there are")
    which = stuck.add_mutually_exclusive_group()
    which.add_argument("--resolved", dest="which", action="store_const", const="resolved",
                       default="open", help="closed records instead, most recently closed first")
    which.add_argument("--all", dest="which", action="store_const", const="all",
                       help="open and closed records, oldest first")
    options.add_reading(stuck)
    stuck.set_defaults(handler=run)
    ack.add_parser(stuck.add_subparsers(dest="stuck_action", metavar="[ack]"))


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_stuck(settings, args.json, sys.stdout, database=args.database,
                                 which=args.which, limit=args.limit, err=sys.stderr))


def check_limit(limit: int) -> int:
    """A list bound, as every ``--limit`` is: how many to show, 1 or more (``jobs``
    adds its page's ceiling); no number means "all" (README "Commands")."""
    if limit < 1:
        raise UserError(f"--limit: 1 or more records (got {limit})")
    return limit


async def cmd_stuck(settings: Settings, as_json: bool, out: TextIO, *,
                    database: str | None = None,
                    which: Literal["open", "resolved", "all"] = "open",
                    limit: int = DEFAULT_PAGE, err: TextIO | None = None) -> int:
    bound = check_limit(limit)
    async with open_store(settings, database=database) as store:
        rows, total = await store.stuck_records(which, bound)
    render_stuck(rows, total, which, as_json, out, err)
    return 0


def render_stuck(rows: list[dict[str, Any]], total: int, which: Literal["open", "resolved", "all"],
                 as_json: bool, out: TextIO, err: TextIO | None = None,
                 now: datetime | None = None) -> None:
    """``rows`` of ``total`` records; a note (stderr under ``--json``) when the list is
    cut short."""
    what = {"open": "open stuck jobs", "resolved": "closed stuck records",
            "all": "stuck records"}[which]
    cut = (f"showing {len(rows):,} of {total:,} {what}; --limit {total} shows them all"
           ) if total > len(rows) else None
    if as_json:
        render.dump_json(rows, out)
        if cut and err is not None:
            err.write(f"harvester: {cut}\n")
        return
    console = render.console(out)
    if not rows:
        console.print(f"no {what}")
        return
    now = now or datetime.now(UTC)
    order = "most recently closed first" if which == "resolved" else "oldest first"
    table = Table(title=f"{what} ({total:,}), {order}", header_style="bold")
    table.add_column("job_id", no_wrap=True)
    table.add_column("state")
    table.add_column("first seen (UTC)", no_wrap=True)
    table.add_column("open for", justify="right")
    table.add_column("times seen", justify="right")
    table.add_column("last status", justify="right")
    table.add_column("next poll", no_wrap=True)
    if which != "open":
        table.add_column("closed")
        table.add_column("note")
    for row in rows:
        next_poll = row["next_poll_at"]
        cells = [
            str(row["job_id"]), row["state"],
            row["first_seen_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            render.duration(row["open_for_seconds"]), f"{row['times_seen']:,}",
            "-" if row["last_status"] is None else str(row["last_status"]),
            "-" if next_poll is None else (
                "due now" if next_poll <= now
                else f"in {render.duration((next_poll - now).total_seconds())}")]
        if which != "open":
            closed = "-"
            if row["resolved_at"] is not None:
                closed = (f"{row['resolution'] or 'closed'}"
                          + (f" by {row['resolved_by']}" if row["resolved_by"] else "")
                          + f", {row['resolved_at'].astimezone(UTC):%Y-%m-%d %H:%M}")
            cells += [closed, row["resolution_note"] or ""]
        table.add_row(*cells)
    render.print_table(console, table)
    if cut:
        console.print(cut)
