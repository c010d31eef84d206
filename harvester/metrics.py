"""Prometheus metrics, through prometheus-client, in a registry per daemon.

Counters and histograms are this process's view (requests it made, jobs it landed,
how long its claims and writes took). Queue gauges are the database's view, read
through the partial index of open jobs at most every few seconds when scraped, so every
replica reports the same truth without each scrape costing a table scan; alert on
``max()`` of them across replicas, never ``sum()``. When the database is away the queue
gauges keep their last values, and ``harvester_queue_gauges_read_timestamp_seconds``
says how old they are, so a frozen backlog figure is never mistaken for a healthy one.
The process collectors (RSS, CPU, open fds) are registered here too because this
registry is not prometheus-client's global one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from harvester import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


class QueueGauges(Collector):
    """Gauges read from the database, cached for ``max_age`` seconds."""

    def __init__(self, read: Callable[[], Awaitable[dict[str, float]]], max_age: float = 5.0
                 ) -> None:
        self._read = read
        self._max_age = max_age
        self._values: dict[str, float] = {}
        # None until the first read: monotonic time may be small right after boot, so
        # "0.0" would make the first scrapes of a fresh machine skip the database.
        self._read_at: float | None = None
        self._read_wall = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._read_at is not None and time.monotonic() - self._read_at < self._max_age

    async def refresh(self) -> None:
        """Called by the /metrics handler before rendering; cheap when fresh.

        Concurrent scrapes (two Prometheus servers, a curl) share one database read."""
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return
            self._values = await self._read()
            self._read_at = time.monotonic()
            self._read_wall = time.time()

    def collect(self) -> Iterable[Metric]:
        queue = GaugeMetricFamily("harvester_queue_jobs",
                                  "Open jobs in the queue by state (from the database).",
                                  labels=["state"])
        for state in ("pending", "stuck"):
            queue.add_metric([state], self._values.get(state, 0.0))
        yield queue
        yield GaugeMetricFamily("harvester_due_jobs",
                                "Open jobs whose next poll time has passed (the due backlog).",
                                value=self._values.get("due", 0.0))
        yield GaugeMetricFamily("harvester_oldest_due_age_seconds",
                                "How long the oldest due job has been waiting.",
                                value=self._values.get("oldest_due_age", 0.0))
        yield GaugeMetricFamily("harvester_stuck_open",
                                "Open stuck records (jobs completed upstream without a row).",
                                value=self._values.get("stuck_open", 0.0))
        yield GaugeMetricFamily("harvester_oldest_stuck_age_seconds",
                                "How long the oldest open stuck record has been open (0: none).",
                                value=self._values.get("oldest_stuck_age", 0.0))
        yield GaugeMetricFamily("harvester_queue_gauges_read_timestamp_seconds",
                                "Unix time the queue gauges above were last read from the "
                                "database (0: never); they keep old values while it is away.",
                                value=self._read_wall)


class Metrics:
    """Every metric the daemon exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "harvester_requests", "Result polls sent upstream, by HTTP status class and outcome.",
            ["status_class", "outcome"], registry=r)
        self.polls = Counter("harvester_polls", "Result polls sent upstream.", registry=r)
        self.landed = Counter("harvester_landed", "Jobs landed in the mirror.", registry=r)
        self.failed = Counter("harvester_failed", "Jobs failed, by reason.", ["reason"], registry=r)
        self.stuck = Counter("harvester_stuck_transitions",
                             "Jobs that became stuck (3 consecutive 500s by default).", registry=r)
        self.batch_status = Counter("harvester_batch_status_requests",
                                    "batch-status calls, by result (ok, error).", ["result"],
                                    registry=r)
        self.batch_status_ids = Histogram("harvester_batch_status_ids",
                                          "Job IDs asked about per batch-status call.",
                                          buckets=(1, 2, 5, 10, 25, 50, 75, 100), registry=r)
        self.landing_lag = Histogram(
            "harvester_landing_lag_seconds",
            "Mirror write minus the moment the daemon learned the row was there (the first "
            "batch-status answer that said finished, or the GET that found the row).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300), registry=r)
        self.enqueue_to_landed = Histogram(
            "harvester_enqueue_to_landed_seconds",
            "Mirror write minus the job's enqueue (or requeue) time: for SLOs.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
            registry=r)
        self.send_rate = Gauge("harvester_send_rate_limit",
                               "Requests per second this daemon currently allows itself "
                               "(found by adapting to 429s; HARVESTER_MAX_RPS caps it).",
                               registry=r)
        self.rate_limited = Counter("harvester_rate_limited",
                                    "Answers asking to slow down (429, or 503 with Retry-After).",
                                    registry=r)
        self.paused_seconds = Counter("harvester_paused_seconds",
                                      "Seconds all dispatch was paused by Retry-After.",
                                      registry=r)
        self.permission_circuit_open = Gauge(
            "harvester_permission_circuit_open",
            "1 while upstream refuses (403) every request: the token lacks a permission.",
            registry=r)
        self.upstream_alarm = Gauge("harvester_upstream_alarm",
                                    "1 while the daemon distrusts upstream's answers, by alarm.",
                                    ["alarm"], registry=r)
        self.claim_seconds = Histogram("harvester_claim_seconds",
                                       "Time to claim one batch of due jobs.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.claim_size = Histogram("harvester_claim_batch_size", "Jobs per claim.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.write_seconds = Histogram("harvester_write_seconds",
                                       "Time to write one batch of outcomes.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.write_size = Histogram("harvester_write_batch_size", "Outcomes per write.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.fenced = Counter("harvester_fenced_writes",
                              "Outcomes dropped because the job's lease was taken over.",
                              registry=r)
        self.in_flight = Gauge("harvester_in_flight_requests", "Result polls in flight.",
                               registry=r)
        self.auth_circuit_open = Gauge("harvester_auth_circuit_open",
                                       "1 while upstream rejects the API token (401).",
                                       registry=r)
        self.paused_until = Gauge("harvester_paused_until_timestamp_seconds",
                                  "Unix time until which upstream asked all dispatch to pause.",
                                  registry=r)
        self.throttle_spacing = Gauge("harvester_throttle_spacing_seconds",
                                      "Spacing between requests while upstream is faulting.",
                                      registry=r)
        self.store_errors = Counter("harvester_store_unavailable",
                                    "Database operations that failed because it was away.",
                                    registry=r)
        self.info = Info("harvester_build", "Version of the running daemon.", registry=r)
        self.info.info({"version": __version__})
        # Known label values exist from the start, so rate() sees the first increment.
        for result in ("ok", "error"):
            self.batch_status.labels(result)
        self.upstream_alarm.labels("base_url_suspect").set(0)
        # RSS, CPU, fds, GC: what sizing a memory limit or spotting a leak needs.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.queue: QueueGauges | None = None

    def attach_queue_gauges(self, read: Callable[[], Awaitable[dict[str, float]]]) -> QueueGauges:
        self.queue = QueueGauges(read)
        self.registry.register(self.queue)
        return self.queue

    def render(self) -> bytes:
        return generate_latest(self.registry)
