"""What the daemon tells people: metrics, logs and alarms, kept out of the engine's loops.

The engine and the status follower report what happened (an answer, a batch-status
call, a write, a transition of the gate); this module turns it into Prometheus metrics
and structured log lines with stable event names (README "Operating"). Logs stay
proportionate during incidents: repeated per-job warnings (a million jobs failing the
same way) are logged individually a few times, then counted, and summarised once per
:data:`DIGEST_EVERY` seconds with a few sample job IDs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from harvester.logs import get_logger
from harvester.metrics import Metrics, status_class
from harvester.pacing import Gate, Transition
from harvester.policy import (
    Answer,
    Decision,
    Fail,
    Hold,
    Job,
    Land,
    Response,
    Retry,
    Stuck,
    TransportFailure,
)
from harvester.ports import Outcome, WriteReport
from harvester.status_policy import ControlAnswer, StatusCall
from harvester.upstream_clock import UpstreamClock

log = get_logger("harvester.engine")

DIGEST_EVERY: Final = 30.0
DIGEST_SHOWN: Final = 5
"""Per event and window: this many lines in full, then only counted."""
DIGEST_SAMPLES: Final = 5


@dataclass(slots=True)
class _Tally:
    shown: int = 0
    suppressed: int = 0
    samples: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


class WarningDigest:
    """Per-job warnings, aggregated: the first few of each event per window in full, the
    rest as one summary line per event at the end of the window."""

    def __init__(self, every: float = DIGEST_EVERY, shown: int = DIGEST_SHOWN,
                 clock: Any = time.monotonic) -> None:
        self.every = every
        self.shown = shown
        self._clock = clock
        self._window_start = clock()
        self._tallies: dict[str, _Tally] = {}

    def warn(self, event: str, job_id: str, kind: str, **fields: Any) -> None:
        """``kind`` groups the summary (a failure reason, an error text)."""
        tally = self._tallies.setdefault(event, _Tally())
        if tally.shown < self.shown:
            tally.shown += 1
            log.warning(event, job_id=job_id, **fields)
            return
        tally.suppressed += 1
        tally.reasons[kind[:120]] += 1
        if len(tally.samples) < DIGEST_SAMPLES:
            tally.samples.append(job_id)

    def flush(self, force: bool = False) -> None:
        """Log the summaries if the window is over (or ``force``), then start a new one."""
        now = self._clock()
        if not force and now - self._window_start < self.every:
            return
        for event, tally in sorted(self._tallies.items()):
            if tally.suppressed:
                log.warning("log.summary", summarised=event, more=tally.suppressed,
                            window_seconds=round(now - self._window_start),
                            sample_job_ids=tally.samples,
                            by_reason=dict(tally.reasons.most_common(5)))
        self._tallies.clear()
        self._window_start = now


def outcome_label(decision: Decision) -> str:
    if isinstance(decision, Land):
        return "landed"
    if isinstance(decision, Stuck):
        return "stuck"
    if isinstance(decision, Fail):
        return "failed"
    if isinstance(decision, Hold):
        return "held"
    if decision.step == "status" and decision.status == 404:
        return "not_found"
    return "fault" if decision.fault else ("invalid" if decision.status == 200 else "pending")


class Observer:
    """Metrics, logs and alarms for one daemon."""

    def __init__(self, metrics: Metrics, gate: Gate, api_base_url: str) -> None:
        """``gate`` is read, never changed: its circuits' probe intervals and the gauges
        that drift (the send rate, the time paused, the throttle's spacing)."""
        self.metrics = metrics
        self.gate = gate
        self.api_base_url = api_base_url
        self.digest = WarningDigest()
        self.clock = UpstreamClock()
        self._request_counters: dict[tuple[str, str], Any] = {}
        self._paused_counted = 0.0
        # One debug line per landed job is worth its cost only when someone reads it:
        # structlog's lazy logger builds a bound logger for every call, filtered or not.
        self._log_landings = log.bind().is_enabled_for(logging.DEBUG)

    # ------------------------------------------------------------ upstream answers

    def result_answered(self, job: Job, answer: Answer, decision: Decision,
                        changes: Sequence[Transition]) -> None:
        status = answer.status if isinstance(answer, Response) else None
        self.metrics.polls.inc()
        key = (status_class(status), outcome_label(decision))
        counter = self._request_counters.get(key)
        if counter is None:  # prometheus-client's labels() lookup is costly per request
            counter = self._request_counters[key] = self.metrics.requests.labels(*key)
        counter.inc()
        if changes:
            self.transitions(changes, job_id=str(job.job_id))
        if isinstance(decision, Retry) and (isinstance(answer, TransportFailure)
                                            or decision.status == 200):
            self.digest.warn("job.poll_error", str(job.job_id), decision.error or "error",
                             status=status, error=decision.error, polls=job.polls + 1)

    def dated(self, date: str | None, elapsed: float) -> None:
        """An answer's Date header, ``elapsed`` seconds after its request left: a reading
        of upstream's clock (:mod:`harvester.upstream_clock`)."""
        received = time.time()
        self.clock.observe(date, received - elapsed, received, received - time.monotonic())

    def status_answered(self, ids: int, call: StatusCall, changes: Iterable[Transition]
                        ) -> None:
        self.metrics.batch_status.labels("ok" if call.kind == "ok" else "error").inc()
        self.metrics.batch_status_ids.observe(ids)
        self.transitions(changes)

    def transitions(self, changes: Iterable[Transition], **context: str) -> None:
        """Log what changed for the whole daemon, once per change."""
        for change in changes:
            detail = {**change.detail, **context}
            if change.event == "auth.circuit_open":
                log.error(change.event, probe_every=self.gate.auth.probe_interval,
                          hint="check HARVESTER_API_TOKEN", **detail)
                self.metrics.auth_circuit_open.set(1)
            elif change.event == "auth.circuit_closed":
                log.info(change.event, **detail)
                self.metrics.auth_circuit_open.set(0)
            elif change.event == "permission.circuit_open":
                log.error(change.event, probe_every=self.gate.permission.probe_interval,
                          hint="the API token lacks a permission (jobs:read); nothing is failed "
                               "meanwhile", **detail)
                self.metrics.permission_circuit_open.set(1)
            elif change.event == "permission.circuit_closed":
                log.info(change.event, **detail)
                self.metrics.permission_circuit_open.set(0)
            elif change.event == "upstream.paused":
                log.warning(change.event, **detail)
                self.metrics.paused_until.set(time.time() + float(change.detail["seconds"] or 0))
            elif change.event == "rate.limited":
                log.warning("upstream.rate_limited", note="sending slower; one line per episode",
                            **detail)
            elif change.event == "rate.recovered":
                log.info("upstream.rate_recovered", **detail)
            elif change.event == "upstream.throttled":
                log.warning(change.event, reason="sustained upstream faults", **detail)
                self.metrics.throttle_spacing.set(self.gate.throttle.spacing)
            elif change.event == "upstream.batch_status_recovered":
                log.info(change.event, note="following jobs by status again")
            elif change.event == "upstream.batch_status_failing":
                log.warning(change.event, **detail,
                            fallback="polling results with backoff until it answers again")
            elif change.event == "upstream.base_url_suspect":
                log.error(change.event, api_base_url=self.api_base_url, **detail,
                          effect="readiness fails; no job is failed not_found meanwhile")
                self.metrics.upstream_alarm.labels("base_url_suspect").set(1)
            elif change.event == "upstream.base_url_ok":
                log.info(change.event, api_base_url=self.api_base_url)
                self.metrics.upstream_alarm.labels("base_url_suspect").set(0)
            else:  # pragma: no cover - every transition the gate makes is listed above
                log.info(change.event, **detail)

    def controlled(self, control: ControlAnswer, changes: Sequence[Transition]) -> None:
        """A control request (whose are the 403s?) came back."""
        self.metrics.permission_checks.labels(control.result).inc()
        if control.pause_for is not None:
            self.rate_limited()
        self.transitions(changes)

    def rate_limited(self) -> None:
        self.metrics.rate_limited.inc()

    def refusal_heard(self) -> None:
        self.metrics.refusals_heard.inc()

    def tick(self) -> None:
        """Periodic: gauges that drift (the send rate, the time paused), the digest."""
        self.metrics.send_rate_limit.set(self.gate.rate.allowed)
        self.metrics.throttle_spacing.set(self.gate.throttle.spacing)
        paused = self.gate.paused_total
        if paused > self._paused_counted:
            self.metrics.paused_seconds.inc(paused - self._paused_counted)
            self._paused_counted = paused
        self._clock_tick()
        self.digest.flush()

    def _clock_tick(self) -> None:
        skew = self.clock.skew
        if skew is None:
            return
        self.metrics.upstream_clock_skew.set(skew)
        change = self.clock.transition()
        if change == "skewed":
            log.warning("upstream.clock_skewed", skew_seconds=round(skew, 1),
                        upstream="ahead" if skew > 0 else "behind",
                        note="upstream's HTTP-dates are read against its own Date header, so "
                             "waits stay as asked; a skew this large usually means one of the "
                             "two hosts lost its time source (NTP)")
        elif change == "agrees":
            log.info("upstream.clock_agrees", skew_seconds=round(skew, 1))

    # ------------------------------------------------------------ writes

    def written(self, batch: Sequence[Outcome], report: WriteReport) -> None:
        """After a batch write: what landed, failed, got stuck; lags; fences; refusals.

        The landing lag counts from the first status answer that said the job finished,
        else from the GET that found the row."""
        now = datetime.now(UTC)
        wall = now.timestamp()
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
            polls = outcome.job.polls + int(outcome.polled)
            if isinstance(d, Land):
                self.metrics.landed.inc()
                origin = outcome.job.finished_seen_at
                learned = origin.timestamp() if origin else outcome.answered_at
                if learned is not None:
                    self.metrics.landing_lag.observe(max(0.0, wall - learned))
                self.metrics.enqueue_to_landed.observe(
                    max(0.0, (now - outcome.job.age_origin).total_seconds()))
                if self._log_landings:
                    log.debug("job.landed", job_id=str(job_id), polls=polls)
            elif isinstance(d, Fail):
                self.metrics.failed.labels(d.reason).inc()
                self.digest.warn("job.failed", str(job_id), d.reason, reason=d.reason,
                                 status=d.status, error=d.error, polls=polls)
            elif isinstance(d, Stuck) and d.newly:
                self.metrics.stuck.inc()
                self.digest.warn("job.stuck", str(job_id), "stuck", status=d.status,
                                 consecutive_500s=d.consecutive_500s, polls=polls,
                                 recheck_in=d.delay)

