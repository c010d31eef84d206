"""The operator's commands: migrate, enqueue, status, stuck (and stuck ack), jobs,
requeue, psql.

Each opens one database (the configured one or the embedded server; ``--database``
picks another database on the same server, as ``psql -d`` does), does one thing, and
prints either a readable table or stable JSON (``--json``). Only ``migrate`` creates
anything: a reading command pointed at a database that does not exist or was never
migrated says so and names the command that sets it up. Errors a user can cause come
back as :class:`~harvester.errors.UserError` for the CLI to print as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, Literal, TextIO
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from harvester.embedded import (
    DEFAULT_DATABASE,
    EmbeddedPostgres,
    database_url,
    require_installed,
)
from harvester.errors import StoreError, UserError
from harvester.feed import BadInput, Entry, classify_arguments, classify_lines
from harvester.metrics import FAILED_REASONS
from harvester.migrations import applied_versions, latest_version, migrate, newer_versions
from harvester.settings import Settings, default_data_dir
from harvester.store import (
    LISTABLE_STATES,
    AckReport,
    Connection,
    JobCursor,
    RequeueReport,
    Selection,
    Store,
    create_pool,
    is_failed_reason,
    json_default,
    translated,
)
from harvester.upstream_clock import NOTABLE as CLOCK_NOTABLE

ENQUEUE_BATCH: Final = 10_000
SHOWN_BAD_LINES: Final = 20
SHOWN_IDS: Final = 20  # job IDs listed by name in a report; the rest are counted
DEFAULT_LIST: Final = 100
MAX_LIST: Final = 1000


def dump_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, default=json_default, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- which database


def with_database(dsn: str, name: str) -> str:
    """``dsn`` naming database ``name`` instead (a ``dbname=`` parameter is dropped)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("dbname", "database")]
    return parts._replace(path="/" + quote(name, safe=""),
                          query=urlencode(query, quote_via=quote)).geturl()


def _dsn_database(dsn: str) -> str:
    parts = urlsplit(dsn)
    named = dict(parse_qsl(parts.query))
    return (named.get("dbname") or named.get("database") or unquote(parts.path.lstrip("/"))
            or unquote(parts.username or "") or "postgres")


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: database and host, never the password."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2] or dict(parse_qsl(parts.query)).get("host", "")
    return f'database "{_dsn_database(dsn)}"' + (f" on {host}" if host else "")


@dataclass(frozen=True)
class Target:
    """The database a command works on, and how to name it back to the user."""

    settings: Settings
    database: str | None = None

    @property
    def flags(self) -> str:
        """The options that point another command at the same database (for the
        embedded server outside its default place, its data directory too)."""
        flags = f" --database {shlex.quote(self.database)}" if self.database else ""
        if (self.settings.database_url is None
                and self.settings.data_dir != default_data_dir()):
            flags += f" --data-dir {shlex.quote(str(self.settings.data_dir))}"
        return flags

    @asynccontextmanager
    async def dsn(self, *, create: bool = False) -> AsyncIterator[tuple[str, str]]:
        """(DSN, description). Only ``create`` (migrate) may create the embedded
        server's data directory or database; otherwise a missing one is a UserError."""
        if self.database is not None and not self.database.strip():
            raise UserError("--database needs a database name")
        if self.settings.database_url is not None:
            dsn = self.settings.database_url.get_secret_value()
            if self.database:
                dsn = with_database(dsn, self.database)
            yield dsn, describe_dsn(dsn)
            return
        name = self.database or DEFAULT_DATABASE
        embedded = EmbeddedPostgres(self.settings.data_dir)
        where = f'database "{name}" on the embedded PostgreSQL in {embedded.pgdata}'
        require_installed()
        if not create and not embedded.exists:
            raise UserError(f"there is no embedded PostgreSQL in {embedded.pgdata} yet: run "
                            f"`harvester migrate{self.flags}` (or `harvester demo`), or set "
                            "HARVESTER_DATABASE_URL")
        async with database_url(self.settings, name, create=create) as dsn:
            yield dsn, where


