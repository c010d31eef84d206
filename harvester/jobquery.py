"""Which page of jobs an operator asks for: one parser for ``harvester jobs`` and
``GET /v1/jobs``.

Beside the road, at its two operator surfaces: the command line and the admin API take
the same question (a state, failure reasons, a page size, the cursor of the previous
page) and hold it to the same rules here. A broken rule is a :class:`BadJobQuery`
naming the rule; each surface words it its own way (README "Commands" and "Looking at
jobs and requeueing them": ``--limit: 1 to 1000 …`` on the command line, ``limit must be
a whole number from 1 to 1000`` in the API's JSON error).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from harvester.metrics import FAILED_REASONS
from harvester.ports import JobCursor

LISTABLE_STATES: Final = ("pending", "stuck", "landed", "failed")
"""Each in the order of its own index (harvester.store.operators lists them so)."""
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
_HTTP_REASON: Final = re.compile(r"http_[1-5]\d\d")

Rule = Literal["reason", "state", "reason_state", "limit", "after"]


def is_failed_reason(text: str) -> bool:
    """One of the known reasons, or ``http_<status>``: what ``failed_reason`` holds."""
    return text in FAILED_REASONS or bool(_HTTP_REASON.fullmatch(text))


class BadJobQuery(ValueError):
    """A job query broke ``rule``; ``value`` is what was given (the surface decides
    whether to echo it)."""

    def __init__(self, rule: Rule, value: str = "") -> None:
        super().__init__(rule)
        self.rule: Rule = rule
        self.value = value


def parse_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    """Failure reasons, each checked, repeats dropped (requeue takes them too)."""
    reasons = list(reasons)
    for reason in reasons:
        if not is_failed_reason(reason):
            raise BadJobQuery("reason", reason)
    return tuple(dict.fromkeys(reasons))


@dataclass(frozen=True, slots=True)
class JobQuery:
    """One page of jobs: a state (reasons imply ``failed``), at most ``limit`` of them,
    after ``after``."""

    state: str
    reasons: tuple[str, ...] = ()
    limit: int = DEFAULT_PAGE
    after: JobCursor | None = None

    @classmethod
    def parse(cls, state: str | None, reasons: Sequence[str] = (),
              limit: int | str = DEFAULT_PAGE, after: str | None = None) -> JobQuery:
        """The query, or :class:`BadJobQuery` for the first rule it breaks, in this
        order: reasons, state, reasons with a state other than failed, limit, cursor."""
        checked = parse_reasons(reasons)
        state = state or ("failed" if checked else None)
        if state not in LISTABLE_STATES:
            raise BadJobQuery("state", state or "")
        if checked and state != "failed":
            raise BadJobQuery("reason_state")
        try:
            count = int(limit)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_PAGE:
            raise BadJobQuery("limit", str(limit))
        cursor = None
        if after is not None:
            try:
                cursor = JobCursor.parse(after)
            except ValueError:
                raise BadJobQuery("after", after) from None
        return cls(state, checked, count, cursor)
