"""``harvester enqueue``: feed job IDs, any number, in one transaction (README "Feeding
jobs").

All or nothing on bad input unless ``--skip-invalid``; memory flat whatever the input's
size (:mod:`harvester.commands.ids`); needs only USAGE on the schema and INSERT on
harvester.jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO
from uuid import UUID

from harvester.commands import options
from harvester.commands.database import open_store
from harvester.commands.ids import (
    IdProgress,
    Intake,
    enqueue_input,
    in_one_transaction,
    interrupt_at_once,
    interrupted_message,
    progress_for,
    stdin_binary,
)
from harvester.commands.render import dump_json
from harvester.feed import Entry
from harvester.settings import Settings
from harvester.store import Connection
from harvester.store.operators import OperatorStore


def add_parser(sub: Any) -> None:
    enq = sub.add_parser(
        "enqueue", help="feed job IDs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Feed job IDs: as arguments, or one per line from --file PATH or stdin\n"
                    "(`harvester enqueue - < ids.txt`, or a pipe). Whitespace is trimmed, blank\n"
                    "lines and # comments are skipped, CRLF and a UTF-8 BOM are fine, UUIDs in\n"
                    "any case are normalised. Streams any size in one transaction.\n\n"
                    "All or nothing: if any line is bad, nothing is enqueued, each bad line is\n"
                    "listed on stderr as 'line N: why' (the first 20, then a count) and the\n"
                    "exit status is 2. With --skip-invalid the valid IDs are enqueued, the bad\n"
                    "ones still listed, and the exit status is 0 (2 if no line was valid).\n"
                    "Ctrl-C enqueues nothing (it says so; exit status 130).\n"
                    "Prints new / already known / invalid counts (--json for scripts).\n"
                    "Needs only USAGE on schema harvester and INSERT on harvester.jobs.")
    enq.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                     help="job IDs; a single '-' reads stdin")
    enq.add_argument("--file", "-f", metavar="PATH", help="read IDs from PATH ('-' for stdin)")
    enq.add_argument("--skip-invalid", action="store_true",
                     help="enqueue the valid IDs even if some lines are bad")
    enq.add_argument("--json", action="store_true",
                     help="print {new, known, invalid, valid, committed, errors, "
                          "errors_not_shown} as JSON")
    options.add_reading(enq)
    enq.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_enqueue(settings, args.job_ids, args.file, args.skip_invalid,
                                   args.json, sys.stdout, sys.stderr, stdin_binary(),
                                   database=args.database))


@dataclass
class EnqueueReport(Intake):
    """What an enqueue did: of the valid IDs, how many created a job (``new``) and how
    many did not (``known``: already in the queue, or repeated within the input).
    Nothing is new unless the one transaction committed."""

    @property
    def new(self) -> int:
        return self.done.count("new") if self.committed else 0

    @property
    def known(self) -> int:
        return self.valid - self.new if self.committed else 0

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "known": self.known, "invalid": self.invalid,
                "valid": self.valid, "committed": self.committed,
                "errors": [str(b) for b in self.shown], "errors_not_shown": self.not_shown}


async def enqueue_entries(store: OperatorStore, entries: Iterable[Entry], *, skip_invalid: bool,
                          progress: IdProgress | None = None,
                          report: EnqueueReport | None = None) -> EnqueueReport:
    """Stream IDs into the queue (see :func:`~harvester.commands.ids.in_one_transaction`)."""
    report = report if report is not None else EnqueueReport()

    async def insert(conn: Connection, batch: list[UUID]) -> None:
        report.done.add("new", await store.enqueue(batch, conn))

    await in_one_transaction(store, entries, report, insert, skip_invalid=skip_invalid,
                             progress=progress)
    return report


async def cmd_enqueue(settings: Settings, ids: Sequence[str], file: str | None,
                      skip_invalid: bool, as_json: bool, out: TextIO, err: TextIO,
                      stdin: BinaryIO, database: str | None = None) -> int:
    """Exit status: 0 when the input was enqueued (with --skip-invalid: when it held at
    least one valid ID); 2 when nothing was enqueued because of bad input; 130 when
    interrupted (after saying whether anything was enqueued)."""
    source = enqueue_input(ids, file, stdin)
    report = EnqueueReport()
    try:
        with interrupt_at_once():
            progress = progress_for(source, err, "enqueue")
            async with open_store(settings, database=database, need="feed") as store:
                await enqueue_entries(store, source.entries, skip_invalid=skip_invalid,
                                      progress=progress, report=report)
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.write(interrupted_message(
            report, "nothing enqueued",
            "the IDs may or may not be enqueued (enqueueing them again is safe)",
            "the IDs are enqueued"))
        raise
    finally:
        source.close()
    render_enqueue(report, source.what, source.name, as_json, out, err)
    if report.invalid and (not report.committed or report.valid == 0):
        return 2
    return 0


def render_enqueue(report: EnqueueReport, what: str, name: str, as_json: bool, out: TextIO,
                   err: TextIO) -> None:
    """The bad entries on stderr (``what``: line or argument; ``name``: of the input),
    the counts on stdout."""
    for bad in report.shown:
        err.write(f"{bad}\n")
    if report.not_shown:
        err.write(f"… and {report.not_shown:,} more invalid {what}(s)\n")
    if report.valid == 0 and report.invalid == 0:
        err.write(f"no job IDs in {name}\n")
    if as_json:
        dump_json(report.as_dict(), out)
    else:
        line = (f"new: {report.new:,}, already known: {report.known:,}, "
                f"invalid: {report.invalid:,}")
        if not report.committed:
            line += (f" — nothing enqueued (use --skip-invalid to enqueue the "
                     f"{report.valid:,} valid ID(s))" if report.valid
                     else " — nothing enqueued")
        elif report.invalid:
            line += " (skipped)"
        out.write(line + "\n")