@asynccontextmanager
async def _pool(target: Target, *, create: bool = False, max_size: int = 2
                ) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    async with target.dsn(create=create) as (dsn, where):
        try:
            pool = await create_pool(dsn, min_size=1, max_size=max_size)
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError):
                if target.settings.database_url is None:
                    raise UserError(f"{where} does not exist: `harvester migrate{target.flags}` "
                                    "creates it") from None
                raise UserError(f"HARVESTER_DATABASE_URL: {where} does not exist "
                                "(InvalidCatalogNameError): create it (CREATE DATABASE), then "
                                f"run `harvester migrate{target.flags}`") from None
            raise
        try:
            yield pool, where
        finally:
            await pool.close()


async def _table_exists(conn: Connection, name: str) -> bool:
    """From the catalog, which every role may read: a role without rights on the
    schema still learns whether it was migrated, and then why it may not read it."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'harvester' AND c.relname = $1)", name))


async def check_schema(conn: Connection, where: str, target: Target,
                       need: Literal["read", "feed"]) -> None:
    """Refuse, in one line that names the fix, a database the command cannot use.

    ``read`` needs the schema at this harvester's version. ``feed`` needs only the
    queue table: feeding is the same INSERT in every schema version, and a feeding role
    needs no right on ``harvester.schema_migrations`` (README "Feeding jobs")."""
    migrate_hint = f"run `harvester migrate{target.flags}`"
    if need == "feed":
        if not await _table_exists(conn, "jobs"):
            raise UserError(f"{where} is not migrated (no harvester schema): {migrate_hint}")
        return
    if not await _table_exists(conn, "schema_migrations"):
        raise UserError(f"{where} is not migrated (no harvester schema): {migrate_hint}")
    applied = await applied_versions(conn)
    needed = latest_version()
    if needed not in applied:
        have = max(applied, default=0)
        raise UserError(f"{where} is at schema version {have}, this harvester needs {needed}: "
                        f"{migrate_hint}")


@asynccontextmanager
async def open_store(settings: Settings, *, database: str | None = None,
                     need: Literal["read", "feed"] = "read") -> AsyncIterator[Store]:
    target = Target(settings, database)
    async with _pool(target) as (pool, where):
        async with translated(), pool.acquire() as conn:
            await check_schema(conn, where, target, need)
        yield Store(pool)


# ---------------------------------------------------------------- migrate


async def cmd_migrate(settings: Settings, out: TextIO, database: str | None = None) -> int:
    """The one command that creates: the embedded server and database if missing."""
    async with (_pool(Target(settings, database), create=True, max_size=1) as (pool, _),
                translated(), pool.acquire() as conn):
        done = await migrate(conn)
        newer = await newer_versions(conn)
    if done:
        for m in done:
            out.write(f"applied {m.version:03d}_{m.name}\n")
    out.write(f"schema at version {latest_version()}"
              f"{'' if done else ' (nothing to apply)'}\n")
    if newer:
        out.write(f"note: the database also has migration(s) {', '.join(map(str, newer))} from a "
                  "newer harvester; left as they are\n")
    return 0


# ---------------------------------------------------------------- job IDs in


@dataclass
class Intake:
    """How reading a stream of IDs went. ``shown`` holds the first bad entries only, so
    a file of ten million bad lines costs no more memory than one of twenty.
    ``stage`` says how far the one transaction got, for an honest message when the
    command is interrupted."""

    valid: int = 0
    invalid: int = 0
    shown: list[BadInput] = field(default_factory=list)
    committed: bool = False
    stage: Literal["reading", "committing", "done"] = "reading"

    @property
    def not_shown(self) -> int:
        return self.invalid - len(self.shown)


@dataclass
class EnqueueReport(Intake):
    """What an enqueue did. ``known`` counts valid IDs that created no job: already in
    the queue, or repeated within the input."""

    new: int = 0
    known: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "known": self.known, "invalid": self.invalid,
                "valid": self.valid, "committed": self.committed,
                "errors": [str(b) for b in self.shown], "errors_not_shown": self.not_shown}


@dataclass
class IdInput:
    """Where the IDs come from: the entries to read, and how to show progress."""

    entries: Iterator[Entry]
    name: str  # for messages: "arguments", "stdin" or the path
    what: str  # "argument" or "line"
    stream: BinaryIO | None = None  # for a file: its position drives the progress bar
    total_bytes: int | None = None
    close: Callable[[], None] = lambda: None


def id_input(ids: Sequence[str], file: str | None, stdin: BinaryIO, *,
             implicit_stdin: bool = True) -> IdInput | None:
    """Resolve the three ways of giving IDs (arguments, --file PATH, stdin) to one.

    ``-`` (as the only argument or as the file) means stdin. With ``implicit_stdin``
    (enqueue) a stdin that is not a terminal is read when nothing else is given;
    without it (requeue, stuck ack) stdin is read only when asked, and None means no
    IDs were given at all."""
    if list(ids) == ["-"]:
        ids, file = [], "-"
    if ids and file:
        raise UserError("give job IDs as arguments or with --file, not both")
    if ids:
        return IdInput(classify_arguments(ids), "arguments", "argument")
    if file is None:
        if not implicit_stdin:
            return None
        if stdin.isatty():
            raise UserError("give job IDs as arguments, with --file PATH, or on stdin "
                            "(harvester enqueue - < ids.txt)")
    if file in (None, "-"):
        size = _regular_file_size(stdin)  # `< ids.txt` gives a bar with an end
        return IdInput(_reading(classify_lines(stdin), "stdin"), "stdin", "line",
                       stream=stdin if size else None, total_bytes=size)
    assert file is not None
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed through IdInput.close
        size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    return IdInput(_reading(classify_lines(handle), file), file, "line", stream=handle,
                   total_bytes=size or None, close=handle.close)


def enqueue_input(ids: Sequence[str], file: str | None, stdin: BinaryIO) -> IdInput:
    source = id_input(ids, file, stdin)
    assert source is not None
    return source


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


Apply = Callable[[Connection, list[UUID]], Awaitable[None]]


async def in_one_transaction(store: Store, entries: Iterable[Entry], intake: Intake,
                             apply: Apply, *, skip_invalid: bool = False,
                             progress: IdProgress | None = None, commit: bool = True) -> None:
    """Stream IDs to ``apply`` in batches of ``ENQUEUE_BATCH`` inside one transaction.

    All or nothing by default: at the first bad entry the transaction is rolled back at
    once (releasing what it held) and the rest of the input is only read, to report
    every bad entry. With ``skip_invalid`` bad entries are counted and skipped. Either
    way the whole input is one transaction: interrupting the command changes nothing.
    Memory stays flat: one batch of IDs and the first ``SHOWN_BAD_LINES`` refusals.
    ``commit=False`` (a dry run) rolls back at the end."""
    batch: list[UUID] = []
    try:
        async with translated(), store.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            open_tx = True
            try:
                for entry in entries:
                    if entry.bad is not None:
                        intake.invalid += 1
                        if len(intake.shown) < SHOWN_BAD_LINES:
                            intake.shown.append(entry.bad)
                        if open_tx and not skip_invalid:
                            open_tx = False
                            batch.clear()
                            await tx.rollback()
                    else:
                        assert entry.job_id is not None
                        intake.valid += 1
                        if open_tx:
                            batch.append(entry.job_id)
                            if len(batch) >= ENQUEUE_BATCH:
                                await apply(conn, batch)
                                batch.clear()
                    if progress is not None and (intake.valid + intake.invalid) % 1000 == 0:
                        progress.update(intake.valid, intake.invalid)
                if open_tx:
                    if batch:
                        await apply(conn, batch)
                    if not commit:
                        open_tx = False
                        await tx.rollback()
                        return
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError  # interrupted: never start the commit
                    intake.stage = "committing"
                    open_tx = False
                    await tx.commit()
                    intake.committed = True
                    intake.stage = "done"
            except BaseException:
                if open_tx:
                    await _rollback_quietly(tx)
                raise
    finally:
        if progress is not None:
            progress.stop()


async def enqueue_entries(store: Store, entries: Iterable[Entry], *, skip_invalid: bool,
                          progress: IdProgress | None = None,
                          report: EnqueueReport | None = None) -> EnqueueReport:
    """Stream IDs into the queue (see :func:`in_one_transaction`)."""
    report = report if report is not None else EnqueueReport()

    async def insert(conn: Connection, batch: list[UUID]) -> None:
        report.new += await store.enqueue(batch, conn)

    await in_one_transaction(store, entries, report, insert, skip_invalid=skip_invalid,
                             progress=progress)
    if report.committed:
        report.known = report.valid - report.new
    else:
        report.new = 0
    return report


async def _rollback_quietly(tx: Any) -> None:
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await tx.rollback()


class IdProgress:
    """A progress bar on the terminal: bytes read of a file, or a running count for a
    pipe whose size nobody knows."""

    def __init__(self, to: TextIO, stream: BinaryIO | None, total_bytes: int | None,
                 label: str = "enqueue") -> None:
        self._stream = stream
        self._progress = Progress(
            TextColumn(label), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[ids]} IDs, {task.fields[bad]} invalid"),
            TimeElapsedColumn(),
            console=Console(file=to), transient=True)
        self._task = self._progress.add_task(label, total=total_bytes, ids="0", bad="0")
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


def _progress_for(source: IdInput, err: TextIO, label: str) -> IdProgress | None:
    if err.isatty() and source.what == "line":
        return IdProgress(err, source.stream, source.total_bytes, label)
    return None


@contextlib.contextmanager
def interrupt_at_once() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt wherever the command is, also in a read of stdin
    that waits for a pipe or a terminal. (asyncio.run's own handler only cancels the
    task, which a blocking read never notices: the first Ctrl-C would seem ignored.)
    Nothing to do off the main thread, where no signal arrives."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted_message(intake: Intake, nothing: str, maybe: str, done: str) -> str:
    """One honest line for an interrupted command: what the one transaction did."""
    if intake.stage == "reading":
        return f"harvester: interrupted; {nothing}\n"
    if intake.stage == "committing":
        return f"harvester: interrupted while committing; {maybe}\n"
    return f"harvester: interrupted after the commit; {done}\n"


# ---------------------------------------------------------------- enqueue


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
            progress = _progress_for(source, err, "enqueue")
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


# ---------------------------------------------------------------- status


_UPSTREAM_NAMES: Final = {"not_asked": "not asked yet",
                          "unknown": "unknown to batch-status"}


async def cmd_status(settings: Settings, as_json: bool, out: TextIO,
                     database: str | None = None) -> int:
    async with open_store(settings, database=database) as store:
        status = await store.status()
    # This command's configuration: the daemons' if they share it (a ConfigMap).
    status["retention"] = {"finished_seconds": settings.finished_retention or None,
                           "results_seconds": settings.result_retention or None}
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
                  f"leased now {status['leased']:,} (claimed by a daemon, outcome not yet "
                  "written)")
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
    workers = status["workers"]
    if not workers:
        console.print("daemons alive: none (no heartbeat in the last 2 minutes)")
        return 0
    console.print(f"daemons alive: {len(workers)}")
    for w in workers:
        skew = w["upstream_clock_skew"]
        if skew is not None and abs(skew) >= CLOCK_NOTABLE:
            console.print(f"upstream's clock: {abs(skew):.1f}s {'ahead of' if skew > 0 else 'behind'}"
                          f" {w['worker_id']}'s (Retry-After dates are read against upstream's "
                          "Date header, so waits stay as asked; check both hosts' time sources)")
    now = datetime.now(UTC)
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
            f"for {_duration((paused - now).total_seconds())}" if paused and paused > now
            else "-",
            w["auth_circuit"], w["permission_circuit"], w["upstream_alarm"] or "-",
            "-" if skew is None else f"{skew:+.1f}s",
            f"{_duration(w['heartbeat_age'])} ago")
    console.print(daemons)
    return 0


def _print_retention(console: Console, status: dict[str, Any]) -> None:
    """Table sizes, the oldest finished queue row and the retention that should bound it
    (README "Retention")."""
    tables = status["tables"]
    sizes = "; ".join(f"{label} ~{tables[name]['rows_estimate']:,} rows, "
                      f"{_bytes(tables[name]['bytes'])}"
                      for name, label in (("jobs", "queue"), ("extraction_results", "mirror")))
    console.print(f"tables: {sizes} (rows: PostgreSQL's estimate)")
    retention = status["retention"]
    finished = retention["finished_seconds"]
    results = retention["results_seconds"]
    kept = ("retention " + (_duration(finished) if finished else "off: finished jobs are kept")
            + "; mirror " + (f"kept {_duration(results)}" if results else "kept for ever"))
    age = status["oldest_finished_age_seconds"]
    console.print("oldest finished job in the queue: "
                  + (f"{_duration(age)} ago" if age is not None else "none") + f" ({kept})")
    if not status["autovacuum"]:
        console.print("autovacuum: OFF on this server: the space of deleted rows is reused "
                      "only after a VACUUM (README \"Retention\")")


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def parse_duration(text: str, flag: str) -> float:
    """``90``, ``90s``, ``15m``, ``6h``, ``7d`` (also ``1.5h``) as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise UserError(f"{flag}: expected a duration such as 90s, 15m, 6h or 7d "
                        f"(got {text[:40]!r})")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def check_limit(limit: int, flag: str = "--limit") -> int | None:
    """A list bound: 1 to MAX_LIST; 0 means no bound (the CLI only)."""
    if limit < 0:
        raise UserError(f"{flag}: must be 0 (no limit) or more (got {limit})")
    return None if limit == 0 else limit


