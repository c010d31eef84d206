"""How often a job that is not finished upstream is checked through batch-status.

README "How a job is followed". Two curves, both clamped to
``[HARVESTER_STATUS_MIN_INTERVAL, HARVESTER_STATUS_MAX_INTERVAL]``:

- **following** (pending, running, unknown): ``4 s + age / 32``. Every fed job is checked
  at once; then every 4 s while it is young, 8 s after two minutes, 23 s after ten, the
  maximum (60 s) after half an hour. A job of minutes is found within seconds of
  finishing; a job of hours never more than the maximum late; and the number of checks a
  job sees grows with the logarithm of its running time, not linearly.
- **indexing** (``extraction_done``): the row is seconds away, so every 2 s, on the even
  seconds of the clock, shared by all jobs that are indexing (one call asks about all of
  them); growing by a second for every 4 s the job stays there, so a stalled indexer
  does not turn into a steady stream of checks.

Why these numbers: upstream indexes for about 4 s between ``extraction_done`` and
``completed``. Checked at most ~8 s apart, a job is seen in that window at least half of
the time and then lands within a second of ``completed``; otherwise it is found at most
``interval - 4`` s after. The bench's lifecycle phase (jobs finishing 2–120 s after being
fed) prints what this costs and buys.

Due times are then snapped up to a shared grid (a power of two no larger than an
eighth of the interval): jobs fed at different moments but checked at similar
intervals come due at the same instants and share one batch-status call, at a cost of
at most 12.5 % of the interval. Batching is what makes a check cost a hundredth of a
request.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

FOLLOW_FIRST: Final = 4.0
"""Seconds between the first checks of a job (after the one at feed time)."""
FOLLOW_GROWTH: Final = 32.0
"""The interval grows by one second per this many seconds the job has been followed."""
INDEXING_EVERY: Final = 2.0
"""In ``extraction_done``: checked on this grid of the clock, at least the minimum apart."""
INDEXING_GROWTH: Final = 4.0
"""In ``extraction_done``: one more second per this many seconds spent there."""
GRID_FRACTION: Final = 8.0
GRID_MIN: Final = 0.5


def _clamp(seconds: float, config: Any) -> float:
    low: float = config.status_min_interval
    high: float = max(low, config.status_max_interval)
    return min(max(seconds, low), high)


def follow_interval(age: float, config: Any, now: datetime) -> float:
    """Seconds until the next check of a job followed for ``age`` seconds."""
    raw = max(FOLLOW_FIRST, config.status_min_interval) + max(0.0, age) / FOLLOW_GROWTH
    return aligned(_clamp(raw, config), now)


def indexing_interval(in_state: float, config: Any, now: datetime) -> float:
    """Seconds until the next check of a job ``in_state`` seconds into extraction_done."""
    raw = _clamp(INDEXING_EVERY + max(0.0, in_state) / INDEXING_GROWTH, config)
    if raw > 2 * INDEXING_EVERY:
        return aligned(raw, now)
    # The next even grid point at least the minimum away: every job that is indexing is
    # asked about at the same instants, in one call.
    low: float = config.status_min_interval
    earliest = now.timestamp() + low
    # max(): epoch seconds carry ~1e-7 s of rounding; the minimum is a promise.
    return max(low, math.ceil(earliest / INDEXING_EVERY) * INDEXING_EVERY - now.timestamp())


def grid(interval: float) -> float:
    """The grid step for an interval: a power of two ≤ interval/8, or 0 (no grid)."""
    target = interval / GRID_FRACTION
    if not math.isfinite(target) or target < GRID_MIN:
        return 0.0
    return float(2 ** math.floor(math.log2(target)))


def aligned(interval: float, now: datetime) -> float:
    """``interval`` lengthened (never shortened) so that ``now + interval`` falls on the
    grid shared by every daemon (multiples of the step since the Unix epoch)."""
    step = grid(interval)
    if step == 0.0:
        return interval
    due = now.timestamp() + interval
    snapped = math.ceil(due / step) * step
    return max(interval, interval + (snapped - due))
