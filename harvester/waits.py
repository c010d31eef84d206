"""Numbers for waiting: the one backoff, jitter, and upstream's Retry-After read as
seconds (delta-seconds, an HTTP-date against the answer's own Date, or the body's
``retryAfterSeconds``). Pure: ``now`` is an argument (README "How upstream answers are
handled")."""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC, datetime
from typing import Any, Final

JITTER: Final = 0.05
"""Positive jitter on upstream-given delays: never earlier than asked, at most 5 % later.

Up to 10 % would be allowed; 5 % already spreads a herd of jobs that got the same 202 at
the same second (0.25 s over a 5 s Retry-After) while keeping the landing lag after a
Retry-After well inside half a second."""


def clamp(value: float, low: float, high: float) -> float:
    if math.isnan(value):
        return low
    return min(max(value, low), high)


def backoff(attempt: int, *, base: float, cap: float, rand: float | None = None) -> float:
    """The one exponential backoff: ``base × 2^attempt`` capped at ``cap``.

    With ``rand`` (uniform in [0, 1)) it is full jitter between ``base`` and that ceiling;
    without, the ceiling itself. Safe for any attempt: the exponent is bounded before it
    is computed, so attempt 10,000 (or a negative one) never overflows.
    """
    exponent = min(max(attempt, 0), 62)
    ceiling = max(base, min(cap, base * float(2**exponent)))
    if rand is None:
        return ceiling
    return base + (ceiling - base) * clamp(rand, 0.0, 1.0)


def jittered(seconds: float, rand: float) -> float:
    """``seconds`` stretched by up to :data:`JITTER`, never shortened."""
    return seconds * (1.0 + JITTER * clamp(rand, 0.0, 1.0))


_DELTA_SECONDS = re.compile(r"(\d+)(?:\.(\d*))?", re.ASCII)
_HUGE = 1e12
_HUGE_DIGITS = 12
"""Whole seconds with more significant digits than this are at least ``_HUGE``."""


def parse_retry_after(value: str | None, now: datetime, date: str | None = None,
                      floor: float | None = None) -> float | None:
    """Seconds to wait according to a Retry-After header value, or None if unusable.

    delta-seconds (``5``; a decimal such as ``1.5`` or ``5.`` is tolerated), or an
    HTTP-date. An HTTP-date names a moment on upstream's clock, so the wait is that
    moment minus the answer's own Date header (``date``, upstream's clock when it
    answered; RFC 9110 §10.2.3 with §6.6.1); only without a usable Date is it read
    against ``now``, our clock. Date is the answer's second rounded down and the answer
    took time to reach us, so the wait it gives is never shorter than upstream meant;
    reading the date against our clock instead would be off by the clocks' difference,
    in either direction (README "How upstream answers are handled"). ``floor``, if
    known, is how far upstream's clock is at least ahead of ours
    (:attr:`~harvester.upstream_clock.UpstreamClock.floor`): the date read against
    ``now`` plus it is never shorter than meant either, and takes back most of the
    second Date's rounding may add; it may shorten the Date reading by less than a
    second, never more (a floor a stepped clock left wrong cannot make a wait much
    shorter than the answer's own Date says). A date at or before Date means "now".
    Negative numbers and garbage are unusable. A delta with more digits than any sane
    delay is still a request to wait, so it is returned as a huge number for the caller
    to clamp: were it "unusable", the caller would fall back to a default and poll
    earlier than upstream asked.
    """
    if value is None:
        return None
    text = value.strip()
    delta = _DELTA_SECONDS.fullmatch(text)
    if delta is not None:
        whole, fraction = delta.group(1).lstrip("0") or "0", delta.group(2) or ""
        if len(whole) > _HUGE_DIGITS:
            return _HUGE
        # Only the leading digits matter; float() never sees an absurdly long string.
        return min(float(f"{whole}.{fraction[:9] or 0}"), _HUGE)
    when = http_date(text)
    if when is None:
        return None
    ours = (when - now).total_seconds() - (floor or 0.0)
    origin = http_date(date)
    if origin is None:
        return clamp(ours, 0.0, _HUGE)
    dated = (when - origin).total_seconds()
    if floor is not None:
        dated = max(dated - 1.0, min(dated, ours))
    return clamp(dated, 0.0, _HUGE)


def http_date(value: str | None) -> datetime | None:
    """An HTTP-date (IMF-fixdate, or the obsolete forms email.utils reads) as an aware
    datetime, or None for anything else."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def body_retry_after(document: Any) -> float | None:
    """``retryAfterSeconds`` from a JSON body, if it is a sane non-negative number."""
    if not isinstance(document, dict):
        return None
    raw = document.get("retryAfterSeconds")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    seconds = float(raw)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _HUGE)