def check_reasons(reasons: Sequence[str]) -> tuple[str, ...]:
    for reason in reasons:
        if not is_failed_reason(reason):
            raise UserError(f"--reason: {reason[:40]!r} is not a failure reason (one of "
                            f"{', '.join(FAILED_REASONS)}, or http_<status> such as http_410)")
    return tuple(dict.fromkeys(reasons))


# ---------------------------------------------------------------- stuck


async def cmd_stuck(settings: Settings, as_json: bool, out: TextIO, *,
                    database: str | None = None,
                    which: Literal["open", "resolved", "all"] = "open",
                    limit: int = DEFAULT_LIST, err: TextIO | None = None) -> int:
    bound = check_limit(limit)
    async with open_store(settings, database=database) as store:
        rows, total = await store.stuck_records(which, bound)
    what = {"open": "open stuck jobs", "resolved": "closed stuck records",
            "all": "stuck records"}[which]
    cut = (f"showing {len(rows):,} of {total:,} {what}; --limit N shows more "
           "(--limit 0: all)") if total > len(rows) else None
    if as_json:
        dump_json(rows, out)
        if cut and err is not None:
            err.write(f"harvester: {cut}\n")
        return 0
    console = _console(out)
    if not rows:
        console.print(f"no {what}")
        return 0
    now = datetime.now(UTC)
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
            _duration(row["open_for_seconds"]), f"{row['times_seen']:,}",
            "-" if row["last_status"] is None else str(row["last_status"]),
            "-" if next_poll is None else (
                "due now" if next_poll <= now
                else f"in {_duration((next_poll - now).total_seconds())}")]
        if which != "open":
            closed = "-"
            if row["resolved_at"] is not None:
                closed = (f"{row['resolution'] or 'closed'}"
                          + (f" by {row['resolved_by']}" if row["resolved_by"] else "")
                          + f", {row['resolved_at'].astimezone(UTC):%Y-%m-%d %H:%M}")
            cells += [closed, row["resolution_note"] or ""]
        table.add_row(*cells)
    console.print(table)
    if cut:
        console.print(cut)
    return 0


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
    report = AckReport()  # the first SHOWN_IDS of each kind, by name
    counts = {"acknowledged": 0, "closed_already": 0, "never_stuck": 0, "unknown": 0}
    try:
        async with open_store(settings, database=database) as store:

            async def ack(conn: Connection, batch: list[UUID]) -> None:
                done = await store.acknowledge_stuck(batch, who, note, conn)
                for kind in counts:
                    found: list[Any] = getattr(done, kind)
                    kept: list[Any] = getattr(report, kind)
                    counts[kind] += len(found)
                    kept += found[:SHOWN_IDS - len(kept)]

            await in_one_transaction(store, source.entries, intake, ack,
                                     progress=_progress_for(source, err, "acknowledge"))
    finally:
        source.close()
    if _refused(intake, source, err, "nothing acknowledged"):
        return 2
    if as_json:
        dump_json({"acknowledged": counts["acknowledged"],
                   "acknowledged_ids": report.acknowledged,
                   "closed_already": [{"job_id": j, "resolution": r, "resolved_by": b}
                                      for j, r, b in report.closed_already],
                   "closed_already_count": counts["closed_already"],
                   "never_stuck": report.never_stuck,
                   "never_stuck_count": counts["never_stuck"],
                   "unknown": report.unknown, "unknown_count": counts["unknown"],
                   "resolved_by": who, "note": note}, out)
        return 0
    out.write(f"acknowledged {counts['acknowledged']:,} stuck record(s) as {who}\n")
    if report.closed_already:
        shown = ", ".join(f"{j} ({r}{f' by {b}' if b else ''})"
                          for j, r, b in report.closed_already[:5])
        more = counts["closed_already"] - min(5, len(report.closed_already))
        out.write(f"closed already {counts['closed_already']:,}: {shown}"
                  + (f" … and {more:,} more" if more else "") + "\n")
    if report.never_stuck:
        out.write(f"never stuck {counts['never_stuck']:,} job(s): "
                  f"{_id_list(report.never_stuck, total=counts['never_stuck'])}\n")
    if report.unknown:
        out.write(f"not in the queue {counts['unknown']:,} job ID(s): "
                  f"{_id_list(report.unknown, total=counts['unknown'])}\n")
    return 0


