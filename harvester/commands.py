"""The operator's commands: migrate, enqueue, status, stuck, requeue.

Each opens the database (the configured one or the embedded server), does one thing,
and prints either a readable table (on a terminal) or stable JSON (``--json``). Errors a
user can cause come back as :class:`~harvester.errors.UserError` for the CLI to print
as one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Final, Literal, TextIO
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from harvester.embedded import database_url
from harvester.errors import UserError
from harvester.feed import BadLine, InvalidJobId, classify, parse_job_id, read_lines
from harvester.migrations import latest_version, migrate, pending_migrations
from harvester.settings import Settings
from harvester.store import Store, create_pool, translated

ENQUEUE_BATCH: Final = 10_000
SHOWN_BAD_LINES: Final = 20


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def dump_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, default=_json_default, indent=2, sort_keys=True) + "\n")


@asynccontextmanager
async def open_store(settings: Settings, *, require_schema: bool = True) -> AsyncIterator[Store]:
    async with database_url(settings) as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            if require_schema:
                async with translated(), pool.acquire() as conn:
                    if await pending_migrations(conn):
                        raise UserError("the database schema is not current: run `harvester migrate`")
            yield Store(pool)
        finally:
            await pool.close()


# ---------------------------------------------------------------- migrate


async def cmd_migrate(settings: Settings, out: TextIO) -> int:
    async with database_url(settings) as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            async with translated(), pool.acquire() as conn:
                done = await migrate(conn)
        finally:
            await pool.close()
    if done:
        for m in done:
            out.write(f"applied {m.version:03d}_{m.name}\n")
    out.write(f"schema at version {latest_version()}"
              f"{'' if done else ' (nothing to apply)'}\n")
    return 0


# ---------------------------------------------------------------- enqueue


@dataclass
class EnqueueReport:
    new: int = 0
    known: int = 0
    invalid: int = 0
    shown: list[BadLine] = field(default_factory=list)
    committed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "known": self.known, "invalid": self.invalid,
                "committed": self.committed,
                "errors": [str(b) for b in self.shown]}


def _input_stream(ids: Sequence[str], file: str | None, stdin: BinaryIO) -> tuple[BinaryIO, int | None]:
    if list(ids) == ["-"]:
        ids, file = [], "-"
    if ids and file:
        raise UserError("give job IDs as arguments or --file, not both")
    if ids:
        return io.BytesIO("\n".join(ids).encode()), None
    if file in (None, "-"):
        if file is None and stdin.isatty():
            raise UserError("give job IDs as arguments, --file PATH, or pipe them on stdin")
        return stdin, None
    assert file is not None
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror}") from None
    return handle, os.fstat(handle.fileno()).st_size


async def cmd_enqueue(settings: Settings, ids: Sequence[str], file: str | None,
                      skip_invalid: bool, as_json: bool, out: TextIO, err: TextIO,
                      stdin: BinaryIO) -> int:
    stream, total = _input_stream(ids, file, stdin)
    report = EnqueueReport()
    show_progress = err.isatty() and not ids
    try:
        async with open_store(settings) as store:
            report = await enqueue_stream(store, stream, skip_invalid=skip_invalid,
                                          total_bytes=total,
                                          progress_to=err if show_progress else None)
    finally:
        if stream is not stdin:
            stream.close()
    for bad in report.shown:
        err.write(f"{bad}\n")
    if report.invalid > len(report.shown):
        err.write(f"… and {report.invalid - len(report.shown)} more invalid line(s)\n")
    if as_json:
        dump_json(report.as_dict(), out)
    else:
        verdict = ("" if report.committed
                   else " — nothing enqueued (use --skip-invalid to enqueue the valid ones)")
        out.write(f"new: {report.new}, already known: {report.known}, invalid: {report.invalid}"
                  f"{verdict}\n")
    if report.invalid and not skip_invalid:
        return 2
    return 0


async def enqueue_stream(store: Store, stream: BinaryIO, *, skip_invalid: bool,
                         total_bytes: int | None = None, progress_to: TextIO | None = None
                         ) -> EnqueueReport:
    """Stream IDs into the queue in batches inside one transaction: all or nothing by
    default, so a bad line anywhere leaves the queue untouched."""
    report = EnqueueReport()
    progress = _progress(progress_to, total_bytes)
    task = progress.add_task("enqueue", total=total_bytes) if progress else None
    batch: list[UUID] = []
    valid = 0
    try:
        async with translated(), store.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                inserting = True
                for line in classify(read_lines(stream)):
                    if line.bad is not None:
                        report.invalid += 1
                        if len(report.shown) < SHOWN_BAD_LINES:
                            report.shown.append(line.bad)
                        if not skip_invalid:
                            inserting = False  # all or nothing: keep reading to report
                            batch.clear()
                        continue
                    valid += 1
                    if inserting:
                        assert line.job_id is not None
                        batch.append(line.job_id)
                        if len(batch) >= ENQUEUE_BATCH:
                            report.new += await store.enqueue(batch, conn)
                            batch.clear()
                            _advance(progress, task, stream, valid)
                if inserting and batch:
                    report.new += await store.enqueue(batch, conn)
                if inserting:
                    await tx.commit()
                    report.committed = True
                else:
                    await tx.rollback()
                    report.new = 0
            except BaseException:
                await _rollback_quietly(tx)
                raise
    finally:
        if progress is not None:
            progress.stop()
    report.known = valid - report.new if report.committed else 0
    return report


async def _rollback_quietly(tx: Any) -> None:
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await tx.rollback()


def _progress(to: TextIO | None, total: int | None) -> Progress | None:
    if to is None:
        return None
    progress = Progress(
        TextColumn("enqueue"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[ids]} IDs"), TimeElapsedColumn(),
        console=Console(file=to), transient=True)
    progress.start()
    return progress


def _advance(progress: Progress | None, task: Any, stream: BinaryIO, ids: int) -> None:
    if progress is None or task is None:
        return
    try:
        position = stream.tell()
    except (OSError, ValueError):
        position = None
    if position is not None:
        progress.update(task, completed=position, ids=f"{ids:,}")
    else:
        progress.update(task, ids=f"{ids:,}")


# ---------------------------------------------------------------- status


async def cmd_status(settings: Settings, as_json: bool, out: TextIO) -> int:
    async with open_store(settings) as store:
        status = await store.status()
    if as_json:
        dump_json(status, out)
        return 0
    console = Console(file=out, highlight=False, soft_wrap=True)
    jobs = status["jobs"]
    table = Table(title="harvester queue", show_header=True, header_style="bold")
    table.add_column("state")
    table.add_column("jobs", justify="right")
    table.add_column("detail")
    age = status["oldest_due_age_seconds"]
    table.add_row("pending", f"{jobs['pending']:,}",
                  f"due now {status['due_now']:,}"
                  + (f", oldest due {_duration(age)}" if age is not None else "")
                  + f", in flight {status['in_flight']:,}")
    table.add_row("stuck", f"{jobs['stuck']:,}", f"open stuck records {status['stuck_open']:,}")
    table.add_row("landed", f"{jobs['landed']:,}",
                  f"last minute {status['landed_last_minute']:,}, "
                  f"last hour {status['landed_last_hour']:,}")
    reasons = ", ".join(f"{k} {v:,}" for k, v in status["failed_by_reason"].items())
    table.add_row("failed", f"{jobs['failed']:,}", reasons)
    console.print(table)
    circuit = "OPEN (upstream rejects the API token)" if status["auth_circuit_open"] else "closed"
    console.print(f"auth circuit: {circuit}")
    workers = status["workers"]
    if workers:
        names = ", ".join(f"{w['worker_id']} (in flight {w['in_flight']})" for w in workers)
        console.print(f"daemons alive: {len(workers)}: {names}")
    else:
        console.print("daemons alive: none (no heartbeat in the last 2 minutes)")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


# ---------------------------------------------------------------- stuck


async def cmd_stuck(settings: Settings, as_json: bool, out: TextIO) -> int:
    async with open_store(settings) as store:
        rows = await store.open_stuck()
    if as_json:
        dump_json(rows, out)
        return 0
    console = Console(file=out, highlight=False, soft_wrap=True)
    if not rows:
        console.print("no open stuck jobs")
        return 0
    table = Table(title=f"open stuck jobs ({len(rows)})", header_style="bold")
    for column in ("job_id", "first seen", "open for", "times seen", "last status", "next recheck"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["job_id"]), row["first_seen_at"].isoformat(timespec="seconds"),
                      _duration(row["open_for_seconds"]), str(row["times_seen"]),
                      str(row["last_status"]),
                      row["next_poll_at"].isoformat(timespec="seconds") if row["next_poll_at"] else "-")
    console.print(table)
    return 0


# ---------------------------------------------------------------- requeue


def parse_ids(texts: Iterable[str]) -> list[UUID]:
    ids: list[UUID] = []
    problems: list[str] = []
    for index, text in enumerate(texts, start=1):
        try:
            ids.append(parse_job_id(text))
        except InvalidJobId as exc:
            problems.append(f"argument {index}: {exc}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    return ids


async def cmd_requeue(settings: Settings, ids: Sequence[str],
                      state: Literal["failed", "stuck"] | None, as_json: bool, out: TextIO) -> int:
    if bool(ids) == (state is not None):
        raise UserError("give job IDs or --state failed|stuck (one of the two)")
    job_ids = parse_ids(ids) if ids else None
    async with open_store(settings) as store:
        count = await store.requeue(job_ids=job_ids, state=state)
    if as_json:
        dump_json({"requeued": count}, out)
    else:
        out.write(f"requeued {count} job(s); they are due now\n")
    return 0


def stdin_binary() -> BinaryIO:
    return sys.stdin.buffer
