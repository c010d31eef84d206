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
# Landing lag: seconds after upstream had the row (targets: p50 <= 1.5 s, p99 <= 4 s).
_LAG_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                900.0, 3600.0)
# Enqueue to landed spans the whole crawl (minutes to hours, days at worst): SLO buckets.
_SLO_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
                14400.0, 28800.0, 86400.0, 259200.0, 604800.0)
# Why a job fails (harvester.jobs.failed_reason), besides the dynamic http_<status>.
FAILED_REASONS = ("forbidden", "upstream_failed", "not_found", "expired")
# Upstream job statuses (README "How a job is followed") as the queue gauges label them:
# not_asked = batch-status not asked yet (NULL), unknown = batch-status does not know the
# ID, other = anything new.
UPSTREAM_STATUSES = ("not_asked", "unknown", "pending", "running", "waiting_retry", "extracting",
                     "extraction_done", "completed", "failed", "other")
OPEN_STATES = ("pending", "stuck")
# Tables whose size the queue gauges report and the retention purge deletes from.
TABLES = ("jobs", "extraction_results")
UPSTREAM_ALARMS = ("base_url_suspect",)


def upstream_status_label(value: str | None) -> str:
    """A bounded label for ``harvester.jobs.upstream_status``."""
    if value is None:
        return "not_asked"
    return value if value in UPSTREAM_STATUSES else "other"


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
        for state in OPEN_STATES:
            queue.add_metric([state], self._values.get(state, 0.0))
        yield queue
        by_upstream = GaugeMetricFamily(
            "harvester_queue_jobs_by_upstream_status",
            "Open jobs by state and by what batch-status last said of them (not_asked: not "
            "asked yet; unknown: batch-status does not know the ID).",
            labels=["state", "upstream_status"])
        for state in OPEN_STATES:
            for status in UPSTREAM_STATUSES:
                by_upstream.add_metric([state, status],
                                       self._values.get(f"upstream:{state}:{status}", 0.0))
        yield by_upstream
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
        yield GaugeMetricFamily(
            "harvester_oldest_finished_age_seconds",
            "How long ago the oldest landed or failed job in the queue finished (0: none); "
            "retention keeps it below HARVESTER_FINISHED_RETENTION plus the purge's pace.",
            value=self._values.get("oldest_finished_age", 0.0))
        rows = GaugeMetricFamily(
            "harvester_table_rows",
            "Rows in the queue (jobs) and the mirror (extraction_results): counted while "
            "the table's heap is at most 8 MiB, above that PostgreSQL's live-row statistics "
            "(pg_stat_user_tables.n_live_tup), right before any ANALYZE.",
            labels=["table"])
        size = GaugeMetricFamily(
            "harvester_table_bytes",
            "Disk used by the queue and the mirror, indexes and TOAST included "
            "(pg_total_relation_size).", labels=["table"])
        for table in TABLES:
            rows.add_metric([table], self._values.get(f"table_rows:{table}", 0.0))
            size.add_metric([table], self._values.get(f"table_bytes:{table}", 0.0))
        yield rows
        yield size
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
        # Fed by the engine's status following and pacing (issues 10 and 11). Declared
        # here with the rest so that the dashboard and the alert rules in deploy/ are
        # checked against what the daemon really exports.
        self.landing_lag = Histogram(
            "harvester_landing_lag_seconds",
            "Mirror write minus the first batch-status answer that said finished (or the GET "
            "that found the row).", buckets=_LAG_BUCKETS, registry=r)
        self.enqueue_to_landed = Histogram(
            "harvester_enqueue_to_landed_seconds",
            "Mirror write minus enqueue (or requeue): the latency users see, for SLOs.",
            buckets=_SLO_BUCKETS, registry=r)
        self.batch_status_ids = Histogram("harvester_batch_status_ids",
                                          "Job IDs per batch-status call.",
                                          buckets=(1, 2, 5, 10, 20, 50, 75, 100), registry=r)
        self.send_rate_limit = Gauge("harvester_send_rate_limit",
                                     "Requests per second this daemon currently allows itself.",
                                     registry=r)
        self.rate_limited = Counter("harvester_rate_limited",
                                    "Answers 429, or 503 with Retry-After (upstream's rate limit).",
                                    registry=r)
        self.refusals_heard = Counter(
            "harvester_refusals_heard",
            "Send-rate cuts made because another daemon on the database was refused.",
            registry=r)
        self.paused_seconds = Counter("harvester_paused_seconds",
                                      "Seconds all dispatch was paused by upstream's Retry-After.",
                                      registry=r)
        self.permission_circuit_open = Gauge(
            "harvester_permission_circuit_open",
            "1 while upstream refuses the token a permission (403) for every job.", registry=r)
        self.permission_checks = Counter(
            "harvester_permission_checks",
            "Control requests asking whose a run of 403s is (a GET of a job that landed "
            "lately), by what they showed: readable, refused, inconclusive.",
            ["result"], registry=r)
        self.upstream_clock_skew = Gauge(
            "harvester_upstream_clock_skew_seconds",
            "Upstream's clock minus this daemon's, in seconds (positive: upstream is ahead), "
            "from the Date headers of the last 64 answers (median); 0 until one came.",
            registry=r)
        self.upstream_alarm = Gauge("harvester_upstream_alarm",
                                    "1 while the daemon distrusts upstream for this reason "
                                    "(base_url_suspect: every answer is a web page).",
                                    ["alarm"], registry=r)
        # The retention purge (README "Retention"): per replica, like every counter.
        self.retention_deleted = Counter(
            "harvester_retention_deleted",
            "Rows the retention purge deleted, by table (jobs: finished queue rows; "
            "extraction_results: mirror rows).", ["table"], registry=r)
        self.retention_failures = Counter(
            "harvester_retention_failures",
            "Purge batches the database refused, by table (an outage counts in "
            "harvester_store_unavailable instead).", ["table"], registry=r)
        self.finished_retention = Gauge(
            "harvester_finished_retention_seconds",
            "This daemon's HARVESTER_FINISHED_RETENTION (0: finished queue rows are kept).",
            registry=r)
        self.result_retention = Gauge(
            "harvester_result_retention_seconds",
            "This daemon's HARVESTER_RESULT_RETENTION (0: the mirror is kept for ever).",
            registry=r)
        # Known label values exist from the start, so rate() sees the first increment and
        # a dashboard shows 0 rather than "no data".
        for result in ("ok", "error"):
            self.batch_status.labels(result)
        for reason in FAILED_REASONS:
            self.failed.labels(reason)
        for alarm in UPSTREAM_ALARMS:
            self.upstream_alarm.labels(alarm)
        for result in ("readable", "refused", "inconclusive"):
            self.permission_checks.labels(result)
        for table in TABLES:
            self.retention_deleted.labels(table)
            self.retention_failures.labels(table)
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
