"""``harvester changes``: the mirror's change feed as JSON lines, one page or for ever
(README "Querying the mirror").

Each line is one row that landed or changed (its columns), or one that retention
deleted (``"deleted": true``), with the cursor that resumes right after it. A consumer
that stores the last cursor it handled, with its own writes, gets every change once
across restarts. The feed itself is :mod:`harvester.store.changes`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from harvester.commands import options
from harvester.commands.database import Target, check_schema, open_pool
from harvester.errors import UserError
from harvester.settings import Settings
from harvester.store import translated
from harvester.store.changes import (
    MAX_PAGE,
    BadCursor,
    Change,
    Cursor,
    follow_changes,
    read_changes,
)


def add_parser(sub: Any) -> None:
    changes = sub.add_parser(
        "changes", help="the mirror's change feed as JSON lines, after a cursor",
        description='Rows that landed, changed or were deleted in the mirror, in the order '
                    'of the transactions that wrote them, one JSON object a line: {"cursor": '
                    '..., "job_id": ..., "deleted": false, ...the row\'s columns}. Pass the '
                    'last cursor handled as --after to resume right after it.')
    changes.add_argument("--after", metavar="CURSOR",
                         help="resume after this cursor (default: from the first row kept)")
    changes.add_argument("--limit", type=int, default=1000, metavar="N",
                         help=f"rows per page, 1 to {MAX_PAGE:,} (default 1000); without "
                              "--follow, one page is printed")
    changes.add_argument("--follow", action="store_true",
                         help="keep printing as rows land (Ctrl-C stops)")
    options.add_reading(changes)
    changes.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_changes(settings, args.after, args.limit, args.follow, sys.stdout,
                                   database=args.database))


def check_arguments(after: str | None, limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise UserError(f"--limit: 1 to {MAX_PAGE:,} rows per page (got {limit})")
    if after is not None:
        try:
            Cursor.parse(after)
        except BadCursor:
            raise UserError("--after: not a cursor the change feed printed "
                            "(<number>/<job_id>)") from None


async def cmd_changes(settings: Settings, after: str | None, limit: int, follow: bool,
                      out: TextIO, database: str | None = None) -> int:
    check_arguments(after, limit)
    target = Target(settings, database)
    async with open_pool(target) as (pool, where), translated(), pool.acquire() as conn:
        await check_schema(conn, where, target, "read")
        if not follow:
            write_lines(await read_changes(conn, after, limit), out)
            return 0
    async with target.dsn() as (dsn, _where):
        await follow_changes(dsn, after, limit, lambda page: write_lines(page, out))
    return 0  # pragma: no cover - follows until interrupted


def write_lines(page: Sequence[Change], out: TextIO) -> None:
    out.write("".join(render_change(change) + "\n" for change in page))
    out.flush()


def render_change(change: Change) -> str:
    """One line: the cursor, the job_id, whether the row is gone, and its columns (the
    server's JSON, spliced in rather than parsed and dumped again)."""
    head = (f'{{"cursor": {json.dumps(change.cursor)}, "job_id": "{change.job_id}", '
            f'"deleted": {"true" if change.deleted else "false"}')
    if change.body is None or change.body == "{}":
        return head + "}"
    return f"{head}, {change.body[1:]}"
