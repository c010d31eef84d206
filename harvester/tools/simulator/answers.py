"""What the simulated upstream answers, as data: a table from a plan step's kind
(:class:`~harvester.tools.simulator.plans.Step`) to its response, and the Retry-After
headers of its waits and pauses.

Pure: no sockets, no aiohttp. :mod:`harvester.tools.simulator.app` turns an
:class:`Answer` into an aiohttp response; the kinds that are not one fixed answer are
named here too (:data:`ROWS`, :data:`WAITS`, :data:`PAUSES`, :data:`STREAMED`), so that
every kind a script may name has exactly one place.
"""

from __future__ import annotations

import email.utils
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from harvester.tools.simulator.plans import result_row

EARLY_TOLERANCE: Final = 0.005
"""A poll this close before the moment it was given is not early."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A response as data: a JSON value (``data``), or ``text`` of ``content_type``."""

    status: int
    data: Any = None
    text: str | None = None
    content_type: str = "application/json"


FORBIDDEN: Final = Answer(403, {"error": "insufficient permissions", "missing": ["jobs:read"]})
NOT_FOUND: Final = Answer(404, {"error": "job not found"})

# The windows the control API opens, and the gateway, in front of every plan.
UNAUTHORIZED: Final = Answer(401, {"error": "invalid or missing API token"})
RATE_LIMITED: Final = Answer(429, {"error": "rate limited"})
OUTAGE_BODY: Final = {"error": "upstream outage"}
STATUS_OUTAGE_BODY: Final = {"error": "batch-status unavailable"}

FIXED: Final[Mapping[str, Answer]] = {
    "401": Answer(401, {"error": "invalid token"}),
    "403": FORBIDDEN,
    "404": NOT_FOUND,
    "500": Answer(500, {"error": "job is completed but no extraction_results row landed"}),
    "html": Answer(200, text="<!doctype html><html><body>dashboard</body></html>",
                   content_type="text/html"),
    "textplain": Answer(200, text="ok", content_type="text/plain"),
    "badjson": Answer(200, text='{"id": "oops", ', content_type="application/json"),
}
"""Kinds answered the same way every time."""


def _bad_field_row(job_id: UUID, seed: int) -> dict[str, Any]:
    row = result_row(job_id, seed)
    row["createdAt"] = 12345
    row["qualityComposite"] = "high"
    return row


ROWS: Final[Mapping[str, Callable[[UUID, int], dict[str, Any]]]] = {
    "200": result_row,
    "slow": result_row,  # after the step's delay (3 s when it names none)
    "mismatch": lambda job_id, seed: result_row(uuid.uuid4(), seed),  # another job's row
    "badfield": _bad_field_row,
}
"""Kinds answered 200 with a row (the job's own, or a wrong one)."""

WAITS: Final = frozenset({"202"})
"""Still indexing: 202 with the step's Retry-After in its style (or the mix's)."""
PAUSES: Final = frozenset({"429", "503"})
"""A pause for every client when the step names a delay (``429:2``); without one, a
plain :func:`simulated` status."""
STREAMED: Final = frozenset({"truncated", "reset", "huge"})
"""Answers that break the connection's contract: a body cut short, a reset, 50 MB."""

INDEXING_BODY: Final = {"indexingPending": True, "status": "extraction_done",
                        "message": "result is being indexed"}


def simulated(kind: str) -> Answer:
    """Any other kind: a bare status (``410``, ASCII digits: ``str.isdigit`` also takes
    ``¹``, which ``int`` refuses), or a 500 naming an unknown kind."""
    if kind.isascii() and kind.isdigit():
        return Answer(int(kind), {"error": f"simulated {kind}"})
    return Answer(500, {"error": f"unknown simulated step {kind}"})


def retry_after(seconds: float, style: str, default: float, skew: float = 0.0
                ) -> tuple[dict[str, str], float]:
    """The Retry-After header for a 202 (if its style has one) and the exact wait a
    polite client must observe: delta-seconds are whole, an HTTP-date names the next
    whole second (on upstream's clock, ``skew`` seconds ahead of the machine's), a
    body-only or silent 202 means the body value or the default."""
    if style in ("header", "date"):
        return pause_header(seconds, style, skew)
    if style == "body":
        return {}, seconds
    return {}, default


def pause_header(seconds: float, style: str, skew: float = 0.0) -> tuple[dict[str, str], float]:
    """``Retry-After`` as delta-seconds (whole, rounded up) or as an HTTP-date naming the
    next whole second at least ``seconds`` away on upstream's clock; and the exact wait."""
    if style == "date":
        upstream_now = time.time() + skew
        # The next whole second (a moment named again, for an early poll, is not pushed
        # to the second after it by the microseconds the clocks drift apart).
        when = math.ceil(upstream_now + seconds - 0.01)
        return ({"Retry-After": email.utils.formatdate(when, usegmt=True)},
                when - upstream_now)
    whole = max(0, math.ceil(seconds))
    return {"Retry-After": str(whole)}, float(whole)


def named_moment(value: str | None, skew: float = 0.0) -> float | None:
    """The machine's wall-clock moment a Retry-After HTTP-date names (None for
    delta-seconds): the date is on upstream's clock, ``skew`` seconds ahead."""
    if value is None or value.strip().isdigit():
        return None
    return email.utils.parsedate_to_datetime(value).timestamp() - skew