def _refused(intake: Intake, source: IdInput, err: TextIO, nothing: str) -> bool:
    """Report bad entries; True when the command must stop with exit status 2."""
    for bad in intake.shown:
        err.write(f"{bad}\n")
    if intake.not_shown:
        err.write(f"… and {intake.not_shown:,} more invalid {source.what}(s)\n")
    if intake.invalid:
        err.write(f"harvester: {intake.invalid:,} invalid {source.what}(s); {nothing}\n")
        return True
    if intake.valid == 0:
        err.write(f"harvester: no job IDs in {source.name}; {nothing}\n")
        return True
    return False


# ---------------------------------------------------------------- jobs


async def cmd_jobs(settings: Settings, state: str | None, reasons: Sequence[str], limit: int,
                   after: str | None, as_json: bool, out: TextIO,
                   database: str | None = None) -> int:
    """One page of jobs in a state (README "Commands"); the next page's command at the
    end."""
    reasons = check_reasons(reasons)
    if reasons and state not in (None, "failed"):
        raise UserError("--reason applies to failed jobs only")
    state = state or ("failed" if reasons else None)
    if state not in LISTABLE_STATES:
        raise UserError(f"--state: one of {', '.join(LISTABLE_STATES)}")
    if not 1 <= limit <= MAX_LIST:
        raise UserError(f"--limit: 1 to {MAX_LIST} jobs per page (got {limit})")
    cursor = None
    if after is not None:
        try:
            cursor = JobCursor.parse(after)
        except ValueError as exc:
            raise UserError(f"--after: {exc}") from None
    async with open_store(settings, database=database) as store:
        rows, following = await store.list_jobs(state, reasons=reasons, limit=limit,
                                                after=cursor)
    if as_json:
        dump_json({"jobs": rows, "next": None if following is None else str(following)}, out)
        return 0
    console = _console(out)
    title = f"{state} jobs" + (f" ({', '.join(reasons)})" if reasons else "")
    if not rows:
        console.print(f"no {title}" + (" after this cursor" if cursor else ""))
        return 0
    time_column, time_key = {"pending": ("next poll", "next_poll_at"),
                             "stuck": ("next poll", "next_poll_at"),
                             "landed": ("landed (UTC)", "landed_at"),
                             "failed": ("failed (UTC)", "updated_at")}[state]
    table = Table(title=title, header_style="bold")
    for column in ("job_id", time_column, "polls", "last status", "upstream status",
                   "reason" if state == "failed" else "next step", "last error"):
        table.add_column(column, no_wrap=column in ("job_id", time_column),
                         justify="right" if column in ("polls", "last status") else "left")
    now = datetime.now(UTC)
    for row in rows:
        at: datetime = row[time_key]
        when = (("due now" if at <= now else f"in {_duration((at - now).total_seconds())}")
                if time_key == "next_poll_at" else f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}")
        error = row["last_error"] or ""
        table.add_row(str(row["job_id"]), when, f"{row['polls']:,}",
                      "-" if row["last_status"] is None else str(row["last_status"]),
                      row["upstream_status"] or "not asked yet",
                      (row["failed_reason"] if state == "failed" else row["next_step"]) or "-",
                      error[:60] + ("…" if len(error) > 60 else ""))
    console.print(table)
    if following is not None:
        flags = [f"--state {state}", *(f"--reason {r}" for r in reasons)]
        if limit != DEFAULT_LIST:
            flags.append(f"--limit {limit}")
        console.print(f"more: harvester jobs {' '.join(flags)}{Target(settings, database).flags}"
                      f" --after {following}")
    return 0


