"""``harvester requeue``: put jobs back to pending, due now, their age limits counted from
now (README "Looking at jobs and requeueing them").

Aimed by job IDs (streamed in one transaction, as enqueue's) or by a selection (a state,
failure reasons, an age window); ``--dry-run`` counts and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, TextIO
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
from harvester.feed import classify_arguments
from harvester.ports import Selection
from harvester.settings import Settings
from harvester.store import Connection


def add_parser(sub: Any) -> None:
    rq = sub.add_parser(
        "requeue", help="put jobs back to pending, due now",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Put jobs back to pending, due now, with their age limits counted from\n"
                    "now; they start over as freshly fed jobs (followed through batch-status).\n"
                    "Aim with job IDs (arguments, --file PATH, or - for stdin; all or nothing\n"
                    "on bad lines, like enqueue), or with a selection:\n"
                    "  --state failed|stuck      every job in that state\n"
                    "  --reason REASON           failed jobs with that reason (repeatable)\n"
                    "  --older-than/--newer-than how long the job has been failed or stuck\n"
                    "                            (90s, 15m, 6h, 7d)\n"
                    "A landed job named by ID is polled again on purpose (also one whose queue\n"
                    "row retention deleted: the mirror still has it); landing it again is an\n"
                    "idempotent upsert. Open stuck records stay open: they close when the job\n"
                    "ends or with `harvester stuck ack`. --dry-run counts, changes nothing.")
    rq.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                    help="job IDs; a single '-' reads stdin")
    rq.add_argument("--file", "-f", metavar="PATH", help="read IDs from PATH ('-' for stdin)")
    rq.add_argument("--state", choices=["failed", "stuck"],
                    help="requeue the jobs in this state")
    rq.add_argument("--reason", action="append", default=[], metavar="REASON",
                    help="only failed jobs with this reason: forbidden, upstream_failed, "
                         "not_found, expired or http_<status>; repeatable; implies "
                         "--state failed")
    rq.add_argument("--older-than", dest="older_than", metavar="DURATION",
                    help="only jobs failed (or stuck) at least this long ago")
    rq.add_argument("--newer-than", dest="newer_than", metavar="DURATION",
                    help="only jobs failed (or stuck) less than this long ago")
    rq.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="say how many jobs would be requeued; change nothing")
    rq.add_argument("--json", action="store_true",
                    help="print {requeued, dry_run, landed_polled_again, "
                         "landed_polled_again_count, unknown, unknown_count} as JSON (the ID "
                         "lists hold the first 20)")
    options.add_reading(rq)
    rq.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    aim = RequeueAim(ids=args.job_ids, file=args.file, state=args.state,
                     reasons=args.reason, older_than=args.older_than,
                     newer_than=args.newer_than)
    return asyncio.run(cmd_requeue(settings, args.job_ids, args.state, args.json, sys.stdout,
                                   aim=aim, dry_run=args.dry_run, err=sys.stderr,
                                   stdin=stdin_binary(), database=args.database))


def parse_duration(text: str, flag: str) -> float:
    """``90``, ``90s``, ``15m``, ``6h``, ``7d`` (also ``1.5h``) as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise UserError(f"{flag}: expected a duration such as 90s, 15m, 6h or 7d "
                        f"(got {text[:40]!r})")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def parse_ids(texts: Iterable[str]) -> list[UUID]:
    """Job IDs from arguments, or one UserError naming each bad one (the first few)."""
    ids: list[UUID] = []
    problems: list[str] = []
    for entry in classify_arguments(texts):
        if entry.bad is not None:
            problems.append(str(entry.bad))
        else:
            assert entry.job_id is not None
            ids.append(entry.job_id)
    if problems:
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{shown}{more}; nothing requeued")
    return ids


