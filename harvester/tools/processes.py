"""Small process and measurement helpers shared by the demo, the bench and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time

import aiohttp


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for a child process to bind)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, proc: asyncio.subprocess.Process, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Poll a readiness URL until it answers 200; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"the daemon exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the daemon did not become ready within {timeout:g} s")


def percentile(values: list[float], pct: int) -> float | None:
    """The ``pct``-th percentile (inclusive method), or None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