# ---------------------------------------------------------------- requeue


def _console(out: TextIO) -> Console:
    """Rich output fitted to a terminal; piped into a file or grep, lines are not
    wrapped at 80 columns so that every row stays on one line."""
    return Console(file=out, highlight=False, soft_wrap=True,
                   width=None if out.isatty() else 200)


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
        reasons = check_reasons(self.reasons)
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
    report = RequeueReport(dry_run=dry_run)
    landed_count = unknown_count = 0
    if selection is not None:
        async with open_store(settings, database=database) as store:
            report = await store.requeue(selection=selection, dry_run=dry_run)
    else:
        if aim.file is None and list(aim.ids) != ["-"]:
            parse_ids(aim.ids)  # bad arguments: one line, before touching the database
        source = id_input(aim.ids, aim.file, stdin or stdin_binary(), implicit_stdin=False)
        assert source is not None
        intake = Intake()
        try:
            async with open_store(settings, database=database) as store:

                async def requeue(conn: Connection, batch: list[UUID]) -> None:
                    nonlocal landed_count, unknown_count
                    done = await store.requeue(job_ids=batch, dry_run=dry_run, conn=conn)
                    report.requeued += done.requeued
                    landed_count += len(done.landed)
                    unknown_count += len(done.unknown)
                    report.landed += done.landed[:SHOWN_IDS - len(report.landed)]
                    report.unknown += done.unknown[:SHOWN_IDS - len(report.unknown)]

                await in_one_transaction(store, source.entries, intake, requeue,
                                         progress=_progress_for(source, err, "requeue"),
                                         commit=not dry_run)
        finally:
            source.close()
        if _refused(intake, source, err, "nothing requeued"):
            return 2
    if as_json:
        dump_json({"requeued": report.requeued, "dry_run": dry_run,
                   "landed_polled_again": report.landed,
                   "landed_polled_again_count": landed_count,
                   "unknown": report.unknown, "unknown_count": unknown_count}, out)
        return 0
    if dry_run:
        out.write(f"would requeue {report.requeued:,} job(s) (dry run: nothing changed)\n")
    else:
        out.write(f"requeued {report.requeued:,} job(s); they are due now\n")
    if landed_count:
        out.write(f"of which landed before, {'to be ' if dry_run else ''}polled again "
                  f"{landed_count:,}: {_id_list(report.landed, total=landed_count)}\n")
    if unknown_count:
        out.write(f"not in the queue {unknown_count:,} job ID(s): "
                  f"{_id_list(report.unknown, total=unknown_count)}\n")
    return 0


