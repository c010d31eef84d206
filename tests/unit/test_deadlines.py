"""One watchdog for every request's deadline (harvester.deadlines; README "Performance").

Real tasks on a real event loop, short timeouts: a request past its deadline ends in a
timeout within a tick of it, one that ends in time is never touched, and a cancel from
elsewhere (the daemon stopping) is never swallowed, whether it comes alone, with the
watchdog's or after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from harvester.deadlines import MAX_TICK, Deadlines


async def request(deadlines: Deadlines, seconds: float) -> str:
    """A request as harvester.upstream makes one: ``seconds`` long."""
    task = deadlines.begin()
    try:
        await asyncio.sleep(seconds)
        return "answered"
    except asyncio.CancelledError:
        if deadlines.expired(task):
            return "timed out"
        raise
    finally:
        deadlines.end(task)


@pytest.fixture
async def deadlines() -> AsyncIterator[Deadlines]:
    kept = Deadlines(0.2)
    kept.start()
    yield kept
    await kept.stop()


async def test_a_request_past_its_deadline_times_out_within_a_tick(deadlines: Deadlines) -> None:
    started = time.monotonic()
    assert await request(deadlines, 10) == "timed out"
    took = time.monotonic() - started
    assert deadlines.timeout <= took < deadlines.timeout + deadlines.tick + 0.1
    assert not deadlines._due and not deadlines._expired


async def test_requests_in_time_are_answered_and_leave_nothing_behind(
        deadlines: Deadlines) -> None:
    answers = await asyncio.gather(*(request(deadlines, 0.01 * (n % 5)) for n in range(50)))
    assert answers == ["answered"] * 50
    # The next request in the same task starts with a fresh deadline.
    assert await request(deadlines, 0.15) == "answered"
    await asyncio.sleep(deadlines.timeout + 2 * deadlines.tick)  # the watchdog ran meanwhile
    assert not deadlines._due and not deadlines._expired


async def test_slow_and_quick_requests_side_by_side(deadlines: Deadlines) -> None:
    answers = await asyncio.gather(*(request(deadlines, 10 if n % 2 else 0.05)
                                     for n in range(20)))
    assert answers == ["answered", "timed out"] * 10


async def test_a_cancel_from_elsewhere_is_never_taken_for_a_timeout(deadlines: Deadlines) -> None:
    task = asyncio.create_task(request(deadlines, 10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._due and not deadlines._expired


async def test_a_cancel_that_comes_with_the_timeout_still_cancels(deadlines: Deadlines) -> None:
    task = asyncio.create_task(request(deadlines, 10))
    await asyncio.sleep(0.01)
    # The watchdog's cancel and the daemon's in the same turn of the loop.
    deadlines._due[task] = 0.0
    deadlines._expired.add(task)
    task.cancel()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_after_the_timeout_still_cancels(deadlines: Deadlines) -> None:
    async def then_more(seconds: float) -> str:
        answer = await request(deadlines, seconds)
        await asyncio.sleep(10)  # the work after the request
        return answer

    task = asyncio.create_task(then_more(10))
    await asyncio.sleep(deadlines.timeout + deadlines.tick + 0.1)
    assert not task.done()  # timed out, then went on with its work
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_tick_is_a_tenth_of_a_short_timeout() -> None:
    assert Deadlines(30).tick == MAX_TICK
    assert Deadlines(1).tick == pytest.approx(0.1)
    assert Deadlines(0.1).tick == pytest.approx(0.01)
