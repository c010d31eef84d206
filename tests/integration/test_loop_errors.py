"""A process out of file descriptors keeps its log proportionate (README "Security").

asyncio reports each failed ``accept()`` of a listening socket through the loop's
exception handler, and Python 3.11 goes through its whole backlog after each failure.
A real server in a child process limited to 64 descriptors is sent 150 connections:
with harvester's handler the log holds the first report and nothing more; with
asyncio's default (the control) it holds over a thousand tracebacks in three seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

SERVER = """
import asyncio, contextlib, resource, sys
from harvester.logs import QuietLoopErrors, configure_logging

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
configure_logging("info", "json")

async def hold(reader, writer):
    with contextlib.suppress(asyncio.CancelledError):
        await reader.read()
    writer.close()

async def main():
    if sys.argv[1] == "quiet":
        QuietLoopErrors().install(asyncio.get_running_loop())
    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3.0)
    server.close()

asyncio.run(main())
"""


async def flood(mode: str) -> bytes:
    """The child's stderr after 150 connections to a server allowed 64 descriptors."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, mode, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    writers: list[asyncio.StreamWriter] = []
    try:
        port = int(await asyncio.wait_for(child.stdout.readline(), timeout=20))
        for _ in range(150):
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=1.0)
                writers.append(writer)
        _, stderr = await asyncio.wait_for(child.communicate(), timeout=30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        for writer in writers:
            writer.close()
    return stderr


@pytest.mark.parametrize("mode", ["quiet", "default"])
async def test_failed_accepts_out_of_descriptors_are_one_report_not_a_flood(mode: str) -> None:
    stderr = await flood(mode)
    reports = stderr.count(b"socket.accept() out of system resource")
    print(f"{mode}: {reports} reports, {len(stderr)} bytes")
    if mode == "quiet":
        assert reports == 1, stderr[-2000:]
        assert len(stderr) < 4096
        assert b"Too many open files" in stderr  # the one report says why, in full
    else:
        assert reports > 100  # the control: what the daemon logged before
