"""The retention purge's schedule, from tables, and its loop over an in-memory store
(README "Retention"): batches until caught up under one lock, another replica's run
respected, outages waited out, refusals counted and retried, never a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from harvester import retention
from harvester.engine import Engine
from harvester.errors import StoreError, StoreUnavailable
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.outage import OUTAGE_CAP, outage_pause
from harvester.retention import (
    BUSY_SHARE,
    IDLE_MAX,
    IDLE_MIN,
    REFUSED_BASE,
    REFUSED_CAP,
    SPACING,
    Purger,
    Retention,
    pause_after,
    refused_pause,
)
from harvester.settings import DAY, Settings
from tests.fakes import MemoryStore as EngineStore
from tests.fakes import ScriptedUpstream
from tests.unit.test_engine import settings as engine_settings

# ------------------------------------------------------------------ the pure schedule


@pytest.mark.parametrize(("finished", "results", "idle"), [
    (5.0, None, IDLE_MIN),           # a tenth of 5 s, but never more often than every second
    (300.0, None, 30.0),
    (30 * DAY, None, IDLE_MAX),      # the default: once a minute
    (30 * DAY, 200.0, 20.0),         # the shorter retention sets the pace
    (None, 90 * DAY, IDLE_MAX),
])
def test_once_caught_up_the_purge_looks_again_after_a_tenth_of_the_retention(
    finished: float | None, results: float | None, idle: float
) -> None:
    assert Retention(finished, results).idle() == idle


@pytest.mark.parametrize(("deleted", "took", "pause"), [
    (1000, 0.01, SPACING),                              # behind, fast batches: go on
    (1000, 0.2, 0.2 * (1 - BUSY_SHARE) / BUSY_SHARE),   # slow batches: at most a fifth busy
    (1000, 100.0, 60.0),                                # ... but never longer than idle
    (1000, -1.0, SPACING),                              # a clock that went backwards
    (999, 0.01, 60.0),                                  # caught up: look again after idle
    (0, 0.0, 60.0),
])
def test_a_full_batch_goes_on_soon_a_short_one_waits_for_the_next_look(
    deleted: int, took: float, pause: float
) -> None:
    assert pause_after(deleted, 1000, took, idle=60.0) == pytest.approx(pause)


def test_failures_back_off_within_their_bounds_for_any_count() -> None:
    for failures in (1, 2, 5, 60, 10_000):
        for rand in (0.0, 0.5, 0.999):
            outage = outage_pause(failures, rand)
            refused = refused_pause(failures, rand)
            assert 0.2 <= outage <= OUTAGE_CAP
            assert REFUSED_BASE <= refused <= REFUSED_CAP
    assert refused_pause(10_000, 0.999) > refused_pause(1, 0.999)
    assert refused_pause(1, 0.0) == REFUSED_BASE


def test_zero_means_keep() -> None:
    assert Retention.from_settings(Settings(finished_retention=0)) == Retention(None, None)
    assert not Retention(None, None).enabled
    kept = Retention.from_settings(Settings(result_retention=0))
    assert (kept.finished, kept.results) == (30 * DAY, None)
    both = Retention.from_settings(Settings(finished_retention=60, result_retention=7 * DAY))
    assert (both.finished, both.results, both.enabled) == (60, 7 * DAY, True)


# ------------------------------------------------------------------ the loop


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """The purge's log events. Its module logger is bound again inside the capture: one
    bound earlier keeps the processors of whichever test configured logging first."""
    with capture_logs() as captured:
        monkeypatch.setattr(retention, "log", get_logger("harvester.retention"))
        yield captured


class MemoryStore:
    """Rows waiting to be purged, per table, and the purge lock."""

    def __init__(self, jobs: int = 0, results: int = 0) -> None:
        self.waiting = {"jobs": jobs, "extraction_results": results}
        self.other_replica_purging = False
        self.holding = False
        self.turns = 0
        self.batches: list[tuple[str, float, int]] = []
        self.lock_failures: list[StoreError] = []
        self.batch_failures: list[StoreError] = []

    @asynccontextmanager
    async def purging(self) -> AsyncIterator[MemoryStore | None]:
        self.turns += 1
        if self.lock_failures:
            raise self.lock_failures.pop(0)
        if self.other_replica_purging:
            yield None
            return
        assert not self.holding
        self.holding = True
        try:
            yield self
        finally:
            self.holding = False

    async def purge_finished(self, older_than: float, limit: int) -> int:
        return self._batch("jobs", older_than, limit)

    async def purge_results(self, older_than: float, limit: int) -> int:
        return self._batch("extraction_results", older_than, limit)

    def _batch(self, table: str, older_than: float, limit: int) -> int:
        assert self.holding, "a batch outside the lock"
        self.batches.append((table, older_than, limit))
        if self.batch_failures:
            raise self.batch_failures.pop(0)
        deleted = min(limit, self.waiting[table])
        self.waiting[table] -= deleted
        return deleted


class Clock:
    """Time that passes only when the purge sleeps: its pauses cost a test nothing."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def purger(retention: Retention, store: MemoryStore, metrics: Metrics | None = None
           ) -> Purger:
    clock = Clock()
    return Purger(retention, store, metrics or Metrics(), clock=clock, sleep=clock.sleep)


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_run_deletes_batch_after_batch_under_one_lock_until_caught_up(
    logs: list[MutableMapping[str, Any]]
) -> None:
    store = MemoryStore(jobs=35, results=12)
    metrics = Metrics()
    purge = purger(Retention(3600.0, 7200.0, batch=10), store, metrics)
    await purge.turn()
    assert store.waiting == {"jobs": 0, "extraction_results": 0}
    assert store.turns == 1 and not store.holding
    assert [b for b in store.batches if b[0] == "jobs"] == [("jobs", 3600.0, 10)] * 4
    assert [b for b in store.batches if b[0] == "extraction_results"] == [
        ("extraction_results", 7200.0, 10)] * 2
    assert counted(metrics, "harvester_retention_deleted_total", table="jobs") == 35
    assert counted(metrics, "harvester_retention_deleted_total",
                   table="extraction_results") == 12
    assert counted(metrics, "harvester_finished_retention_seconds") == 3600
    assert counted(metrics, "harvester_result_retention_seconds") == 7200
    runs = {e["table"]: e for e in logs if e["event"] == "retention.purged"}
    assert (runs["jobs"]["rows"], runs["jobs"]["batches"]) == (35, 4)
    assert (runs["extraction_results"]["rows"], runs["extraction_results"]["batches"]) == (12, 2)
    # Between full batches the purge paused; caught up, nothing is due before the next
    # look (a minute here).
    assert isinstance(purge.clock, Clock) and purge.clock.slept
    assert all(pause >= SPACING for pause in purge.clock.slept)
    assert all(t.due >= purge.clock() + IDLE_MAX - 5 for t in purge.tables)