def _id_list(ids: Sequence[UUID], limit: int = 5, total: int | None = None) -> str:
    total = len(ids) if total is None else total
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" … and {total - limit:,} more" if total > limit else "")


def stdin_binary() -> BinaryIO:
    """stdin as bytes; an empty stream when the process has none (fd 0 closed)."""
    if sys.stdin is None:
        return io.BytesIO()
    return sys.stdin.buffer


# ---------------------------------------------------------------- psql


def add_psql_parser(sub: Any) -> None:
    psql = sub.add_parser("psql", help="open psql on the harvester database",
                          description="Open psql on the configured database (HARVESTER_DATABASE_URL, "
                                      "with its TLS and other parameters), or on the embedded "
                                      "one (started for the session; psql is bundled with it). "
                                      "Arguments after -- go to psql.")
    psql.add_argument("--database", default=None,
                      help="another database on the same server (the demo uses "
                           "harvester_demo); it must exist")
    psql.add_argument("--data-dir", dest="data_dir", metavar="PATH")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql")
    psql.set_defaults(handler=cmd_psql)


def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    extra = [a for a in args.psql_args if a != "--"]
    if settings.database_url is not None:
        psql = shutil.which("psql")
        if psql is None:
            raise UserError("psql is not installed; connect with HARVESTER_DATABASE_URL in your client")
        dsn = settings.database_url.get_secret_value()
        if args.database:
            dsn = with_database(dsn, args.database)
        conninfo, env = libpq_connection(dsn)
        return subprocess.call([psql, "--dbname", conninfo, *extra],  # noqa: S603 - asked for
                               env={**os.environ, **env})
    embedded = EmbeddedPostgres(settings.data_dir)
    database = args.database or DEFAULT_DATABASE
    target = Target(settings, args.database)
    require_installed()
    if not embedded.exists:
        raise UserError(f"there is no embedded PostgreSQL in {embedded.pgdata} yet: run "
                        f"`harvester migrate{target.flags}` (or `harvester demo`)")
    embedded.start()
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        existing = asyncio.run(_databases(embedded.uri("postgres")))
        if database not in existing:
            raise UserError(f'no database "{database}" on the embedded PostgreSQL in '
                            f"{embedded.pgdata} (it has: {', '.join(existing) or 'none'}); "
                            f"`harvester migrate{target.flags}` creates it")
        return subprocess.call(  # noqa: S603 - the bundled psql, on the user's request
            [str(POSTGRES_BIN_PATH / "psql"), embedded.uri(database), *extra])
    finally:
        embedded.stop()


