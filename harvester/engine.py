"""The engine: claim → poll → decide → write, with bounded concurrency.

It owns every task it starts. A dispatcher claims due jobs only when workers have free
slots; ``CONCURRENCY`` workers ask the :class:`~harvester.pacing.Gate`, poll upstream and
hand the answer to the pure policy; a writer turns decisions into one transaction per
batch; a resolver asks batch-status about 404s in groups of up to 100; a listener
keeps a LISTEN connection (and reconnects it) so jobs fed by SQL are picked up at once.
If a vital task dies the daemon stops with a clear log. On SIGTERM it stops claiming,
gives back jobs it has not started, lets requests in flight finish within the grace
period, flushes its writes and returns. A lost database is waited out, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, TypeVar
from uuid import UUID

import asyncpg

from harvester import __version__
from harvester.api import BATCH_STATUS_LIMIT
from harvester.errors import StoreError, StoreUnavailable, UpstreamError
from harvester.logs import get_logger
from harvester.metrics import Metrics, status_class
from harvester.pacing import Gate, Released
from harvester.policy import (
    Answer,
    CheckUpstream,
    Decision,
    Fail,
    Hold,
    Job,
    Land,
    PolicyConfig,
    Response,
    Retry,
    Stuck,
    TransportFailure,
    decide,
    decide_not_found,
    looks_like_html,
    store_refused,
)
from harvester.settings import Settings
from harvester.store import CHANNEL_JOBS, Outcome, ReleaseRow, WriteReport, listen

log = get_logger("harvester.engine")
T = TypeVar("T")

CLAIM_BATCH_MAX: Final = 500
WRITE_BATCH_MAX: Final = 500
WRITE_LINGER: Final = 0.02
RESOLVE_LINGER: Final = 0.05
IDLE_POLL_FALLBACK: Final = 1.0
IDLE_POLL_LISTENING: Final = 5.0
HEARTBEAT_EVERY: Final = 5.0
HTML_STREAK_ALARM: Final = 20


class UpstreamPort(Protocol):
    """What the engine needs of upstream (implemented by harvester.upstream.Upstream)."""

    async def fetch_result(self, job_id: UUID) -> Answer: ...

    async def batch_status(self, job_ids: Sequence[UUID]) -> Mapping[UUID, str]: ...


class StorePort(Protocol):
    """What the engine needs of the database (implemented by harvester.store.Store)."""

    async def claim(self, limit: int, lease_seconds: float, worker_id: str) -> list[Job]: ...

    async def next_due_at(self) -> datetime | None: ...

    async def write(self, outcomes: Sequence[Outcome]) -> WriteReport: ...

    async def release(self, rows: Sequence[ReleaseRow]) -> set[UUID]: ...

    async def heartbeat(self, worker_id: str, hostname: str, pid: int, version: str,
                        auth_circuit: str, paused_until: datetime | None,
                        in_flight: int) -> None: ...

    async def forget_worker(self, worker_id: str) -> None: ...


@dataclass(slots=True)
class Claimed:
    job: Job
    claimed_at: float


class Retrying:
    """Exponential wait for a store that is away; logs once per outage."""

    def __init__(self, what: str, metrics: Metrics) -> None:
        self.what = what
        self.metrics = metrics
        self.failures = 0

    async def failed(self, exc: StoreError) -> None:
        self.failures += 1
        self.metrics.store_errors.inc()
        delay = min(10.0, 0.2 * 2 ** min(self.failures - 1, 10)) * (0.5 + random.random() / 2)  # noqa: S311
        if self.failures == 1:
            log.warning("store.unavailable", during=self.what, error=str(exc))
        else:
            log.debug("store.still_unavailable", during=self.what, failures=self.failures,
                      retry_in=round(delay, 2))
        await asyncio.sleep(delay)

    def succeeded(self) -> None:
        if self.failures:
            log.info("store.recovered", during=self.what, after_failures=self.failures)
        self.failures = 0


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
        dsn: str | None = None,
        worker_id: str | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self.dsn = dsn
        self.config = PolicyConfig.from_settings(settings)
        self.rand = rand
        self.hostname = socket.gethostname()
        self.worker_id = worker_id or f"{self.hostname}:{os.getpid()}:{random.getrandbits(24):06x}"
        self.gate = Gate(max_rps=settings.max_rps, probe_interval=settings.auth_probe_interval)
        concurrency = settings.concurrency
        self.concurrency = concurrency
        self.min_claim = max(1, min(concurrency // 4, 64))
        self.local: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.outcomes: asyncio.Queue[Outcome] = asyncio.Queue(maxsize=max(4 * concurrency, 1024))
        self.not_found: asyncio.Queue[Claimed] = asyncio.Queue(maxsize=max(2 * concurrency, 512))
        self.releases: asyncio.Queue[ReleaseRow] = asyncio.Queue()
        self.busy: dict[UUID, Job] = {}
        self.sent: set[UUID] = set()
        """Jobs whose request has gone out (a subset of busy)."""
        self.work_ready = asyncio.Event()
        self.slot_freed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.listening = False
        self.started = asyncio.Event()
        self.last_tick = time.monotonic()
        self._html_streak = 0
        self._html_alarm = False
        self._next_wake: float | None = None
        self._writer_holding = 0
        self._request_counters: dict[tuple[str, str], Any] = {}
        self._resolving: list[Claimed] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon.stopping", in_flight=len(self.busy), queued=self.local.qsize())
        self.stopping.set()
        self.work_ready.set()
        self.slot_freed.set()

    @property
    def ready(self) -> bool:
        return self.started.is_set() and not self.gate.circuit.is_open and not self.stopping.is_set()

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
        writer = self._spawn("writer", self._writer())
        resolver = self._spawn("resolver", self._resolver())
        releaser = self._spawn("releaser", self._releaser())
        dispatcher = self._spawn("dispatcher", self._dispatcher())
        heartbeat = self._spawn("heartbeat", self._heartbeat())
        listener = self._spawn("listener", self._listener()) if self.dsn else None
        self.started.set()
        log.info("daemon.started", worker_id=self.worker_id, concurrency=self.concurrency,
                 api_base_url=self.settings.api_base_url, max_rps=self.settings.max_rps)
        await self.stopping.wait()
        await self._shutdown(workers, writer, resolver, releaser, dispatcher, heartbeat, listener)
        if self._fatal is not None:
            raise self._fatal

    async def _shutdown(self, workers: list[asyncio.Task[None]], writer: asyncio.Task[None],
                        resolver: asyncio.Task[None], releaser: asyncio.Task[None],
                        dispatcher: asyncio.Task[None],
                        heartbeat: asyncio.Task[None], listener: asyncio.Task[None] | None
                        ) -> None:
        grace = self.settings.shutdown_grace
        deadline = time.monotonic() + grace
        # The dispatcher stops by itself at its next step. It is not cancelled while a
        # claim is on its way back: that claim has committed on the server, and its jobs
        # must reach the local queue to be handed back below, not wait out their lease.
        await asyncio.wait({dispatcher}, timeout=max(1.0, min(5.0, grace)))
        await _cancel(dispatcher)
        # Jobs claimed but not started go straight back.
        unstarted: list[ReleaseRow] = []
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
        cut = [ReleaseRow(job, self.config.default_retry_after, polled=True)
               if job.job_id in self.sent else ReleaseRow(job, 0.0)
               for job in self.busy.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        released += await self._release_quietly(cut)
        # Hand-backs still queued are written; 404s waiting for batch-status go back too.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.releases.join(), timeout=5.0)
        await _cancel(releaser)
        await _cancel(resolver)
        waiting = [ReleaseRow(c.job, 0.0, polled=True, status=404) for c in self._resolving]
        while not self.not_found.empty():
            waiting.append(ReleaseRow(self.not_found.get_nowait().job, 0.0, polled=True,
                                      status=404))
        released += await self._release_quietly(waiting)
        # Everything decided is written (shielded from our own cancellation).
        flush_deadline = max(deadline, time.monotonic() + 5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain_outcomes(), timeout=flush_deadline - time.monotonic())
        unflushed = self.outcomes.qsize()
        await _cancel(writer)
        await _cancel(heartbeat)
        if listener is not None:
            await _cancel(listener)
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
            log.warning("release.failed", jobs=len(rows), error=str(exc),
                        note="their leases lapse and they come back by themselves")
            return 0

    async def _drain_outcomes(self) -> None:
        await self.outcomes.join()

    # ------------------------------------------------------------------ dispatcher

    def _free_slots(self) -> int:
        return self.concurrency - len(self.busy) - self.local.qsize()

    async def _dispatcher(self) -> None:
        retry = Retrying("claim", self.metrics)
        while not self.stopping.is_set():
            blocked = self.gate.blocked_for()
            if blocked > 0:
                await self._sleep(min(blocked, 1.0), self.stopping)
                continue
            free = self._free_slots()
            if self.settings.max_rps > 0:
                # Claim no more than can be sent soon, so no lease ticks away in a queue.
                horizon = max(1, int(self.settings.max_rps * 2) - self.local.qsize())
                free = min(free, horizon)
            if free <= 0 or (free < self.min_claim and self.local.qsize() >= self.min_claim):
                self.slot_freed.clear()
                if not self.stopping.is_set():
                    await self.slot_freed.wait()
                continue
            if self.gate.circuit.is_open:
                free = 1  # the probe
            try:
                started = time.perf_counter()
                jobs = await self.store.claim(min(free, CLAIM_BATCH_MAX),
                                              self.settings.lease_seconds, self.worker_id)
                self.metrics.claim_seconds.observe(time.perf_counter() - started)
            except StoreUnavailable as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()
            now = time.monotonic()
            if jobs:
                self.metrics.claim_size.observe(len(jobs))
                for job in jobs:
                    self.local.put_nowait(Claimed(job, now))
            if len(jobs) < free:
                await self._idle(retry)

    async def _idle(self, retry: Retrying) -> None:
        """Nothing more is due: sleep until the earliest next poll, a NOTIFY, or stop."""
        self.work_ready.clear()
        if self.stopping.is_set():
            return
        cap = IDLE_POLL_LISTENING if self.listening else IDLE_POLL_FALLBACK
        try:
            next_due = await self.store.next_due_at()
        except StoreUnavailable as exc:
            await retry.failed(exc)
            return
        delay = cap
        if next_due is not None:
            delay = min(cap, max(0.0, (next_due - datetime.now(UTC)).total_seconds()))
        if self.gate.circuit.is_open:
            delay = max(delay, self.gate.blocked_for())
        self._next_wake = time.monotonic() + delay
        if delay > 0:
            await self._sleep(delay, self.work_ready)
        self._next_wake = None

    def _due_soon(self, delay: float) -> None:
        """A job we just wrote is due in ``delay`` s: wake the dispatcher for it if it
        sleeps longer than that."""
        if self._next_wake is not None and time.monotonic() + delay < self._next_wake:
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, delay), self.work_ready.set)
            self._next_wake = time.monotonic() + delay

    def on_jobs_fed(self) -> None:
        self.work_ready.set()

    @staticmethod
    async def _sleep(seconds: float, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=seconds)

    # ------------------------------------------------------------------ workers

    async def _worker(self) -> None:
        # A job must start while its lease still covers a whole request; later, another
        # worker may already have claimed it, so it is handed back unpolled.
        lease_margin = self.settings.lease_seconds - self.settings.request_timeout
        while True:
            item = await self.local.get()
            if item is None:
                return
            job = item.job
            self.busy[job.job_id] = job
            try:
                if time.monotonic() - item.claimed_at > lease_margin:
                    await self._hand_back(ReleaseRow(job, 0.0))
                    continue
                try:
                    await self.gate.admit()
                except Released as released:
                    await self._hand_back(ReleaseRow(job, released.delay))
                    continue
                self.metrics.in_flight.inc()
                self.sent.add(job.job_id)
                try:
                    answer = await self.upstream.fetch_result(job.job_id)
                finally:
                    self.metrics.in_flight.dec()
                await self._handle(item, answer)
            finally:
                self.busy.pop(job.job_id, None)
                self.sent.discard(job.job_id)
                self.slot_freed.set()

    async def _hand_back(self, row: ReleaseRow) -> None:
        """Give a job back unpolled; the releaser writes these in batches (when the auth
        circuit opens or a pause begins, every worker hands its job back at once)."""
        await self.releases.put(row)

    async def _releaser(self) -> None:
        while True:
            first = await self.releases.get()
            batch = await gather_batch(self.releases, first, WRITE_BATCH_MAX, WRITE_LINGER)
            try:
                await self._release_quietly(batch)
            finally:
                for _ in batch:
                    self.releases.task_done()

    async def _handle(self, item: Claimed, answer: Answer) -> None:
        job = item.job
        now = datetime.now(UTC)
        decision = decide(answer, job, self.config, now, self.rand)
        self._observe(job, answer, decision)
        if isinstance(decision, CheckUpstream):
            await self.not_found.put(item)
            return
        await self.outcomes.put(Outcome(job, decision))

    def _observe(self, job: Job, answer: Answer, decision: Decision) -> None:
        """Metrics, global effects and the logs that belong to the answer itself."""
        status = answer.status if isinstance(answer, Response) else None
        self.metrics.polls.inc()
        key = (status_class(status), _outcome_label(decision))
        counter = self._request_counters.get(key)
        if counter is None:  # prometheus-client's labels() lookup is costly per request
            counter = self._request_counters[key] = self.metrics.requests.labels(*key)
        counter.inc()
        mono = time.monotonic()
        circuit = self.gate.circuit
        if isinstance(decision, Hold) and decision.auth_failed:
            if circuit.on_unauthorized(mono):
                log.error("auth.circuit_open", status=401, job_id=str(job.job_id),
                          probe_every=self.settings.auth_probe_interval,
                          hint="check HARVESTER_API_TOKEN and its jobs:read permission")
                self.metrics.auth_circuit_open.set(1)
        elif status is not None and circuit.on_authorized(mono):
            log.info("auth.circuit_closed", status=status, job_id=str(job.job_id))
            self.metrics.auth_circuit_open.set(0)
        if isinstance(decision, Hold) and decision.pause_for and self.gate.pause(decision.pause_for):
            log.warning("upstream.paused", status=decision.status, seconds=round(decision.pause_for, 2))
            self.metrics.paused_until.set(time.time() + decision.pause_for)
        fault = isinstance(decision, Retry) and decision.fault
        throttle = self.gate.throttle
        level = throttle.level
        if throttle.observe(fault, mono):
            log.warning("upstream.throttled", spacing=throttle.spacing,
                        reason="sustained upstream faults")
        if throttle.level != level:
            self.metrics.throttle_spacing.set(throttle.spacing)
        self._check_html(answer)
        if isinstance(decision, Retry) and (isinstance(answer, TransportFailure)
                                            or decision.status == 200):
            log.warning("job.poll_error", job_id=str(job.job_id), status=status,
                        error=decision.error, polls=job.polls + 1)

    def _check_html(self, answer: Answer) -> None:
        if isinstance(answer, Response) and looks_like_html(answer):
            self._html_streak += 1
            if self._html_streak >= HTML_STREAK_ALARM and not self._html_alarm:
                self._html_alarm = True
                log.error("upstream.base_url_suspect", api_base_url=self.settings.api_base_url,
                          streak=self._html_streak,
                          hint="every answer is an HTML page: HARVESTER_API_BASE_URL looks wrong "
                               "(it should be the API host, not the dashboard)")
        elif isinstance(answer, Response):
            self._html_streak = 0
            self._html_alarm = False

    # ------------------------------------------------------------------ 404 resolver

    async def _resolver(self) -> None:
        while True:
            first = await self.not_found.get()
            batch = await gather_batch(self.not_found, first, BATCH_STATUS_LIMIT, RESOLVE_LINGER)
            self._resolving = batch
            try:
                await self._resolve(batch)
            finally:
                self._resolving = []

    async def _resolve(self, batch: list[Claimed]) -> None:
        ids = [c.job.job_id for c in batch]
        asked = True
        statuses: Mapping[UUID, str] = {}
        await self.gate.wait_turn()
        try:
            statuses = await self.upstream.batch_status(ids)
            self.metrics.batch_status.labels("ok").inc()
        except UpstreamError as exc:
            asked = False
            self.metrics.batch_status.labels("error").inc()
            log.warning("upstream.batch_status_failed", jobs=len(ids), error=str(exc))
        now = datetime.now(UTC)
        for claimed in batch:
            job = claimed.job
            decision = decide_not_found(job, statuses.get(job.job_id), asked, self.config, now,
                                        self.rand)
            if isinstance(decision, CheckUpstream):  # pragma: no cover - policy never loops
                continue
            await self.outcomes.put(Outcome(job, decision))

    # ------------------------------------------------------------------ writer

    async def _writer(self) -> None:
        retry = Retrying("write", self.metrics)
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

    async def _flush(self, batch: list[Outcome], retry: Retrying) -> None:
        while True:
            try:
                started = time.perf_counter()
                report = await asyncio.shield(self.store.write(batch))
                self.metrics.write_seconds.observe(time.perf_counter() - started)
                self.metrics.write_size.observe(len(batch))
                retry.succeeded()
                break
            except StoreUnavailable as exc:
                await retry.failed(exc)
            except StoreError as exc:
                # The batch and every single row were refused: log, give the jobs back.
                log.error("store.write_refused", jobs=len(batch), error=str(exc))
                report = WriteReport(rejected={o.job.job_id: str(exc) for o in batch})
                break
        self._after_write(batch, report)
        if report.rejected:
            await self._write_refusals(batch, report)

    async def _write_refusals(self, batch: list[Outcome], report: WriteReport) -> None:
        """Outcomes the database refused become retries with backoff (bounded by
        MAX_AGE), written without the offending value; if even that fails, the lease
        brings the job back."""
        now = datetime.now(UTC)
        retries: list[Outcome] = []
        for outcome in batch:
            error = report.rejected.get(outcome.job.job_id)
            if error is None:
                continue
            decision = store_refused(outcome.job, error[:300], self.config, now, self.rand)
            if isinstance(decision, (Retry, Fail)):
                retries.append(Outcome(outcome.job, decision))
        try:
            again = await self.store.write(retries)
        except StoreError as exc:
            log.error("store.refusal_not_recorded", jobs=len(retries), error=str(exc))
            return
        self._after_write(retries, again)

    def _after_write(self, batch: list[Outcome], report: WriteReport) -> None:
        soonest: float | None = None
        for outcome in batch:
            job_id = outcome.job.job_id
            d = outcome.decision
            if job_id in report.rejected:
                log.error("job.write_refused", job_id=str(job_id), error=report.rejected[job_id])
                continue
            if job_id in report.fenced:
                self.metrics.fenced.inc()
                log.info("job.fenced", job_id=str(job_id), lease_seq=outcome.job.lease_seq,
                         note="lease taken over by another claim; this late answer is dropped")
                continue
            polls = outcome.job.polls + 1
            if isinstance(d, Land):
                self.metrics.landed.inc()
                log.debug("job.landed", job_id=str(job_id), polls=polls)
            elif isinstance(d, Fail):
                self.metrics.failed.labels(d.reason).inc()
                log.warning("job.failed", job_id=str(job_id), reason=d.reason, status=d.status,
                            error=d.error, polls=polls)
            elif isinstance(d, Stuck):
                if d.newly:
                    self.metrics.stuck.inc()
                    log.warning("job.stuck", job_id=str(job_id), status=d.status,
                                consecutive_500s=d.consecutive_500s, polls=polls,
                                recheck_in=d.delay)
                soonest = d.delay if soonest is None else min(soonest, d.delay)
            elif isinstance(d, (Retry, Hold)):
                soonest = d.delay if soonest is None else min(soonest, d.delay)
        if soonest is not None:
            self._due_soon(soonest)

    # ------------------------------------------------------------------ listener

    async def _listener(self) -> None:
        assert self.dsn is not None
        failures = 0
        while not self.stopping.is_set():
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await listen(self.dsn, [CHANNEL_JOBS],
                                    lambda _ch, _payload: self.on_jobs_fed(), lost.set)
                if failures:
                    log.info("listen.reconnected", after_failures=failures)
                else:
                    log.info("listen.started", channel=CHANNEL_JOBS)
                failures = 0
                self.listening = True
                self.work_ready.set()  # anything fed while we were deaf
                while not (lost.is_set() or self.stopping.is_set()):
                    await self._sleep(10.0, lost)
                    if not lost.is_set() and not self.stopping.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5.0)
            except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("listen.lost", error=f"{type(exc).__name__}: {exc}",
                                fallback=f"polling every {IDLE_POLL_FALLBACK:g}s")
            finally:
                self.listening = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=2.0)
            if lost.is_set() and failures == 0:
                failures = 1
                log.warning("listen.lost", error="connection closed",
                            fallback=f"polling every {IDLE_POLL_FALLBACK:g}s")
            await self._sleep(min(30.0, 0.5 * 2 ** min(failures, 6)), self.stopping)

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        retry_logged = False
        while not self.stopping.is_set():
            self.last_tick = time.monotonic()
            paused = self.gate.paused_until - time.monotonic()
            paused_until = datetime.now(UTC) + timedelta(seconds=paused) if paused > 0 else None
            try:
                await self.store.heartbeat(
                    self.worker_id, self.hostname, os.getpid(), __version__,
                    "open" if self.gate.circuit.is_open else "closed", paused_until,
                    len(self.busy))
                retry_logged = False
            except StoreUnavailable as exc:
                if not retry_logged:
                    log.debug("heartbeat.failed", error=str(exc))
                    retry_logged = True
            await self._sleep(HEARTBEAT_EVERY, self.stopping)


async def gather_batch(queue: asyncio.Queue[T], first: T, limit: int, linger: float) -> list[T]:
    """``first`` plus whatever else is queued or arrives within ``linger`` seconds, up to
    ``limit`` items: one database or upstream round trip for many jobs."""
    batch = [first]
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


def _outcome_label(decision: Decision) -> str:
    if isinstance(decision, Land):
        return "landed"
    if isinstance(decision, Stuck):
        return "stuck"
    if isinstance(decision, Fail):
        return "failed"
    if isinstance(decision, Hold):
        return "held"
    if isinstance(decision, CheckUpstream):
        return "not_found"
    return "fault" if decision.fault else ("invalid" if decision.status == 200 else "pending")


async def _cancel(task: asyncio.Task[None]) -> None:
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
