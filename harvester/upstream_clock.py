"""Upstream's clock, as its Date headers show it: how far it is from ours.

Beside the observer, and read by one decision. Two figures come from the same answers:
the skew estimate, for people (the metric ``harvester_upstream_clock_skew_seconds``, one
log line when it passes a few seconds and one when it comes back, a column of
``harvester status``; a large skew usually means one of the two hosts has lost its time
source), and the *floor*, a bound the skew is never below, which the policy uses to read
an HTTP-date closer than the answer's own whole-second Date allows (README "How upstream
answers are handled").

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
STEPPED: Final = 1.5
"""A reading this far below the floor cannot come from the same two clocks (Date's
rounding and a slow answer account for a second and a little): one of them was
stepped, and the floor starts again from the answers after it."""
OURS_STEPPED: Final = 0.05
"""Our wall clock moved this much against the monotonic one between two answers: it
was stepped (NTP slews by parts per million), and the floor starts again."""


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

    The lower end of each interval, ``Date − received``, is never above the skew (Date
    rounds down and was stamped before we received it), so neither is their maximum
    over the same answers, :attr:`floor`; with answers at every phase of the second it
    comes within a round trip of the skew. A stepped clock would make an old reading
    too high: a step of ours (against the monotonic clock) or a reading far below the
    floor empties it.
    """

    window: int = WINDOW
    notable: bool = False
    """The last transition said the clocks disagree."""
    _samples: deque[float] = field(default_factory=deque)
    _lows: deque[float] = field(default_factory=deque)
    _floor: float | None = None
    _steady: float | None = None
    _last_text: str | None = None
    _last_date: float = 0.0

    def observe(self, date: str | None, sent: float, received: float,
                steady: float | None = None) -> None:
        """One answer: its Date header text and our wall-clock times of sending and
        receiving; ``steady``, if given, is our wall clock minus the monotonic one at
        that moment (how a step of ours shows). Cheap for the common case: Date
        changes once a second."""
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
        low = self._last_date - received
        ours_stepped = (steady is not None and self._steady is not None
                        and abs(steady - self._steady) > OURS_STEPPED)
        self._steady = steady
        if ours_stepped or (self._floor is not None and low < self._floor - STEPPED):
            self._lows.clear()
            self._floor = None
        self._lows.append(low)
        if self._floor is None or low > self._floor:
            self._floor = low
        if len(self._lows) > self.window and self._lows.popleft() == self._floor:
            self._floor = max(self._lows)

    @property
    def floor(self) -> float | None:
        """Seconds upstream's clock is at least ahead of ours (negative: at most behind),
        from the last :data:`WINDOW` answers; None before the first."""
        return self._floor

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
