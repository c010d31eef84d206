"""Gathering work into batches: one database or upstream round trip for many jobs."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

T = TypeVar("T")


async def gather_batch(queue: asyncio.Queue[T], first: T, limit: int, linger: float,
                       batch: list[T] | None = None) -> list[T]:
    """``first`` plus whatever else is queued or arrives within ``linger`` seconds, up to
    ``limit`` items. Pass ``batch`` to gather into a list someone else can see meanwhile
    (what is taken off the queue is never out of sight, e.g. at shutdown)."""
    if batch is None:
        batch = []
    batch.append(first)
    deadline = time.monotonic() + linger
    while len(batch) < limit:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch
