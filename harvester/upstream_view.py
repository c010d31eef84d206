"""What the daemon believes about upstream, in one place.

One owner for every belief a decision reads back: the :class:`~harvester.pacing.Gate`
(pauses, the send rate, the fault throttle, the auth circuit, the 403 refusals and the
permission circuit), whether batch-status can be asked
(:class:`~harvester.alarms.StatusEndpoint`) and whether the base URL looks wrong
(:class:`~harvester.alarms.BaseUrlCheck`). The engine and the status follower hand it
every answer; it updates what it believes and returns what changed as
:class:`~harvester.pacing.Transition` values, which the observer only logs and counts
(README "How upstream answers are handled", "How a job is followed"). Pure: time comes
from the gate's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harvester.alarms import BaseUrlCheck, ResultKind, StatusEndpoint
from harvester.pacing import Gate, Transition
from harvester.policy import Answer, Response, looks_like_html
from harvester.status_policy import StatusCall


class UpstreamView:
    """The gate and the two endpoint alarms, learning from answers together."""

    def __init__(self, *, max_rps: float, probe_interval: float,
                 on_refused: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gate = Gate(max_rps=max_rps, probe_interval=probe_interval,
                         on_refused=on_refused, clock=clock)
        self.endpoint = StatusEndpoint()
        self.base_url = BaseUrlCheck()

    # ------------------------------------------------------------ what decisions read

    def status_usable(self, now: float) -> bool:
        """A job may be followed through batch-status now (while it fails, one batch
        per retry time probes it)."""
        return self.endpoint.usable(now)

    @property
    def status_ok(self) -> bool:
        """batch-status answers (not failing): a job polled by result may go back to it."""
        return self.endpoint.state == "ok"

    @property
    def trust_not_found(self) -> bool:
        """A 404 may fail a job: not while the base URL is suspect, nor while
        batch-status itself is missing (already a sign of a wrong base URL)."""
        return not (self.base_url.suspect or self.base_url.status_missing)

    @property
    def base_url_suspect(self) -> bool:
        return self.base_url.suspect

    # ------------------------------------------------------------ learning

    def result_answered(self, answer: Answer, sent: float, *, fault: bool,
                        pause_for: float | None) -> list[Transition]:
        """A result GET that left at ``sent`` came back with ``answer``."""
        status = answer.status if isinstance(answer, Response) else None
        changes = self.gate.observe(status, sent, fault=fault, pause_for=pause_for)
        kind: ResultKind = "other"
        if isinstance(answer, Response):
            kind = (("html" if looks_like_html(answer) else "answer") if status == 200 else
                    "answer" if status == 202 else "not_found" if status == 404 else "other")
        if self.base_url.on_result(kind):
            changes.append(self._base_url_transition())
        return changes

    def status_answered(self, status: int | None, sent: float, call: StatusCall, *,
                        jobs: int) -> list[Transition]:
        """A batch-status call about ``jobs`` jobs that left at ``sent`` came back; the
        policy judged it ``call``."""
        fault = call.kind == "failed" and (status is None or status >= 500)
        changes = self.gate.observe(status, sent, fault=fault, pause_for=call.pause_for,
                                    request="status")
        if call.kind == "ok" and self.endpoint.on_ok():
            changes.append(Transition("upstream.batch_status_recovered", {}))
        if call.kind in ("missing", "failed") \
                and self.endpoint.on_failure(self.gate.now(), call.error or call.kind):
            changes.append(Transition("upstream.batch_status_failing",
                                      {"error": call.error, "jobs": jobs}))
        if call.kind in ("ok", "missing") and self.base_url.on_status(call.kind == "missing"):
            changes.append(self._base_url_transition())
        return changes

    def _base_url_transition(self) -> Transition:
        if self.base_url.suspect:
            return Transition("upstream.base_url_suspect", {"hint": self.base_url.reason})
        return Transition("upstream.base_url_ok", {})