@dataclass
class RequeueAim:
    """What a requeue aims at, as given on the command line."""

    ids: Sequence[str] = ()
    file: str | None = None
    state: Literal["failed", "stuck"] | None = None
    reasons: Sequence[str] = ()
    older_than: str | None = None
    newer_than: str | None = None

    def selection(self) -> Selection | None:
        reasons = options.check_reasons(self.reasons)
        if reasons and self.state == "stuck":
            raise UserError("--reason applies to failed jobs only")
        state = self.state or ("failed" if reasons else None)
        aged = self.older_than is not None or self.newer_than is not None
        given_ids = bool(self.ids) or self.file is not None
        if given_ids and (state is not None or aged):
            raise UserError("give job IDs (arguments, --file or -) or a selection (--state, "
                            "--reason, --older-than, --newer-than), not both")
        if state is None:
            if aged:
                raise UserError("--older-than and --newer-than need --state failed|stuck "
                                "(or --reason)")
            if not given_ids:
                raise UserError("give job IDs (arguments, --file PATH, or - for stdin) or "
                                "--state failed|stuck")
            return None
        older = None if self.older_than is None else parse_duration(self.older_than,
                                                                    "--older-than")
        newer = None if self.newer_than is None else parse_duration(self.newer_than,
                                                                    "--newer-than")
        return Selection(state, reasons, older, newer)


async def cmd_requeue(settings: Settings, ids: Sequence[str],
                      state: Literal["failed", "stuck"] | None, as_json: bool, out: TextIO, *,
                      aim: RequeueAim | None = None, dry_run: bool = False,
                      err: TextIO | None = None, stdin: BinaryIO | None = None,
                      database: str | None = None) -> int:
    aim = aim or RequeueAim(ids=ids, state=state)
    err = err if err is not None else sys.stderr
    selection = aim.selection()
    tally = Tally()
    if selection is not None:
        async with open_store(settings, database=database) as store:
            done = await store.requeue(selection=selection, dry_run=dry_run)
        tally.add("requeued", done.requeued)
    else:
        if aim.file is None and list(aim.ids) != ["-"]:
            parse_ids(aim.ids)  # bad arguments: one line, before touching the database
        source = id_input(aim.ids, aim.file, stdin or stdin_binary(), implicit_stdin=False)
        assert source is not None
        intake = Intake(done=tally)
        try:
            async with open_store(settings, database=database) as store:

                async def requeue(conn: Connection, batch: list[UUID]) -> None:
                    done = await store.requeue(job_ids=batch, dry_run=dry_run, conn=conn)
                    tally.add("requeued", done.requeued)
                    tally.add("landed", done.landed)
                    tally.add("unknown", done.unknown)

                await in_one_transaction(store, source.entries, intake, requeue,
                                         progress=progress_for(source, err, "requeue"),
                                         commit=not dry_run)
        finally:
            source.close()
        if refused(intake, source, err, "nothing requeued"):
            return 2
    render_requeue(tally, dry_run, as_json, out)
    return 0


def render_requeue(tally: Tally, dry_run: bool, as_json: bool, out: TextIO) -> None:
    """How many were requeued; by ID, which had landed and which are nowhere."""
    landed_count, unknown_count = tally.count("landed"), tally.count("unknown")
    requeued, landed, unknown = tally.count("requeued"), tally.first("landed"), tally.first("unknown")
    if as_json:
        render.dump_json({"requeued": requeued, "dry_run": dry_run,
                          "landed_polled_again": landed,
                          "landed_polled_again_count": landed_count,
                          "unknown": unknown, "unknown_count": unknown_count}, out)
        return
    if dry_run:
        out.write(f"would requeue {requeued:,} job(s) (dry run: nothing changed)\n")
    else:
        out.write(f"requeued {requeued:,} job(s); they are due now\n")
    if landed_count:
        out.write(f"of which landed before, {'to be ' if dry_run else ''}polled again "
                  f"{landed_count:,}: {render.id_list(landed, total=landed_count)}\n")
    if unknown_count:
        out.write(f"not in the queue {unknown_count:,} job ID(s): "
                  f"{render.id_list(unknown, total=unknown_count)}\n")
