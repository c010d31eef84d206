"""Slow clients, in a process of their own: each connects, starts a request and never
finishes it (a byte a second), and reconnects as soon as the server shuts it out.

``python -m tests.acceptance.slow_clients PORT COUNT SECONDS [BIND]`` runs them against
127.0.0.1:PORT from the local address BIND, then prints one JSON line of counts. Kept
apart from the test's own event loop so that the probes the test sends are not slowed
by the attack they measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
from dataclasses import asdict, dataclass


@dataclass
class Counts:
    connects: int = 0
    connect_failures: int = 0
    shut_out: int = 0


async def slow_client(port: int, bind: str, counts: Counts, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(bind, 0)), timeout=5.0)
        except (OSError, TimeoutError):
            counts.connect_failures += 1
            await asyncio.sleep(0.5)
            continue
        counts.connects += 1
        try:
            writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while not stop.is_set():
                try:
                    if not await asyncio.wait_for(reader.read(1024), timeout=1.0):
                        counts.shut_out += 1
                        break
                except TimeoutError:
                    writer.write(b"X")
                    await writer.drain()
        except OSError:
            counts.shut_out += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def main(port: int, count: int, seconds: float, bind: str) -> Counts:
    counts, stop = Counts(), asyncio.Event()
    clients = [asyncio.create_task(slow_client(port, bind, counts, stop)) for _ in range(count)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*clients, return_exceptions=True)
    return counts


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = int(sys.argv[2]) + 100
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    result = asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                              sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"))
    print(json.dumps(asdict(result)))
