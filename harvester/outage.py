"""A database that is away, as one loop of the daemon sees it (claims, writes, the
retention purge): jittered backoff from 0.2 s doubling to 10 s, one warning when the
outage begins and one line when it ends, each failure counted in
``harvester_store_unavailable_total``."""

from __future__ import annotations

import asyncio
from typing import Final

from harvester.errors import StoreError
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.policy import Random, backoff

log = get_logger("harvester.engine")

OUTAGE_BASE: Final = 0.2
OUTAGE_CAP: Final = 10.0


def outage_pause(failures: int, rand: float) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
    return backoff(failures - 1, base=OUTAGE_BASE, cap=OUTAGE_CAP, rand=rand)


class Retrying:
    """One loop's view of an outage; ``what`` names the loop in the log lines."""

    def __init__(self, what: str, metrics: Metrics, rand: Random) -> None:
        self.what = what
        self.metrics = metrics
        self.rand = rand
        self.failures = 0

    def failed(self, exc: StoreError) -> float:
        """Count and log one failure; returns how long to wait before trying again."""
        self.failures += 1
        self.metrics.store_errors.inc()
        delay = outage_pause(self.failures, self.rand())
        if self.failures == 1:
            log.warning("store.unavailable", during=self.what, error=str(exc))
        else:
            log.debug("store.still_unavailable", during=self.what, failures=self.failures,
                      retry_in=round(delay, 2))
        return delay

    async def wait_after(self, exc: StoreError) -> None:
        """:meth:`failed`, then the wait."""
        await asyncio.sleep(self.failed(exc))

    def succeeded(self) -> None:
        if self.failures:
            log.info("store.recovered", during=self.what, after_failures=self.failures)
        self.failures = 0
