"""The engine: claim → (follow) → poll → decide → write, with bounded concurrency.

It owns every task it starts. A dispatcher claims due jobs only while there is room for
them; jobs whose next step is ``status`` go to the :class:`~harvester.follower.StatusFollower`
(batch-status, 100 at a time), the others, and those the follower finds finished, to
``CONCURRENCY`` workers that ask the :class:`~harvester.pacing.Gate`, GET the result and
hand the answer to the pure policy; a writer turns decisions into one transaction per
batch; the store's listener wakes the dispatcher when jobs are fed; a checker sends the
control requests that tell whose a run of 403s is (:mod:`harvester.controls`). What the
daemon believes about upstream is the :class:`~harvester.upstream_view.UpstreamView`'s
alone; metrics and logs are the :class:`~harvester.observer.Observer`'s business. If a
vital task dies the daemon stops with a clear log. On SIGTERM it stops claiming, gives back jobs it has not
started, lets requests in flight finish within the grace period, flushes its writes and
returns. A database fault is never fatal: each is handled as the fault table says
(README "The database's faults"), and every loop that meets the database shares one
:class:`~harvester.outage.Outage`, which readiness reads.

The engine sees the database and upstream only through the ports
(:mod:`harvester.ports`), so the tests run it in-process over in-memory fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

from harvester import __version__
from harvester.api import BATCH_STATUS_LIMIT
from harvester.batching import gather_batch, wait_set
from harvester.controls import Controls
from harvester.deadlines import overrun
from harvester.errors import StoreError, ValueRefused
from harvester.fleet import FleetPace
from harvester.follower import CALLS, TOP_UP_WITHIN, Claimed, StatusFollower
from harvester.logs import get_logger
from harvester.metrics import Metrics
from harvester.observer import Observer
from harvester.outage import Outage, Retrying
from harvester.pacing import Released
from harvester.policy import (
    Context,
    Hold,
    Job,
    Land,
    PolicyConfig,
    Random,
    Response,
    Retry,
    Stuck,
    decide,
    store_refused,
)
from harvester.ports import Outcome, ReleaseRow, StorePort, UpstreamPort, WorkerState, WriteReport
from harvester.settings import Settings
from harvester.upstream_view import UpstreamView

log = get_logger("harvester.engine")

CLAIM_BATCH_MAX: Final = 500
STATUS_AHEAD: Final = BATCH_STATUS_LIMIT * CALLS
"""Jobs that may wait for batch-status beside the jobs the workers hold."""
READY_AHEAD: Final = BATCH_STATUS_LIMIT
"""Jobs claimed (and followed) ahead of the workers beyond that: about one claim's worth
ready, so a slot that frees takes a job at once instead of waiting for a claim and a
batch-status call (README "Performance")."""
CLAIM_HORIZON: Final = 4.0
"""Under a send rate, claim no more than can leave within this many seconds. Shorter
leaves more of the queue to faster replicas at the end of a burst, but a replica that
runs short of work between claims stops growing its rate: at 1.5 s, three replicas
followed a raised limit in 11 s to never within 20 s (7 runs), at 4 s in 7–17 s."""
WRITE_BATCH_MAX: Final = 500
WRITE_LINGER: Final = 0.02
IDLE_POLL_FALLBACK: Final = 1.0
IDLE_POLL_LISTENING: Final = 5.0
HEARTBEAT_EVERY: Final = 5.0
OUTAGE_WRITE_FIRST: Final = 0.2
"""While writes wait out the database, the dispatcher looks this often whether they
got through before claiming again."""
TICK_EVERY: Final = 1.0
LEASE_MARGIN: Final = 2.0
"""A request must end this long before its job's lease does (at most half of what the
lease leaves beyond the request timeout)."""


class Engine:
    """One daemon's harvesting machinery. ``run()`` returns when ``stop()`` was called
    and everything is flushed, or raises if a vital task died."""

    def __init__(
        self,
        settings: Settings,
        store: StorePort,
        upstream: UpstreamPort,
        metrics: Metrics,
        *,
        worker_id: str | None = None,
        rand: Random = random.random,
        background: Mapping[str, Callable[[], Coroutine[Any, Any, None]]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self.config = PolicyConfig.from_settings(settings)
        self.rand = rand
        self.hostname = socket.gethostname()
        self.worker_id = worker_id or f"{self.hostname}:{os.getpid()}:{random.getrandbits(24):06x}"
        refusals: asyncio.Queue[float] = asyncio.Queue()
        self.view = UpstreamView(max_rps=settings.max_rps,
                                 probe_interval=settings.auth_probe_interval,
                                 on_refused=refusals.put_nowait)
        """What the daemon believes about upstream; it alone changes it."""
        self.gate = self.view.gate
        self.outage = Outage()
        """The database as the claim, write and heartbeat loops find it."""
        self.observer = Observer(metrics, self.gate, settings.api_base_url)
        self.fleet = FleetPace(self.gate, store, self.observer, self.worker_id, refusals)
        self.concurrency = settings.concurrency
        self.min_claim = max(1, min(self.concurrency // 4, 64))
        """Claim no fewer while this many wait. (Claims of a whole batch-status call, 100,
        kept 1-2 more requests in flight in bench (b) but cost (e)'s landing lag p99
        0.2-0.3 s: a due job waited for 100 slots to free.)"""
        self.local: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.outcomes: asyncio.Queue[Outcome] = asyncio.Queue(
            maxsize=max(4 * self.concurrency, 1024))
        self.releases: asyncio.Queue[ReleaseRow] = asyncio.Queue()
        self.follower = StatusFollower(
            upstream, self.view, self.observer, self.config, rand,
            fetch=self.local.put_nowait, write=self.outcomes.put, hand_back=self.releases.put,
            patience=self._patience, top_up=self._top_up)
        self.controls = Controls(self.gate, upstream, self.observer, self.config, rand)
        self.busy: dict[UUID, Claimed] = {}
        self.sent: set[UUID] = set()
        """Jobs whose result request has gone out (a subset of busy)."""
        self.work_ready = asyncio.Event()
        self.room = asyncio.Event()
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()
        self.listening = False
        self._next_wake: float | None = None
        self._writer_holding = 0
        self._writes_behind = False
        """Writes met the database's fault, and the answers held through it are not all
        written yet (see :meth:`_answers_waiting`)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal: BaseException | None = None
        self.background = dict(background or {})
        """More tasks to own, by name (the retention purge): started with the engine's
        own background tasks, cancelled with them, and vital like them."""

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon.stopping", in_flight=len(self.busy), queued=self.local.qsize())
        self.stopping.set()
        self.work_ready.set()
        self.room.set()

    def health(self) -> dict[str, bool]:
        """The engine's part of readiness (README "Probes and metrics")."""
        return {
            "auth_circuit_closed": not self.gate.auth.is_open,
            "permission_circuit_closed": not self.gate.permission.is_open,
            "base_url_plausible": not self.view.base_url_suspect,
            # A ping is not enough: a read-only node answers SELECT 1 happily.
            "database_serving": not self.outage.active,
            "running": self.started.is_set() and not self.stopping.is_set(),
        }

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("daemon.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
            if self._fatal is None:
                self._fatal = exc
            self.stop()
        elif not self.stopping.is_set():
            log.error("daemon.task_exited", task=task.get_name())
            if self._fatal is None:
                self._fatal = RuntimeError(f"vital task {task.get_name()} exited")
            self.stop()

    async def run(self) -> None:
        workers = [self._spawn(f"worker-{i}", self._worker()) for i in range(self.concurrency)]
        followers = [self._spawn(f"status-{i}", self.follower.run(i)) for i in range(CALLS)]
        writer = self._spawn("writer", self._writer())
        releaser = self._spawn("releaser", self._releaser())
        dispatcher = self._spawn("dispatcher", self._dispatcher())
        background = [
            self._spawn("heartbeat", self._heartbeat()),
            self._spawn("ticker", self._ticker()),
            self._spawn("listener", self.store.listen_for_jobs(
                self._jobs_fed, self._listening, self.fleet.heard)),
            self._spawn("fleet", self.fleet.run()),
            self._spawn("checker", self.controls.run()),
            *(self._spawn(name, start()) for name, start in self.background.items()),
        ]
        self.started.set()
        log.info("daemon.started", worker_id=self.worker_id, concurrency=self.concurrency,
                 api_base_url=self.settings.api_base_url, max_rps=self.settings.max_rps)
        await self.stopping.wait()
        await self._shutdown(workers, followers, writer, releaser, dispatcher, background)
        if self._fatal is not None:
            raise self._fatal

    async def _shutdown(self, workers: list[asyncio.Task[None]],
                        followers: list[asyncio.Task[None]], writer: asyncio.Task[None],
                        releaser: asyncio.Task[None], dispatcher: asyncio.Task[None],
                        background: list[asyncio.Task[None]]) -> None:
        grace = self.settings.shutdown_grace
        deadline = time.monotonic() + grace
        # The dispatcher stops by itself at its next step. It is not cancelled while a
        # claim is on its way back: that claim has committed on the server, and its jobs
        # must reach the local queue to be handed back below, not wait out their lease.
        await asyncio.wait({dispatcher}, timeout=max(1.0, min(5.0, grace)))
        await _cancel(dispatcher)
        # Jobs waiting for batch-status, and claimed jobs not started, go straight back
        # (taken out of the follower before its calls are cancelled, which forget them).
        # Every call is cancelled before any is awaited: a call left running while
        # another is awaited could take in a top-up claim that had just come back, and
        # those jobs would be in no list (a top-up cancelled on its way back hands its
        # own jobs back, see _top_up).
        unstarted = [ReleaseRow(c.job, 0.0) for c in self.follower.unasked()]
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        while not self.local.empty():
            item = self.local.get_nowait()
            if item is not None:
                unstarted.append(ReleaseRow(item.job, 0.0))
        for _ in workers:
            self.local.put_nowait(None)
        released = await self._release_quietly(unstarted)
        # Requests in flight get the grace period; then they are cancelled and released.
        _done, pending = await asyncio.wait(workers, timeout=max(0.0, deadline - time.monotonic()))
        # A request cut off by the grace period may have reached upstream: its job waits
        # the default Retry-After before the next poll, whoever makes it.
        cut = [ReleaseRow(c.job, self.config.default_retry_after, polled=True)
               if c.job.job_id in self.sent else ReleaseRow(c.job, 0.0)
               for c in self.busy.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        released += await self._release_quietly(cut)
        # Hand-backs still queued are written.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.releases.join(), timeout=5.0)
        await _cancel(releaser)
        # Everything decided is written (shielded from our own cancellation).
        flush_deadline = max(deadline, time.monotonic() + 5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outcomes.join(), timeout=flush_deadline - time.monotonic())
        unflushed = self.outcomes.qsize()
        await _cancel(writer)
        for task in background:
            await _cancel(task)
        self.observer.digest.flush(force=True)
        with contextlib.suppress(StoreError):
            await self.store.forget_worker(self.worker_id)
        log.info("daemon.stopped", released=released, cut_in_flight=len(cut),
                 unflushed=unflushed + self._writer_holding)

    async def _release_quietly(self, rows: list[ReleaseRow]) -> int:
        if not rows:
            return 0
        try:
            return len(await self.store.release(rows))
        except StoreError as exc:
            # During an outage the outage's own lines say it.
            emit = log.debug if self.outage.active else log.warning
            emit("release.failed", jobs=len(rows), error=str(exc),
                 note="their leases lapse and they come back by themselves")
            return 0

    # ------------------------------------------------------------------ dispatcher

    def _in_hand(self) -> int:
        return len(self.busy) + self.local.qsize() + self.follower.holding

    def _room(self) -> int:
        """How many more jobs to claim now: enough to keep every worker and the status
        calls busy, and under a send rate no more than can leave within CLAIM_HORIZON."""
        room = self.concurrency + READY_AHEAD + STATUS_AHEAD - self._in_hand()
        rate = self.gate.rate.allowed
        if math.isfinite(rate):
            room = min(room, max(1, int(rate * CLAIM_HORIZON)) - self._in_hand())
        return room

    async def _dispatcher(self) -> None:
        retry = Retrying("claim", self.metrics, self.rand, self.outage)
        while not self.stopping.is_set():
            blocked = self.gate.blocked_for()
            if blocked > 0:
                await wait_set(self.stopping, min(blocked, 1.0))
                continue
            if self._answers_waiting():
                await wait_set(self.stopping, OUTAGE_WRITE_FIRST)
                continue
            room = self._room()
            waiting = self.local.qsize() + self.follower.holding
            if room <= 0 or (room < self.min_claim and waiting >= self.min_claim):
                self.room.clear()
                if not self.stopping.is_set():
                    await self.room.wait()
                continue
            if self.gate.circuit_open:
                room = 1  # the probe
            try:
                started = time.perf_counter()
                jobs = await self.store.claim(min(room, CLAIM_BATCH_MAX),
                                              self.settings.lease_seconds, self.worker_id)
                self.metrics.claim_seconds.observe(time.perf_counter() - started)
            except StoreError as exc:
                await retry.wait_after(exc)
                continue
            retry.succeeded()
            now = time.monotonic()
            if jobs:
                self.metrics.claim_size.observe(len(jobs))
            # While the permission circuit is open its probe is a result GET: a
            # batch-status answer says nothing about reading results.
            probing = self.gate.permission.is_open
            for job in jobs:
                if job.next_step == "status" and not probing and self.view.status_usable(now):
                    self.follower.follow(Claimed(job, now))
                else:
                    self.local.put_nowait(Claimed(job, now, status_usable=self.view.status_ok))
            if len(jobs) < room:
                await self._idle(retry)

    async def _idle(self, retry: Retrying) -> None:
        """Nothing more is due: sleep until the earliest next poll, a NOTIFY, or stop."""
        self.work_ready.clear()
        if self.stopping.is_set():
            return
        cap = IDLE_POLL_LISTENING if self.listening else IDLE_POLL_FALLBACK
        try:
            next_due = await self.store.next_due_at()
        except StoreError as exc:
            await retry.wait_after(exc)
            return
        delay = cap
        if next_due is not None:
            delay = min(cap, max(0.0, (next_due - datetime.now(UTC)).total_seconds()))
        delay = max(delay, self.gate.blocked_for())
        self._next_wake = time.monotonic() + delay
        if delay > 0:
            await wait_set(self.work_ready, delay)
        self._next_wake = None

    def _due_soon(self, delay: float) -> None:
        """A job we just wrote is due in ``delay`` s: wake the dispatcher for it if it
        sleeps longer than that."""
        if self._next_wake is not None and time.monotonic() + delay < self._next_wake:
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, delay), self.work_ready.set)
            self._next_wake = time.monotonic() + delay

    def _answers_waiting(self) -> bool:
        """Writes are waiting out the database, or the answers held through it are not
        all written yet (a batch at a time). No claim until they are through, or jobs
        whose leases lapsed meanwhile would be claimed again, their held answers fenced
        off and upstream asked twice."""
        return self._writes_behind

    def _jobs_fed(self) -> None:
        self.work_ready.set()

    def _listening(self, listening: bool) -> None:
        self.listening = listening
        if not listening:
            self.work_ready.set()  # shorten the idle sleep to the polling fallback

    async def _top_up(self, room: int) -> list[Job]:
        """Jobs whose status check is due within a second, for a batch-status call with
        room (none while stopping, while answers wait to be written, or while the
        database is away: the call goes as is).

        The claim is shielded: cancelled at shutdown while it is on its way back, it may
        have committed on the server, and its jobs are handed back rather than left
        under a lease nobody works on."""
        if self.stopping.is_set() or self._answers_waiting():
            return []
        claim = asyncio.ensure_future(self.store.claim_soon(
            room, self.settings.lease_seconds, self.worker_id, TOP_UP_WITHIN))
        try:
            return await asyncio.shield(claim)
        except StoreError:
            return []
        except asyncio.CancelledError:
            with contextlib.suppress(StoreError):
                await self._release_quietly([ReleaseRow(job, 0.0) for job in await claim])
            raise

    def _patience(self, item: Claimed) -> float:
        """How long a request for this job may still wait for its slot: its lease must
        still cover the whole request when it leaves."""
        lease, timeout = self.settings.lease_seconds, self.settings.request_timeout
        lease_left = item.claimed_at + lease - time.monotonic()
        # A request ends at most a watchdog's tick after its timeout (harvester.deadlines).
        longest = timeout + overrun(timeout)
        return lease_left - longest - min(LEASE_MARGIN, (lease - timeout) / 2)

    # ------------------------------------------------------------------ workers

    async def _worker(self) -> None:
        while True:
            item = await self.local.get()
            if item is None:
                return
            job = item.job
            self.busy[job.job_id] = item
            try:
                patience = self._patience(item)
                if patience <= 0:
                    # Its lease no longer covers a request: another daemon may claim it.
                    await self.releases.put(ReleaseRow(job, 0.0))
                    continue
                try:
                    sent = await self.gate.admit(patience)
                except Released as released:
                    await self.releases.put(ReleaseRow(job, released.delay))
                    continue
                self.metrics.in_flight.inc()
                self.sent.add(job.job_id)
                try:
                    answer = await self.upstream.fetch_result(job.job_id)
                finally:
                    self.metrics.in_flight.dec()
                await self._handle(item, answer, sent)
            finally:
                self.busy.pop(job.job_id, None)
                self.sent.discard(job.job_id)
                self.room.set()

    async def _handle(self, item: Claimed, answer: Any, sent: float) -> None:
        job = item.job
        # batch-status itself missing (404, a web page) is already a sign of a wrong base
        # URL: until a result answers, no job is failed not_found because of it.
        trust = self.view.trust_not_found
        status = answer.status if isinstance(answer, Response) else None
        if status is not None:
            self.observer.dated(answer.date, self.gate.now() - sent)
        refusal = await self.controls.whose(sent) if status == 403 else "unknown"
        context = Context(seen=item.seen, status_usable=item.status_usable, refusal=refusal,
                          trust_not_found=trust, clock_floor=self.observer.clock.floor)
        decision = decide(answer, job, self.config, datetime.now(UTC), self.rand, context)
        pause = decision.pause_for if isinstance(decision, Hold) else None
        fault = isinstance(decision, Retry) and decision.fault
        changes = self.view.result_answered(answer, sent, fault=fault, pause_for=pause)
        if isinstance(decision, Land):
            # A control to check a run of 403s with: a landed job is polled no more, so
            # a GET of it never overlaps a poll nor comes before a Retry-After.
            self.gate.refusals.remember(job.job_id)
        self.observer.result_answered(job, answer, decision, changes)
        if pause is not None:
            self.observer.rate_limited()
        await self.outcomes.put(Outcome(job, decision, seen=item.seen, answered_at=time.time()))

    async def _releaser(self) -> None:
        """Jobs given back unpolled, written in batches (when a circuit opens or a pause
        begins, every worker hands its job back at once)."""
        while True:
            first = await self.releases.get()
            batch = await gather_batch(self.releases, first, WRITE_BATCH_MAX, WRITE_LINGER)
            try:
                await self._release_quietly(batch)
            finally:
                for _ in batch:
                    self.releases.task_done()
                self.room.set()

    # ------------------------------------------------------------------ writer

    async def _writer(self) -> None:
        retry = Retrying("write", self.metrics, self.rand, self.outage)
        while True:
            first = await self.outcomes.get()
            self._writer_holding = 1
            batch = await gather_batch(self.outcomes, first, WRITE_BATCH_MAX, WRITE_LINGER)
            self._writer_holding = len(batch)
            try:
                await self._flush(batch, retry)
            finally:
                self._writer_holding = 0
                for _ in batch:
                    self.outcomes.task_done()
                if self.outcomes.empty():
                    self._writes_behind = False
                self.room.set()

    async def _flush(self, batch: list[Outcome], retry: Retrying) -> None:
        report = await self._write(batch, retry)
        self._after_write(batch, report)
        if report.rejected:
            await self._write_refusals(batch, report, retry)

    async def _write(self, batch: list[Outcome], retry: Retrying) -> WriteReport:
        """Until the database has answered for every row: a row it refuses (a value it
        cannot hold) comes back in ``rejected``; any other fault is waited out, the
        answers kept in memory meanwhile (README "The database's faults")."""
        while True:
            try:
                started = time.perf_counter()
                report = await asyncio.shield(self.store.write(batch))
                self.metrics.write_seconds.observe(time.perf_counter() - started)
                self.metrics.write_size.observe(len(batch))
                retry.succeeded()
                return report
            except ValueRefused as exc:
                # A store that could not tell which row: every row of the batch.
                retry.succeeded()
                log.error("store.write_refused", jobs=len(batch), error=str(exc))
                return WriteReport(rejected={o.job.job_id: str(exc) for o in batch})
            except StoreError as exc:
                self._writes_behind = True
                await retry.wait_after(exc)

    async def _write_refusals(self, batch: list[Outcome], report: WriteReport,
                              retry: Retrying) -> None:
        """Outcomes the database refused become retries with backoff (bounded by
        MAX_AGE), written without the offending value; if even that is refused, the
        lease brings the job back."""
        now = datetime.now(UTC)
        retries = [Outcome(o.job, store_refused(o.job, report.rejected[o.job.job_id][:300],
                                                self.config, now, self.rand), polled=o.polled)
                   for o in batch if o.job.job_id in report.rejected]
        again = await self._write(retries, retry)
        if again.rejected:
            log.error("store.refusal_not_recorded", jobs=len(again.rejected),
                      error=next(iter(again.rejected.values())))
        self._after_write(retries, again)

    def _after_write(self, batch: list[Outcome], report: WriteReport) -> None:
        self.observer.written(batch, report)
        delays = [o.decision.delay for o in batch
                  if isinstance(o.decision, (Retry, Hold, Stuck))
                  and o.job.job_id not in report.rejected and o.job.job_id not in report.fenced]
        if delays:
            self._due_soon(min(delays))

    # ------------------------------------------------------------------ background

    def worker_state(self) -> WorkerState:
        paused = self.gate.paused_until - time.monotonic()
        rate = self.gate.rate
        return WorkerState(
            worker_id=self.worker_id, hostname=self.hostname, pid=os.getpid(),
            version=__version__,
            auth_circuit="open" if self.gate.auth.is_open else "closed",
            permission_circuit="open" if self.gate.permission.is_open else "closed",
            paused_until=datetime.now(UTC) + timedelta(seconds=paused) if paused > 0 else None,
            in_flight=len(self.sent),
            send_rate=None if rate.ramping and not math.isfinite(rate.ceiling) else rate.allowed,
            upstream_alarm="base_url_suspect" if self.view.base_url_suspect else None,
            upstream_clock_skew=self.observer.clock.skew)

    async def _heartbeat(self) -> None:
        """Publish this daemon's state for `harvester status` every few seconds (a
        write like any other: one the database refuses is part of the outage)."""
        retry = Retrying("heartbeat", self.metrics, self.rand, self.outage)
        while not self.stopping.is_set():
            pause = HEARTBEAT_EVERY
            try:
                await self.store.heartbeat(self.worker_state())
                retry.succeeded()
            except StoreError as exc:
                # At the outage's pace: readiness waits for this loop to get through too.
                pause = min(pause, retry.failed(exc))
            await wait_set(self.stopping, pause)

    async def _ticker(self) -> None:
        while not self.stopping.is_set():
            self.observer.tick()
            await wait_set(self.stopping, TICK_EVERY)


async def _cancel(task: asyncio.Task[None]) -> None:
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
