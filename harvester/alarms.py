"""What the daemon believes about upstream's endpoints, learned from their answers.

Two pure state machines (time is an argument), tested directly:

- :class:`StatusEndpoint`: whether batch-status can be asked. While it fails (5xx,
  timeouts, 403 or 404 for the endpoint itself, garbage), jobs fall back to result
  polling with backoff (README "How a job is followed"), and one batch probes the
  endpoint again after 1 s, 2 s, 4 s … up to 5 min; the first good answer ends it.
- :class:`BaseUrlCheck`: whether ``HARVESTER_API_BASE_URL`` looks wrong. Every answer an
  HTML page (the dashboard host), or batch-status itself missing while every result is
  404 (a base URL with a path, so every path is doubled): the daemon says so once, fails
  readiness, and fails no job ``not_found`` until a real answer comes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from harvester.waits import backoff

STATUS_RETRY_BASE: Final = 1.0
STATUS_RETRY_CAP: Final = 300.0
STATUS_PROBE_TIMEOUT: Final = 30.0
"""While a probe batch is out, no other batch probes (a request never takes longer)."""
HTML_STREAK_ALARM: Final = 20
NOT_FOUND_STREAK_ALARM: Final = 10


@dataclass(slots=True)
class StatusEndpoint:
    state: Literal["ok", "failing"] = "ok"
    failures: int = 0
    retry_at: float = -math.inf
    last_error: str | None = None

    def usable(self, now: float) -> bool:
        """True if a batch may ask batch-status now. While failing, exactly one batch is
        let through per retry time (the probe); the others fall back to result GETs."""
        if self.state == "ok":
            return True
        if now >= self.retry_at:
            self.retry_at = now + STATUS_PROBE_TIMEOUT
            return True
        return False

    def on_ok(self) -> bool:
        """True when this ends a failure (worth a log line)."""
        recovered = self.state == "failing"
        self.state, self.failures, self.last_error = "ok", 0, None
        return recovered

    def on_failure(self, now: float, error: str) -> bool:
        """True when this starts a failure (worth a log line)."""
        started = self.state == "ok"
        self.state = "failing"
        self.failures += 1
        self.last_error = error
        self.retry_at = now + backoff(self.failures - 1, base=STATUS_RETRY_BASE,
                                      cap=STATUS_RETRY_CAP)
        return started


ResultKind = Literal["answer", "html", "not_found", "other"]
"""``answer``: a row or a 202 (the result endpoint is there); ``other``: faults, 500s…"""


@dataclass(slots=True)
class BaseUrlCheck:
    html_streak: int = 0
    not_found_streak: int = 0
    status_missing: bool = False
    suspect: bool = False
    reason: str | None = None

    def on_result(self, kind: ResultKind) -> bool:
        """A result GET answered; True when the alarm changes (raised or cleared)."""
        if kind == "answer":
            self.html_streak = self.not_found_streak = 0
            self.status_missing = False
            return self._settle()
        if kind == "html":
            self.html_streak += 1
        elif kind == "not_found":
            self.html_streak = 0
            self.not_found_streak += 1
        else:
            self.html_streak = 0
        return self._settle()

    def on_status(self, missing: bool) -> bool:
        """batch-status answered: ``missing`` when the endpoint itself is not there
        (404, or a web page); a good answer clears everything."""
        if missing:
            self.status_missing = True
        else:
            self.status_missing = False
            self.html_streak = self.not_found_streak = 0
        return self._settle()

    def _settle(self) -> bool:
        before = self.suspect
        if self.html_streak >= HTML_STREAK_ALARM:
            self.reason = ("every answer is an HTML page: HARVESTER_API_BASE_URL should be the "
                           "API host, not the dashboard")
        elif self.status_missing and self.not_found_streak >= NOT_FOUND_STREAK_ALARM:
            self.reason = ("batch-status is missing and every result is 404: "
                           "HARVESTER_API_BASE_URL should be the host alone (no /api/v1 path)")
        else:
            self.reason = None
        self.suspect = self.reason is not None
        return self.suspect != before