async def test_only_the_tables_with_a_retention_are_purged() -> None:
    store = MemoryStore(jobs=5, results=5)
    await purger(Retention(None, 60.0), store).turn()
    assert store.waiting == {"jobs": 5, "extraction_results": 0}
    store = MemoryStore(jobs=5, results=5)
    metrics = Metrics()
    await purger(Retention(60.0, None), store, metrics).turn()
    assert store.waiting == {"jobs": 0, "extraction_results": 5}
    assert counted(metrics, "harvester_result_retention_seconds") == 0


async def test_while_another_replica_purges_this_one_deletes_nothing_and_looks_later() -> None:
    store = MemoryStore(jobs=50)
    store.other_replica_purging = True
    purge = purger(Retention(5.0, None), store)
    await purge.turn()
    assert store.batches == [] and store.waiting["jobs"] == 50
    assert purge.tables[0].due == purge.clock() + IDLE_MIN


async def test_an_outage_is_waited_out_and_said_once(logs: list[MutableMapping[str, Any]]) -> None:
    store = MemoryStore(jobs=3)
    store.lock_failures = [StoreUnavailable("database unavailable: gone")] * 3
    metrics = Metrics()
    purge = purger(Retention(60.0, None), store, metrics)
    for _ in range(3):
        await purge.turn()
        assert purge.tables[0].due > purge.clock()
        purge.tables[0].due = 0.0  # no need to wait for the backoff here
    await purge.turn()
    assert store.waiting["jobs"] == 0
    events = [e["event"] for e in logs]
    assert events.count("store.unavailable") == 1
    assert events.count("store.recovered") == 1
    assert counted(metrics, "harvester_store_unavailable_total") == 3


async def test_a_refused_batch_is_counted_logged_and_retried_later_never_raised(
    logs: list[MutableMapping[str, Any]]
) -> None:
    store = MemoryStore(jobs=25, results=25)
    store.batch_failures = [StoreError("database error: InsufficientPrivilegeError: "
                                       "permission denied for table jobs")]
    metrics = Metrics()
    purge = purger(Retention(60.0, 60.0, batch=10), store, metrics)
    jobs = purge.tables[0]
    await purge.turn()  # the jobs batch is refused; the lock is given back
    assert not store.holding
    assert jobs.due >= purge.clock() + REFUSED_BASE
    await purge.turn()  # the mirror's purge is not held back by the queue's
    assert store.waiting == {"jobs": 25, "extraction_results": 0}
    jobs.due = 0.0
    await purge.turn()
    assert store.waiting["jobs"] == 0
    failed = [e for e in logs if e["event"] == "retention.failed"]
    assert [(e["table"], e["log_level"]) for e in failed] == [("jobs", "error")]
    assert "permission denied" in failed[0]["error"]
    assert [e["table"] for e in logs if e["event"] == "retention.recovered"] == ["jobs"]
    assert counted(metrics, "harvester_retention_failures_total", table="jobs") == 1
    assert counted(metrics, "harvester_retention_failures_total",
                   table="extraction_results") == 0


async def test_run_goes_on_until_cancelled_and_gives_the_lock_back() -> None:
    """In real time: the batches are spaced out, and cancelling (the daemon stopping)
    ends the run with the lock given back."""
    store = MemoryStore(jobs=10_000)
    task = asyncio.create_task(Purger(Retention(60.0, None), store, Metrics()).run())
    async with asyncio.timeout(30):
        while store.waiting["jobs"] > 8000:
            assert not task.done(), task
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not store.holding
    assert 0 < store.waiting["jobs"] < 10_000  # spaced out: not all at once


# ------------------------------------------------------------------ owned by the engine


async def test_the_engine_owns_the_purge_cancels_it_on_stop_and_stops_if_it_dies() -> None:
    """No fire-and-forget: the purge runs as one of the engine's background tasks, is
    cancelled with them, and a purge that dies stops the daemon with its error."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def purge() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    engine = Engine(engine_settings(), EngineStore(), ScriptedUpstream(), Metrics(),
                    worker_id="test", background={"retention": purge})
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(started.wait(), 5)
    engine.stop()
    await asyncio.wait_for(task, 15)
    assert cancelled.is_set()

    async def broken() -> None:
        raise RuntimeError("a bug in the purge")

    engine = Engine(engine_settings(), EngineStore(), ScriptedUpstream(), Metrics(),
                    worker_id="test", background={"retention": broken})
    with pytest.raises(RuntimeError, match="a bug in the purge"):
        await asyncio.wait_for(engine.run(), 15)
