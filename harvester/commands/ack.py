"""``harvester stuck ack``: close open stuck records by hand, saying who and why
(README "Stuck records").

The jobs keep their state and their recheck; only the records close. IDs come as for
enqueue (:mod:`harvester.commands.ids`), all or nothing on bad input, in one
transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, Final, TextIO
from uuid import UUID

from harvester.commands import options, render
from harvester.commands.database import open_store
from harvester.commands.ids import (
    Intake,
    Tally,
    id_input,
    in_one_transaction,
    progress_for,
    refused,
    stdin_binary,
)
from harvester.errors import UserError
from harvester.ports import AckReport
from harvester.settings import Settings
from harvester.store import Connection

KINDS: Final = ("acknowledged", "closed_already", "never_stuck", "unknown")
"""What became of an ID (the fields of :class:`~harvester.ports.AckReport`)."""


def add_parser(sub: Any) -> None:
    """``ack`` under ``stuck`` (``sub``: the subparsers of ``stuck``)."""
    ack = sub.add_parser(
        "ack", help="close open stuck records by hand, saying who and why",
        description="Acknowledge stuck records: each open record of the given jobs closes "
                    "with resolution 'acknowledged', who (--by) and why (--note), and stops "
                    "counting in harvester_stuck_open and the HarvesterStuckJobs alert. The "
                    "jobs keep their state and their recheck: a row that lands later is still "
                    "mirrored. All or nothing on bad input, like enqueue.")
    ack.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                     help="job IDs; a single '-' reads stdin")
    ack.add_argument("--file", "-f", metavar="PATH", help="read IDs from PATH ('-' for stdin)")
    ack.add_argument("--by", metavar="NAME",
                     help="who acknowledges (default: the login name)")
    ack.add_argument("--note", required=True, metavar="TEXT",
                     help="why, e.g. a ticket: 'reported to justcrawl, ticket 4711'")
    ack.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                     help="print {acknowledged, acknowledged_ids, closed_already, "
                          "never_stuck, unknown (the first 20 of each, with *_count), "
                          "resolved_by, note} as JSON")
    # The same options as `stuck`, before or after `ack`: SUPPRESS keeps a value given
    # before `ack` from being reset by this parser's defaults.
    options.add_reading(ack)
    for action in ack._actions:
        if action.dest in ("data_dir", "database", "log_level", "log_format"):
            action.default = argparse.SUPPRESS
    ack.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_stuck_ack(settings, args.job_ids, args.file, args.by, args.note,
                                     args.json, sys.stdout, sys.stderr, stdin_binary(),
                                     database=args.database))


def _who(by: str | None) -> str:
    if by is None:
        try:
            by = getpass.getuser()
        except (OSError, KeyError):
            raise UserError("say who acknowledges with --by NAME") from None
    by = by.strip()
    if not by or len(by) > 200 or not by.isprintable():
        raise UserError("--by: a name of 1 to 200 printable characters")
    return by


async def cmd_stuck_ack(settings: Settings, ids: Sequence[str], file: str | None,
                        by: str | None, note: str, as_json: bool, out: TextIO, err: TextIO,
                        stdin: BinaryIO, database: str | None = None) -> int:
    """Close open stuck records by hand, with who and why (README "Operating")."""
    who = _who(by)
    note = note.strip()
    if not note or len(note) > 2000:
        raise UserError("--note: say why, in 1 to 2000 characters")
    source = id_input(ids, file, stdin, implicit_stdin=False)
    if source is None:
        raise UserError("give the job IDs to acknowledge as arguments, with --file PATH, "
                        "or - for stdin")
    intake = Intake()
    try:
        async with open_store(settings, database=database) as store:

            async def ack(conn: Connection, batch: list[UUID]) -> None:
                done = await store.acknowledge_stuck(batch, who, note, conn)
                for kind in KINDS:
                    intake.done.add(kind, getattr(done, kind))

            await in_one_transaction(store, source.entries, intake, ack,
                                     progress=progress_for(source, err, "acknowledge"))
    finally:
        source.close()
    if refused(intake, source, err, "nothing acknowledged"):
        return 2
    render_ack(intake.done, who, note, as_json, out)
    return 0


def render_ack(tally: Tally, who: str, note: str, as_json: bool, out: TextIO) -> None:
    """What acknowledging did, kind by kind (:data:`KINDS`), the first IDs of each named."""
    counts = {kind: tally.count(kind) for kind in KINDS}
    report = AckReport(*(tally.first(kind) for kind in KINDS))
    if as_json:
        render.dump_json({"acknowledged": counts["acknowledged"],
                          "acknowledged_ids": report.acknowledged,
                          "closed_already": [{"job_id": j, "resolution": r, "resolved_by": b}
                                             for j, r, b in report.closed_already],
                          "closed_already_count": counts["closed_already"],
                          "never_stuck": report.never_stuck,
                          "never_stuck_count": counts["never_stuck"],
                          "unknown": report.unknown, "unknown_count": counts["unknown"],
                          "resolved_by": who, "note": note}, out)
        return
    out.write(f"acknowledged {counts['acknowledged']:,} stuck record(s) as {who}\n")
    if report.closed_already:
        shown = ", ".join(f"{j} ({r}{f' by {b}' if b else ''})"
                          for j, r, b in report.closed_already[:5])
        more = counts["closed_already"] - min(5, len(report.closed_already))
        out.write(f"closed already {counts['closed_already']:,}: {shown}"
                  + (f" … and {more:,} more" if more else "") + "\n")
    if report.never_stuck:
        out.write(f"never stuck {counts['never_stuck']:,} job(s): "
                  f"{render.id_list(report.never_stuck, total=counts['never_stuck'])}\n")
    if report.unknown:
        out.write(f"not in the queue {counts['unknown']:,} job ID(s): "
                  f"{render.id_list(report.unknown, total=counts['unknown'])}\n")

