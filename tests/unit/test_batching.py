"""Batches and waits on the daemon's own queues (harvester.batching): a batch takes what
is queued at once and what arrives while it lingers, never more than its limit; an item
not taken stays queued; and a loop cancelled while it waits is cancelled (on Python 3.11
``asyncio.wait_for`` could swallow that cancel; these waits use ``asyncio.timeout``)."""

from __future__ import annotations

import asyncio

import pytest

from harvester.batching import gather_batch, wait_set


async def test_a_batch_takes_what_is_queued_up_to_its_limit_without_waiting() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(1, 10):
        queue.put_nowait(i)
    batch = await asyncio.wait_for(gather_batch(queue, 0, 5, linger=60.0), timeout=1.0)
    assert batch == [0, 1, 2, 3, 4]
    assert queue.qsize() == 5


async def test_a_batch_takes_what_arrives_while_it_lingers_and_leaves_the_rest() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, queue.put_nowait, 1)
    loop.call_later(0.02, queue.put_nowait, 2)
    loop.call_later(0.5, queue.put_nowait, 3)
    batch = await gather_batch(queue, 0, 10, linger=0.1)
    assert batch == [0, 1, 2]
    await asyncio.sleep(0.5)
    assert queue.get_nowait() == 3  # the get the deadline cut short took nothing


async def test_a_cancelled_batch_is_cancelled_and_keeps_what_it_took_in_sight() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    seen: list[int] = []
    task = asyncio.create_task(gather_batch(queue, 0, 10, linger=60.0, batch=seen))
    await asyncio.sleep(0.01)
    queue.put_nowait(1)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [0, 1]
    assert queue.empty()


async def test_a_cancel_that_comes_with_the_item_is_not_swallowed() -> None:
    """The cancel and the item arrive in the same turn of the loop: the task is still
    cancelled, and the item is either in the batch or still queued, never lost."""
    for _ in range(20):
        queue: asyncio.Queue[int] = asyncio.Queue()
        seen: list[int] = []
        task = asyncio.create_task(gather_batch(queue, 0, 10, linger=60.0, batch=seen))
        await asyncio.sleep(0)
        queue.put_nowait(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen[1:] + list(_drain(queue)) == [1]


async def test_waiting_for_an_event_ends_when_it_is_set_or_the_time_is_up() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    await asyncio.wait_for(wait_set(event, 60.0), timeout=1.0)
    await asyncio.wait_for(wait_set(asyncio.Event(), 0.01), timeout=1.0)


async def test_a_cancelled_wait_for_an_event_is_cancelled_even_as_the_event_is_set() -> None:
    for _ in range(20):
        event = asyncio.Event()
        task = asyncio.create_task(wait_set(event, 60.0))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _drain(queue: asyncio.Queue[int]) -> list[int]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
