"""`harvester enqueue`: arguments, files and stdin into the queue, against a real database.

Most tests call ``harvester.cli.main`` in-process (in a worker thread, since it runs its
own event loop) with HARVESTER_DATABASE_URL pointing at the test's database; the
million-line test runs ``python -m harvester`` as a subprocess to measure its memory.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from harvester.commands.enqueue import cmd_enqueue
from harvester.commands.ids import SHOWN_BAD_LINES
from harvester.errors import UserError
from harvester.settings import load_settings

pytestmark = pytest.mark.usefixtures("restore_logging")


async def job_ids(pool: asyncpg.Pool) -> set[str]:
    return {str(r["job_id"]) for r in await pool.fetch("SELECT job_id FROM harvester.jobs")}


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


NOT_A_UUID = "not a UUID (expected 8-4-4-4-12 hexadecimal digits)"


async def test_valid_ids_are_enqueued_normalised_pending_and_due_now(cli: Any, pool: asyncpg.Pool
                                                                      ) -> None:
    upper = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    compact = "3f2504e04f8911d39a0c0305e82c3302"
    result = await cli("enqueue", upper, compact)
    assert result.status == 0, result.err
    assert result.out == "new: 2, already known: 0, invalid: 0\n"
    assert result.err == ""
    rows = await pool.fetch(
        "SELECT job_id, state, polls, next_poll_at <= now() AS due FROM harvester.jobs "
        "ORDER BY job_id")
    assert [(str(r["job_id"]), r["state"], r["polls"], r["due"]) for r in rows] == [
        ("3f2504e0-4f89-11d3-9a0c-0305e82c3301", "pending", 0, True),
        ("3f2504e0-4f89-11d3-9a0c-0305e82c3302", "pending", 0, True),
    ]


async def test_duplicates_within_the_input_and_already_known_ids_are_counted_as_known(
    cli: Any, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    known, fresh = ids(3), ids(4)
    assert (await cli("enqueue", *known)).status == 0
    path = tmp_path / "ids.txt"
    # Each fresh ID twice (once upper-cased), each known ID once.
    path.write_text("\n".join([*fresh, *[f.upper() for f in fresh], *known]) + "\n")
    result = await cli("enqueue", "--file", str(path), "--json")
    assert result.status == 0, result.err
    assert json.loads(result.out) == {
        "new": 4, "known": 7, "invalid": 0, "valid": 11, "committed": True,
        "errors": [], "errors_not_shown": 0}
    assert await job_ids(pool) == {*known, *fresh}
    again = await cli("enqueue", "--file", str(path))
    assert again.out == "new: 0, already known: 11, invalid: 0\n"


async def test_all_or_nothing_reports_each_kind_of_bad_line_and_enqueues_nothing(
    cli: Any, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    good = ids(3)
    path = tmp_path / "ids.txt"
    path.write_bytes(
        f"# feed of 2024-05-01\n{good[0]}\n".encode()
        + b"not-a-uuid\n"
        + f"{good[1][:-1]}\n".encode()                    # one digit short
        + b"3f2504e0-4f89-11d3-\x009a0c-0305e82c3301\n"   # a NUL byte
        + b"\xc3\x28\xa0\xa1 binary\n"                    # not UTF-8
        + b"00000000-0000-0000-0000-000000000000\n"      # the nil UUID
        + b"g" * 10_240 + b"\n"                           # a 10 KB garbage line
        + f"\n{good[2]}\r\n".encode())
    result = await cli("enqueue", "--file", str(path))
    assert result.status == 2
    assert result.err_lines == [
        f'line 3: {NOT_A_UUID}: "not-a-uuid"',
        f'line 4: {NOT_A_UUID}: "{good[1][:-1]}"',
        'line 5: contains a NUL byte: "3f2504e0-4f89-11d3-\\x009a0c-0305e82c3301"',
        'line 6: not valid UTF-8: "\\xc3(\\xa0\\xa1 binary"',
        'line 7: the nil UUID is not a job ID: "00000000-0000-0000-0000-000000000000"',
        'line 8: too long for a UUID: "' + "g" * 60 + '…" (10,240 bytes)',
    ]
    assert result.out == ("new: 0, already known: 0, invalid: 6 — nothing enqueued "
                          "(use --skip-invalid to enqueue the 2 valid ID(s))\n")
    assert await job_ids(pool) == set()

    skipped = await cli("enqueue", "--file", str(path), "--skip-invalid")
    assert skipped.status == 0
    assert skipped.err_lines == result.err_lines  # still reported
    assert skipped.out == "new: 2, already known: 0, invalid: 6 (skipped)\n"
    assert await job_ids(pool) == {good[0], good[2]}


async def test_a_bad_line_after_many_batches_still_enqueues_nothing(
    cli: Any, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids(25_000)) + "\noops\n" + "\n".join(ids(10)) + "\n")
    result = await cli("enqueue", "-f", str(path), "--json")
    assert result.status == 2
    report = json.loads(result.out)
    assert report["committed"] is False
    assert (report["new"], report["valid"], report["invalid"]) == (0, 25_010, 1)
    assert report["errors"] == [f'line 25001: {NOT_A_UUID}: "oops"']
    assert await pool.fetchval("SELECT count(*) FROM harvester.jobs") == 0


async def test_skip_invalid_with_no_valid_line_exits_2(cli: Any, pool: asyncpg.Pool) -> None:
    result = await cli("enqueue", "--skip-invalid", "-", stdin=b"nope\nnot-either\n")
    assert result.status == 2
    assert result.out == "new: 0, already known: 0, invalid: 2 (skipped)\n"
    assert len(result.err_lines) == 2
    assert await job_ids(pool) == set()


async def test_only_the_first_20_bad_lines_are_listed_then_a_count(cli: Any, tmp_path: Path
                                                                   ) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"bad-{n}\n" for n in range(1, 1001)))
    result = await cli("enqueue", "--file", str(path))
    assert result.status == 2
    assert len(result.err_lines) == SHOWN_BAD_LINES + 1 == 21
    assert result.err_lines[0] == f'line 1: {NOT_A_UUID}: "bad-1"'
    assert result.err_lines[19] == f'line 20: {NOT_A_UUID}: "bad-20"'
    assert result.err_lines[20] == "… and 980 more invalid line(s)"


async def test_bad_arguments_are_named_as_arguments(cli: Any, pool: asyncpg.Pool) -> None:
    good = ids(1)[0]
    result = await cli("enqueue", good, "x" * 10_000, "", "g00d")
    assert result.status == 2
    assert result.err_lines == [
        'argument 2: too long for a UUID: "' + "x" * 60 + '…" (10,000 characters)',
        'argument 3: empty: ""',
        f'argument 4: {NOT_A_UUID}: "g00d"',
    ]
    assert result.out == ("new: 0, already known: 0, invalid: 3 — nothing enqueued "
                          "(use --skip-invalid to enqueue the 1 valid ID(s))\n")
    assert await job_ids(pool) == set()


async def test_crlf_and_a_byte_order_mark_are_tolerated(cli: Any, pool: asyncpg.Pool,
                                                        tmp_path: Path) -> None:
    good = ids(3)
    path = tmp_path / "from-windows.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([good[0], "# comment", "", *good[1:]]).encode()
                     + b"\r\n")
    result = await cli("enqueue", "--file", str(path))
    assert result.status == 0, result.err
    assert result.out == "new: 3, already known: 0, invalid: 0\n"
    assert await job_ids(pool) == set(good)


async def test_binary_garbage_is_refused_in_a_few_printable_lines(cli: Any, pool: asyncpg.Pool,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(bytes(range(256)) * 2000 + os.urandom(100_000))
    result = await cli("enqueue", "--file", str(path))
    assert result.status == 2
    assert 1 < len(result.err_lines) <= SHOWN_BAD_LINES + 1
    for line in result.err_lines:
        assert line.isprintable()
        assert len(line) < 200
    assert await job_ids(pool) == set()


async def test_stdin_three_ways(cli: Any, pool: asyncpg.Pool) -> None:
    batches = [ids(2), ids(2), ids(2)]
    for args, batch in zip([("-",), ("--file", "-"), ()], batches, strict=True):
        result = await cli("enqueue", *args, stdin=("\n".join(batch) + "\n").encode())
        assert result.status == 0, result.err
        assert result.out == "new: 2, already known: 0, invalid: 0\n"
    assert await job_ids(pool) == {i for batch in batches for i in batch}


async def test_empty_input_is_not_an_error_but_is_mentioned(cli: Any) -> None:
    result = await cli("enqueue", "-", stdin=b"# nothing today\n\n")
    assert result.status == 0
    assert result.out == "new: 0, already known: 0, invalid: 0\n"
    assert result.err == "no job IDs in stdin\n"


async def test_a_missing_file_is_one_line_exit_2(cli: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    result = await cli("enqueue", "--file", str(missing))
    assert result.status == 2
    assert result.err == f"harvester: cannot read {missing}: No such file or directory\n"
    directory = await cli("enqueue", "--file", str(tmp_path))
    assert directory.status == 2
    assert directory.err == f"harvester: cannot read {tmp_path}: Is a directory\n"


async def test_arguments_and_a_file_together_are_refused(cli: Any, tmp_path: Path) -> None:
    result = await cli("enqueue", ids(1)[0], "--file", str(tmp_path / "x"))
    assert result.status == 2
    assert result.err == "harvester: give job IDs as arguments or with --file, not both\n"


async def test_no_input_on_a_terminal_says_how_to_give_ids(db_url: str) -> None:
    master, slave = os.openpty()  # a real terminal on stdin, nothing piped
    try:
        with open(slave, "rb", buffering=0) as terminal:
            settings = load_settings({"database_url": db_url}, env_file=None)
            with pytest.raises(UserError, match=r"^give job IDs as arguments, with --file PATH, "
                                                r"or on stdin"):
                await cmd_enqueue(settings, [], None, False, False, io.StringIO(), io.StringIO(),
                                  terminal)
    finally:
        os.close(master)


async def test_a_read_error_on_the_input_is_not_blamed_on_the_database(db_url: str,
                                                                      pool: asyncpg.Pool
                                                                      ) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    # The write end of a pipe cannot be read: a real EBADF from the kernel.
    with open(write_end, "rb", buffering=0) as unreadable:
        settings = load_settings({"database_url": db_url}, env_file=None)
        with pytest.raises(UserError, match=r"^cannot read stdin: Bad file descriptor$"):
            await cmd_enqueue(settings, [], "-", False, False, io.StringIO(), io.StringIO(),
                              unreadable)
    assert await job_ids(pool) == set()


class TerminalBuffer(io.StringIO):
    """What rich sees as a terminal; the bytes land here for the test to read."""

    def isatty(self) -> bool:
        return True


async def test_a_progress_bar_is_drawn_only_on_a_terminal(db_url: str, pool: asyncpg.Pool,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids(30_000)) + "\n")
    settings = load_settings({"database_url": db_url}, env_file=None)

    out, terminal = io.StringIO(), TerminalBuffer()
    with path.open("rb") as stdin:
        status = await cmd_enqueue(settings, [], str(path), False, False, out, terminal, stdin)
    assert status == 0
    assert out.getvalue() == "new: 30,000, already known: 0, invalid: 0\n"
    assert "enqueue" in terminal.getvalue()
    assert "IDs" in terminal.getvalue()

    out, not_terminal = io.StringIO(), io.StringIO()
    with path.open("rb") as stdin:
        status = await cmd_enqueue(settings, [], str(path), False, False, out, not_terminal,
                                   stdin)
    assert status == 0
    assert out.getvalue() == "new: 0, already known: 30,000, invalid: 0\n"
    assert not_terminal.getvalue() == ""
    assert await pool.fetchval("SELECT count(*) FROM harvester.jobs") == 30_000


def test_a_million_line_file_streams_into_the_queue(db_url: str, tmp_path: Path) -> None:
    """Row count asserted; peak RSS measured and printed (``pytest -s``), not asserted."""
    path = tmp_path / "million.txt"
    with path.open("w") as handle:
        for _ in range(100):
            handle.write("".join(f"{uuid.UUID(bytes=os.urandom(16), version=4)}\n"
                                 for _ in range(10_000)))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "HARVESTER_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "harvester", "enqueue", "--file", str(path), "--json"]
    timed = Path("/usr/bin/time").exists()
    proc = subprocess.run((["/usr/bin/time", "-v"] if timed else []) + command, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["new"], report["known"], report["invalid"]) == (1_000_000, 0, 0)

    async def count() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM harvester.jobs WHERE state = 'pending'"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == 1_000_000
    if timed:
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        assert peak is not None
        print(f"\npeak RSS of `harvester enqueue --file` with 1,000,000 IDs: "
              f"{int(peak.group(1)) / 1024:.1f} MiB")
