"""Request deadlines kept by one watchdog task instead of a timer per request.

aiohttp's total timeout (like ``asyncio.timeout``) arms a timer on the event loop for
every request and disarms it when the answer is in: measured in a bare GET loop against
the simulator, 64 in flight, that costs 10-15 µs of the ~150 µs a request costs the
client, and in the daemon about 3 % of its CPU per job (README "Performance"). Here a
request only notes its deadline in a dict; one task wakes every :attr:`Deadlines.tick`
seconds and cancels the requests whose deadline has passed. Such a request ends with
:class:`TimeoutError`, as under ``asyncio.timeout``, at most one tick after its deadline.

The cancellation is asyncio's own: :meth:`Deadlines.expired` takes back only the cancel
the watchdog made (``Task.uncancel``), so a cancel from anywhere else (the daemon
stopping) that comes with it, or after it, still cancels the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

MAX_TICK: Final = 0.25
"""The longest a request may overrun its deadline, in seconds (shorter for timeouts
under 2.5 s: a tenth of the timeout)."""


def overrun(timeout: float) -> float:
    """The most a request given ``timeout`` seconds may last beyond them: one tick."""
    return min(MAX_TICK, timeout / 10)


class Deadlines:
    """The deadlines of the requests in flight. ``start()`` the watchdog inside the
    event loop, ``stop()`` it when done."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = overrun(timeout)
        self._due: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._watchdog = asyncio.create_task(self._watch(), name="harvester-deadlines")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    def begin(self) -> asyncio.Task[Any]:
        """The current task starts a request: it is cancelled once :attr:`timeout`
        seconds have passed, unless :meth:`end` comes first."""
        task = asyncio.current_task()
        if task is None or self._loop is None:
            raise RuntimeError("Deadlines used outside a task, or before start()")
        self._due[task] = self._loop.time() + self.timeout
        return task

    def end(self, task: asyncio.Task[Any]) -> None:
        self._due.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """For a task that caught CancelledError in a request: True if the cancel was
        the watchdog's and nothing else asked to cancel it (then it is taken back, and
        the request timed out); False if the CancelledError must go on."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    async def _watch(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(self.tick)
            now = self._loop.time()
            late = [task for task, due in self._due.items() if due <= now]
            for task in late:
                del self._due[task]
                if not task.done():
                    self._expired.add(task)
                    task.cancel()
