"""A circuit breaker for upstream's verdicts on the token: the auth circuit (401) and the
permission circuit (403 to a request known to be readable).

Beside :mod:`harvester.pacing`, which holds both (its :class:`~harvester.pacing.Gate`
asks them before every request), and :mod:`harvester.refusals`, which decides when the
permission circuit opens. Pure: time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(slots=True)
class Circuit:
    """Opens after ``threshold`` consecutive failures, lets one probe through per probe
    spacing while open, closes on the first success. Transitions return True so they are
    logged once.

    The spacing starts at ``first_probe`` (default: ``probe_interval``) and doubles after
    each probe up to ``probe_interval``: a circuit opened on evidence that may pass in a
    moment (the permission circuit) is probed after 1, 2, 4 … seconds, one opened on a
    plain 401 every ``probe_interval``."""

    probe_interval: float
    threshold: int = 1
    first_probe: float | None = None
    state: Literal["closed", "open"] = "closed"
    failures: int = 0
    opened_at: float | None = None
    next_probe_at: float = 0.0
    spacing: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def on_failure(self, now: float) -> bool:
        self.failures += 1
        if self.state == "open" or self.failures < self.threshold:
            return False
        self.state = "open"
        self.opened_at = now
        self.spacing = min(self.first_probe or self.probe_interval, self.probe_interval)
        self.next_probe_at = now + self.spacing
        return True

    def on_success(self, now: float) -> bool:
        self.failures = 0
        if self.state == "closed":
            return False
        self.state = "closed"
        self.opened_at = None
        return True

    def try_probe(self, now: float) -> bool:
        """While open: True for exactly one caller per probe spacing."""
        if self.state == "closed":
            return True
        if now >= self.next_probe_at:
            self.spacing = min(2.0 * self.spacing, self.probe_interval)
            self.next_probe_at = now + self.spacing
            return True
        return False
