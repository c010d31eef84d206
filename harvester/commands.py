"""The operator's commands: migrate, enqueue, status, stuck, requeue.

Each opens the database (the configured one or the embedded server), does one thing,
and prints either a readable table (on a terminal) or stable JSON (``--json``). Errors a
user can cause come back as :class:`~harvester.errors.UserError` for the CLI to print
as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, Literal, TextIO
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from harvester.embedded import EmbeddedPostgres, database_url, ensure_database
from harvester.errors import UserError
from harvester.feed import BadInput, Entry, classify_arguments, classify_lines
from harvester.migrations import latest_version, migrate, newer_versions, pending_migrations
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
                newer = await newer_versions(conn)
        finally:
            await pool.close()
    if done:
        for m in done:
            out.write(f"applied {m.version:03d}_{m.name}\n")
    out.write(f"schema at version {latest_version()}"
              f"{'' if done else ' (nothing to apply)'}\n")
    if newer:
        out.write(f"note: the database also has migration(s) {', '.join(map(str, newer))} from a "
                  "newer harvester; left as they are\n")
    return 0


# ---------------------------------------------------------------- enqueue


@dataclass
class EnqueueReport:
    """What an enqueue did. ``known`` counts valid IDs that created no job: already in
    the queue, or repeated within the input. ``shown`` holds the first bad entries only,
    so a file of ten million bad lines costs no more memory than one of twenty."""

    valid: int = 0
    new: int = 0
    known: int = 0
    invalid: int = 0
    shown: list[BadInput] = field(default_factory=list)
    committed: bool = False

    @property
    def not_shown(self) -> int:
        return self.invalid - len(self.shown)

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "known": self.known, "invalid": self.invalid,
                "valid": self.valid, "committed": self.committed,
                "errors": [str(b) for b in self.shown], "errors_not_shown": self.not_shown}


@dataclass
class EnqueueInput:
    """Where the IDs come from: the entries to read, and how to show progress."""

    entries: Iterator[Entry]
    name: str  # for messages: "arguments", "stdin" or the path
    what: str  # "argument" or "line"
    stream: BinaryIO | None = None  # for a file: its position drives the progress bar
    total_bytes: int | None = None
    close: Callable[[], None] = lambda: None


def enqueue_input(ids: Sequence[str], file: str | None, stdin: BinaryIO) -> EnqueueInput:
    """Resolve the three ways of giving IDs (arguments, --file PATH, stdin) to one."""
    if list(ids) == ["-"]:
        ids, file = [], "-"
    if ids and file:
        raise UserError("give job IDs as arguments or with --file, not both")
    if ids:
        return EnqueueInput(classify_arguments(ids), "arguments", "argument")
    if file is None and stdin.isatty():
        raise UserError("give job IDs as arguments, with --file PATH, or on stdin "
                        "(harvester enqueue - < ids.txt)")
    if file in (None, "-"):
        size = _regular_file_size(stdin)  # `< ids.txt` gives a bar with an end
        return EnqueueInput(_reading(classify_lines(stdin), "stdin"), "stdin", "line",
                            stream=stdin if size else None, total_bytes=size)
    assert file is not None
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed through EnqueueInput.close
        size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    return EnqueueInput(_reading(classify_lines(handle), file), file, "line", stream=handle,
                        total_bytes=size or None, close=handle.close)


def _regular_file_size(stream: BinaryIO) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None  # a pipe, a socket, or an in-memory stream
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size else None


def _reading(entries: Iterator[Entry], name: str) -> Iterator[Entry]:
    """Entries, with a read error on the input reported as the user's input failing,
    never mistaken for the database failing."""
    while True:
        try:
            entry = next(entries)
        except StopIteration:
            return
        except OSError as exc:
            raise UserError(f"cannot read {name}: {exc.strerror or exc}") from None
        yield entry


async def cmd_enqueue(settings: Settings, ids: Sequence[str], file: str | None,
                      skip_invalid: bool, as_json: bool, out: TextIO, err: TextIO,
                      stdin: BinaryIO) -> int:
    """Exit status: 0 when the input was enqueued (with --skip-invalid: when it held at
    least one valid ID); 2 when nothing was enqueued because of bad input."""
    source = enqueue_input(ids, file, stdin)
    try:
        progress = (EnqueueProgress(err, source.stream, source.total_bytes)
                    if err.isatty() and source.what == "line" else None)
        async with open_store(settings) as store:
            report = await enqueue_entries(store, source.entries, skip_invalid=skip_invalid,
                                           progress=progress)
    finally:
        source.close()
    for bad in report.shown:
        err.write(f"{bad}\n")
    if report.not_shown:
        err.write(f"… and {report.not_shown:,} more invalid {source.what}(s)\n")
    if report.valid == 0 and report.invalid == 0:
        err.write(f"no job IDs in {source.name}\n")
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
    if report.invalid and (not report.committed or report.valid == 0):
        return 2
    return 0


async def enqueue_entries(store: Store, entries: Iterable[Entry], *, skip_invalid: bool,
                          progress: EnqueueProgress | None = None) -> EnqueueReport:
    """Stream IDs into the queue in batches of ``ENQUEUE_BATCH`` inside one transaction.

    All or nothing by default: at the first bad entry the transaction is rolled back at
    once (releasing what it held) and the rest of the input is only read, to report
    every bad entry. With ``skip_invalid`` bad entries are counted and skipped. Either
    way the whole input is one transaction: interrupting the command enqueues nothing.
    Memory stays flat: one batch of IDs and the first ``SHOWN_BAD_LINES`` refusals."""
    report = EnqueueReport()
    batch: list[UUID] = []
    try:
        async with translated(), store.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            open_tx = True
            try:
                for entry in entries:
                    if entry.bad is not None:
                        report.invalid += 1
                        if len(report.shown) < SHOWN_BAD_LINES:
                            report.shown.append(entry.bad)
                        if open_tx and not skip_invalid:
                            open_tx = False
                            batch.clear()
                            await tx.rollback()
                    else:
                        assert entry.job_id is not None
                        report.valid += 1
                        if open_tx:
                            batch.append(entry.job_id)
                            if len(batch) >= ENQUEUE_BATCH:
                                report.new += await store.enqueue(batch, conn)
                                batch.clear()
                    if progress is not None and (report.valid + report.invalid) % 1000 == 0:
                        progress.update(report.valid, report.invalid)
                if open_tx:
                    if batch:
                        report.new += await store.enqueue(batch, conn)
                    open_tx = False
                    await tx.commit()
                    report.committed = True
            except BaseException:
                if open_tx:
                    await _rollback_quietly(tx)
                raise
    finally:
        if progress is not None:
            progress.stop()
    if report.committed:
        report.known = report.valid - report.new
    else:
        report.new = 0
    return report


async def _rollback_quietly(tx: Any) -> None:
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await tx.rollback()


class EnqueueProgress:
    """A progress bar on the terminal: bytes read of a file, or a running count for a
    pipe whose size nobody knows."""

    def __init__(self, to: TextIO, stream: BinaryIO | None, total_bytes: int | None) -> None:
        self._stream = stream
        self._progress = Progress(
            TextColumn("enqueue"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[ids]} IDs, {task.fields[bad]} invalid"),
            TimeElapsedColumn(),
            console=Console(file=to), transient=True)
        self._task = self._progress.add_task("enqueue", total=total_bytes, ids="0", bad="0")
        self._progress.start()

    def update(self, valid: int, invalid: int) -> None:
        position: int | None = None
        if self._stream is not None:
            try:
                position = self._stream.tell()
            except (OSError, ValueError):
                position = None
        fields: dict[str, Any] = {"ids": f"{valid:,}", "bad": f"{invalid:,}"}
        if position is not None:
            fields["completed"] = position
        self._progress.update(self._task, **fields)

    def stop(self) -> None:
        self._progress.stop()


# ---------------------------------------------------------------- status


async def cmd_status(settings: Settings, as_json: bool, out: TextIO) -> int:
    async with open_store(settings) as store:
        status = await store.status()
    if as_json:
        dump_json(status, out)
        return 0
    console = _console(out)
    jobs = status["jobs"]
    table = Table(title="harvester queue", show_header=True, header_style="bold")
    table.add_column("state")
    table.add_column("jobs", justify="right")
    table.add_column("detail")
    table.add_row("pending", f"{jobs['pending']:,}",
                  f"claimed by a daemon right now {status['in_flight']:,}")
    table.add_row("stuck", f"{jobs['stuck']:,}", f"open stuck records {status['stuck_open']:,}")
    table.add_row("landed", f"{jobs['landed']:,}",
                  f"last minute {status['landed_last_minute']:,}, "
                  f"last hour {status['landed_last_hour']:,}")
    reasons = ", ".join(f"{k} {v:,}" for k, v in status["failed_by_reason"].items())
    table.add_row("failed", f"{jobs['failed']:,}", reasons)
    table.add_row("total", f"{status['total']:,}", "", style="bold")
    console.print(table)
    age = status["oldest_due_age_seconds"]
    console.print(f"due now: {status['due_now']:,}"
                  + (f" (the oldest has waited {_duration(age)})" if age is not None else ""))
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
    console = _console(out)
    if not rows:
        console.print("no open stuck jobs")
        return 0
    now = datetime.now(UTC)
    table = Table(title=f"open stuck jobs ({len(rows)}), oldest first", header_style="bold")
    table.add_column("job_id", no_wrap=True)
    table.add_column("state")
    table.add_column("first seen (UTC)", no_wrap=True)
    table.add_column("open for", justify="right")
    table.add_column("times seen", justify="right")
    table.add_column("last status", justify="right")
    table.add_column("next poll", no_wrap=True)
    for row in rows:
        next_poll = row["next_poll_at"]
        table.add_row(
            str(row["job_id"]), row["state"],
            row["first_seen_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _duration(row["open_for_seconds"]), f"{row['times_seen']:,}",
            "-" if row["last_status"] is None else str(row["last_status"]),
            "-" if next_poll is None else (
                "due now" if next_poll <= now
                else f"in {_duration((next_poll - now).total_seconds())}"))
    console.print(table)
    return 0


def _console(out: TextIO) -> Console:
    """Rich output fitted to a terminal; piped into a file or grep, lines are not
    wrapped at 80 columns so that every row stays on one line."""
    return Console(file=out, highlight=False, soft_wrap=True,
                   width=None if out.isatty() else 200)


# ---------------------------------------------------------------- requeue


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


async def cmd_requeue(settings: Settings, ids: Sequence[str],
                      state: Literal["failed", "stuck"] | None, as_json: bool, out: TextIO) -> int:
    if bool(ids) == (state is not None):
        raise UserError("give job IDs or --state failed|stuck (one of the two)")
    job_ids = parse_ids(ids) if ids else None
    async with open_store(settings) as store:
        report = await store.requeue(job_ids=job_ids, state=state)
    if as_json:
        dump_json({"requeued": report.requeued, "landed_untouched": report.landed,
                   "unknown": report.unknown}, out)
        return 0
    out.write(f"requeued {report.requeued:,} job(s); they are due now\n")
    if report.landed:
        out.write(f"left alone {len(report.landed):,} landed job(s): "
                  f"{_id_list(report.landed)}\n")
    if report.unknown:
        out.write(f"not in the queue {len(report.unknown):,} job ID(s): "
                  f"{_id_list(report.unknown)}\n")
    return 0


def _id_list(ids: Sequence[UUID], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" … and {len(ids) - limit:,} more" if len(ids) > limit else "")


def stdin_binary() -> BinaryIO:
    """stdin as bytes; an empty stream when the process has none (fd 0 closed)."""
    if sys.stdin is None:
        return io.BytesIO()
    return sys.stdin.buffer


# ---------------------------------------------------------------- psql


def add_psql_parser(sub: Any) -> None:
    psql = sub.add_parser("psql", help="open psql on the harvester database",
                          description="Open psql on the configured database, or on the embedded "
                                      "one (started for the session; psql is bundled with it). "
                                      "Arguments after -- go to psql.")
    psql.add_argument("--database", default=None,
                      help="database on the embedded server (default harvester; the demo uses "
                           "harvester_demo)")
    psql.add_argument("--data-dir", dest="data_dir", metavar="PATH")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql")
    psql.set_defaults(handler=cmd_psql)



def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    extra = [a for a in args.psql_args if a != "--"]
    if settings.database_url is not None:
        if args.database:
            raise UserError("--database applies to the embedded PostgreSQL only")
        psql = shutil.which("psql")
        if psql is None:
            raise UserError("psql is not installed; connect with HARVESTER_DATABASE_URL in your client")
        env = {**os.environ, **_libpq_env(settings.database_url.get_secret_value())}
        return subprocess.call([psql, *extra], env=env)  # noqa: S603 - the user asked for psql
    embedded = EmbeddedPostgres(settings.data_dir)
    embedded.start()
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        database = args.database or "harvester"
        asyncio.run(ensure_database(embedded.uri("postgres"), database))
        return subprocess.call(  # noqa: S603 - the bundled psql, on the user's request
            [str(POSTGRES_BIN_PATH / "psql"), embedded.uri(database), *extra])
    finally:
        embedded.stop()


def _libpq_env(dsn: str) -> dict[str, str]:
    """libpq environment variables for a URL, so the password is not on a command line."""
    parts = urlsplit(dsn)
    env = {"PGHOST": parts.hostname or "", "PGPORT": str(parts.port or 5432),
           "PGUSER": parts.username or "", "PGPASSWORD": parts.password or "",
           "PGDATABASE": parts.path.lstrip("/")}
    for key, values in parse_qs(parts.query).items():
        if key == "sslmode":
            env["PGSSLMODE"] = values[-1]
        elif key == "host":
            env["PGHOST"] = values[-1]
    return {k: v for k, v in env.items() if v}
