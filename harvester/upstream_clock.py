"""Upstream's clock, as its Date headers show it: how far it is from ours.

Off the road itself, beside the observer: nothing the daemon decides reads this. The
policy reads each HTTP-date against the Date header of the same answer (README "How
upstream answers are handled"), which is exact whatever the skew; this estimate is for
people (the metric ``harvester_upstream_clock_skew_seconds``, one log line when it
passes a few seconds and one when it comes back, a column of ``harvester status``). A
large skew usually means one of the two hosts has lost its time source.

Pure, like :mod:`harvester.pacing`: times are arguments.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from harvester.waits import http_date

WINDOW: Final = 64
"""Answers the estimate is the median of."""
NOTABLE: Final = 3.0
"""Seconds of skew (either way) worth a log line: HTTP-dates have a resolution of one
second and answers take time to arrive, so a second or two says nothing."""
AGREES: Final = 1.5
"""Back under this many seconds, the clocks agree again (hysteresis: an estimate near
NOTABLE does not log a line each time it crosses it)."""


@dataclass(slots=True)
class UpstreamClock:
    """The skew of upstream's clock: upstream's minus ours, in seconds (positive: ahead).

    One answer bounds it: upstream stamped ``Date`` (its second, rounded down) at some
    instant between our sending and our receiving, so the skew lies within
    ``[Date − received, Date + 1 − sent]``. Each answer gives the middle of that
    interval, off by at most half a second plus half the round trip; the estimate is the
    median over the last :data:`WINDOW` answers, so the rounding (uniform over the
    second) and a slow answer or two wash out, and one answer from a stray clock (a
    proxy, a server of its own) does not move it.
    """

    window: int = WINDOW
    notable: bool = False
    """The last transition said the clocks disagree."""
    _samples: deque[float] = field(default_factory=deque)
    _last_text: str | None = None
    _last_date: float = 0.0

    def observe(self, date: str | None, sent: float, received: float) -> None:
        """One answer: its Date header text and our wall-clock times of sending and
        receiving. Cheap for the common case: Date changes once a second."""
        if date is None:
            return
        if date != self._last_text:
            parsed = http_date(date)
            if parsed is None:
                return
            self._last_text, self._last_date = date, parsed.timestamp()
        self._samples.append(self._last_date + 0.5 - (sent + received) / 2.0)
        if len(self._samples) > self.window:
            self._samples.popleft()

    @property
    def skew(self) -> float | None:
        """The estimate in seconds (None: no answer with a Date yet)."""
        if not self._samples:
            return None
        return float(statistics.median(self._samples))

    def transition(self) -> Literal["skewed", "agrees"] | None:
        """``skewed`` when the estimate first passes :data:`NOTABLE` seconds either way,
        ``agrees`` when it is back under :data:`AGREES`; otherwise None."""
        skew = self.skew
        if skew is None:
            return None
        if not self.notable and abs(skew) >= NOTABLE:
            self.notable = True
            return "skewed"
        if self.notable and abs(skew) < AGREES:
            self.notable = False
            return "agrees"
        return None
