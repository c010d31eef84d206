"""Job IDs in: from arguments, a file or stdin, streamed into one transaction.

``enqueue``, ``requeue`` and ``stuck ack`` take any number of IDs (README "Feeding
jobs"): read in batches of ``ENQUEUE_BATCH`` inside one transaction, all or nothing on
bad input, memory flat whatever the size, a progress bar on a terminal, and an honest
line when interrupted. What the batches did is counted in one :class:`Tally`, however
many batches it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final, Literal, TextIO
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from harvester.errors import UserError
from harvester.feed import BadInput, Entry, classify_arguments, classify_lines
from harvester.store import Connection, translated
from harvester.store.operators import OperatorStore

ENQUEUE_BATCH: Final = 10_000
SHOWN_BAD_LINES: Final = 20
SHOWN_IDS: Final = 20  # job IDs listed by name in a report; the rest are counted


@dataclass
class Tally:
    """What a batch command did, kind by kind, over all its batches: how many of each
    (``count``), and the first ``SHOWN_IDS`` of each by name (``first``), so that a
    report names some and counts the rest whatever the input's size."""

    counts: dict[str, int] = field(default_factory=dict)
    named: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, kind: str, found: int | Sequence[Any]) -> None:
        """Count ``found`` (a number, or the items, the first few of which are kept)."""
        if isinstance(found, int):
            self.counts[kind] = self.count(kind) + found
            return
        self.counts[kind] = self.count(kind) + len(found)
        kept = self.named.setdefault(kind, [])
        kept += found[:SHOWN_IDS - len(kept)]

    def count(self, kind: str) -> int:
        return self.counts.get(kind, 0)

    def first(self, kind: str) -> list[Any]:
        return self.named.get(kind, [])


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
    done: Tally = field(default_factory=Tally)
    """What the batches did (kinds named by the command)."""

    @property
    def not_shown(self) -> int:
        return self.invalid - len(self.shown)


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



async def in_one_transaction(store: OperatorStore, entries: Iterable[Entry], intake: Intake,
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


def progress_for(source: IdInput, err: TextIO, label: str) -> IdProgress | None:
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


def refused(intake: Intake, source: IdInput, err: TextIO, nothing: str) -> bool:
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


def stdin_binary() -> BinaryIO:
    """stdin as bytes; an empty stream when the process has none (fd 0 closed)."""
    if sys.stdin is None:
        return io.BytesIO()
    return sys.stdin.buffer