async def _databases(admin_uri: str) -> list[str]:
    conn = await asyncpg.connect(admin_uri)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE NOT datistemplate "
                                "AND datname <> 'postgres' ORDER BY datname")
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


# Connection parameters libpq understands in a URI (PostgreSQL 16's list). Anything
# else in an asyncpg DSN is a server setting (asyncpg sends unknown query parameters as
# such), which psql gets through PGOPTIONS instead.
LIBPQ_PARAMETERS: Final = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "passfile", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
    "target_session_attrs", "load_balance_hosts"})


def libpq_connection(dsn: str) -> tuple[str, dict[str, str]]:
    """A connection URI for psql's command line and the environment to go with it.

    libpq parses the URI itself, exactly as it would any client's: percent-encoded user
    names, several hosts, ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey`` and every
    other parameter keep their meaning. Only the password leaves the URI, decoded, for
    ``PGPASSWORD``, so that it never shows on a process list; asyncpg's spellings
    (``database=``, server settings such as ``search_path=``) are translated."""
    parts = urlsplit(dsn)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    env: dict[str, str] = {}
    if password:
        env["PGPASSWORD"] = unquote(password)
    kept: list[tuple[str, str]] = []
    options: list[str] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            env["PGPASSWORD"] = value
        elif key == "database":
            kept.append(("dbname", value))
        elif key in LIBPQ_PARAMETERS:
            kept.append((key, value))
        else:
            escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
            options.append(f"-c {key}={escaped}")
    if options:
        env["PGOPTIONS"] = " ".join(filter(None, [os.environ.get("PGOPTIONS", ""), *options]))
    netloc = f"{user}{at}{hostport}" if user else hostport
    uri = parts._replace(scheme="postgresql", netloc=netloc,
                         query=urlencode(kept, quote_via=quote)).geturl()
    return uri, env
