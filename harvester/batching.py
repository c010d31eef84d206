"""Waiting on the daemon's own queues and events: batches gathered for one database or
upstream round trip, and waits that end on an event or after a while.

Both wait with ``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11,
``wait_for`` wraps what it waits on in a task of its own (for a batch, one per item that
arrives while it lingers) and can swallow a cancel that comes with the wake-up, so a
loop asked to stop would not.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeVar

T = TypeVar("T")


async def gather_batch(queue: asyncio.Queue[T], first: T, limit: int, linger: float,
                       batch: list[T] | None = None) -> list[T]:
    """``first`` plus whatever else is queued or arrives within ``linger`` seconds, up to
    ``limit`` items. Pass ``batch`` to gather into a list someone else can see meanwhile
    (what is taken off the queue is never out of sight, e.g. at shutdown).

    An item is taken off the queue only when it is appended: a get cut short by the
    deadline leaves whatever it would have taken in the queue."""
    if batch is None:
        batch = []
    batch.append(first)
    _take_queued(queue, batch, limit)
    if len(batch) >= limit or linger <= 0:
        return batch
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(linger):
            while len(batch) < limit:
                batch.append(await queue.get())
                _take_queued(queue, batch, limit)
    return batch


def _take_queued(queue: asyncio.Queue[T], batch: list[T], limit: int) -> None:
    while len(batch) < limit and not queue.empty():
        batch.append(queue.get_nowait())


async def wait_set(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` have passed, whichever comes first."""
    if event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
