"""A database the daemon waits out (README "The database's faults"), as its loops meet
it: each loop (claims, writes, the heartbeat, the purge) backs off on its own, jittered
from 0.2 s doubling to 10 s, a conflict the server rolled back being tried again at
once first; the :class:`Outage` they share says it once when the first loop fails and
once when the last one has recovered, tells readiness, and counts each failure in
``harvester_store_unavailable_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from harvester.errors import StoreConflict, StoreError, StoreUnavailable
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.policy import Random
from harvester.waits import backoff

log = get_logger("harvester.engine")

OUTAGE_BASE: Final = 0.2
OUTAGE_CAP: Final = 10.0
CAUSES_KEPT: Final = 8
"""Distinct causes named in ``store.recovered`` (a failover shows two or three)."""


def outage_pause(failures: int, rand: float) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
    return backoff(failures - 1, base=OUTAGE_BASE, cap=OUTAGE_CAP, rand=rand)


class Outage:
    """Which loops are waiting out the database now, and the log of it: one line when
    the first loop fails (``store.unavailable``; a warning, an error when the cause is
    one no wait cures by itself: a missing privilege, a fault the table does not know),
    one more only if such a cause shows up later in the same outage, and one when the
    last failing loop has succeeded again (``store.recovered``, with how long, how many
    failures and their causes). Every retry in between is a debug line."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failing: dict[str, int] = {}
        self.began = 0.0
        self.failures = 0
        self.causes: dict[str, None] = {}

    @property
    def active(self) -> bool:
        return bool(self.failing)

    def failed(self, what: str, exc: StoreError) -> None:
        first = not self.failing
        self.failing[what] = self.failing.get(what, 0) + 1
        self.failures += 1
        cause = exc.code or type(exc).__name__
        new = cause not in self.causes
        if new and len(self.causes) < CAUSES_KEPT:
            self.causes[cause] = None
        loud = not isinstance(exc, StoreUnavailable)
        if first:
            self.began = self.clock()
        if first or (loud and new):
            emit = log.error if loud else log.warning
            emit("store.unavailable", during=what, error=str(exc), cause=cause,
                 note="waited out: nothing is charged to any job; readiness fails meanwhile")
        else:
            log.debug("store.still_unavailable", during=what, failures=self.failing[what],
                      error=str(exc))

    def succeeded(self, what: str) -> None:
        if self.failing.pop(what, None) is None or self.failing:
            return
        log.info("store.recovered", during=what, after_failures=self.failures,
                 seconds=round(self.clock() - self.began, 1), causes=list(self.causes))
        self.failures = 0
        self.causes = {}


class Retrying:
    """One loop's view of an outage; ``what`` names the loop in the log lines. Loops that
    share ``outage`` (the engine's) are one outage in the log and in readiness."""

    def __init__(self, what: str, metrics: Metrics, rand: Random,
                 outage: Outage | None = None) -> None:
        self.what = what
        self.metrics = metrics
        self.rand = rand
        self.outage = outage if outage is not None else Outage()
        self.failures = 0

    def failed(self, exc: StoreError) -> float:
        """Count and log one failure; returns how long to wait before trying again."""
        self.failures += 1
        self.metrics.store_errors.inc()
        if self.failures == 1 and isinstance(exc, StoreConflict):
            log.debug("store.conflict_retried", during=self.what, error=str(exc))
            return 0.0
        self.outage.failed(self.what, exc)
        return outage_pause(self.failures, self.rand())

    async def wait_after(self, exc: StoreError) -> None:
        """:meth:`failed`, then the wait."""
        await asyncio.sleep(self.failed(exc))

    def succeeded(self) -> None:
        if self.failures:
            self.outage.succeeded(self.what)
        self.failures = 0
