"""Whose is a 403, the job's or the token's (README "How upstream answers are handled").

Between the policy and the gate. A result GET refused 403 means either that this job is
not the token's to read (another organisation's job, say) or that the token lost
``jobs:read``, which refuses every job. Upstream says the same either way
("insufficient permissions", missing ``jobs:read``), so the daemon tells them apart by
what else it sees, never by the next due job (in a batch of foreign IDs, likely another
refused one):

- A refusal is about its job when a result request sent at most :data:`SLACK` before it
  was answered readably (a row, a 202, a 404): the token could read then. While jobs
  are being answered, that is every refusal: no request is spent on the question.
- Otherwise the question goes to upstream as a *control*: a GET of a job that landed
  lately (a memory of :data:`MEMORY` IDs; a landed job is polled no more, so the GET
  never overlaps a poll of it nor comes before a Retry-After), sent after the refusal.
  Readable: the refusals are about their jobs. Refused too: the token lost the
  permission; the permission circuit opens (nothing is failed, readiness fails), and
  the same controls are its probes, after 1, 2, 4 … s up to the probe interval.
- A daemon that has landed nothing yet has nothing to check with: a run of
  :data:`BLIND_RUN` refusals (those on their way together counting once) opens the
  circuit all the same (a token without the
  permission must not be answered a 403 for every job in the queue), and its probes
  are the next due jobs. That is a guess, so refusals meanwhile still count towards
  ``forbidden`` (never the third) and back off: the refused jobs go to the back of the
  line, and the probes find the others.

Not batch-status: another endpoint, which a token may be allowed while results are not
(or the other way round), so its answer proves nothing about reading results.

The engine carries this out: the control goes through the gate like any request (send
rate, pauses) and is not a poll of any job. Pure: times are arguments.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, Literal
from uuid import UUID

from harvester.circuit import Circuit
from harvester.policy import ControlResult, Refusal

MEMORY: Final = 8
"""Job IDs that landed lately, kept to check a refusal with."""
SLACK: Final = 1.0
"""A readable answer to a request sent at most this long before a refused one shows the
token could read. Each job's refusals are at least a second apart (backoff), so when the
token really loses the permission, no job collects its third refusal within this."""
BLIND_RUN: Final = 5
"""Refusals in a row, with nothing to check with, that open the permission circuit: the
first of the run, and those of requests sent after it came back (the requests already
on their way with it were sent in the same breath, a batch of foreign IDs claimed
together; the next ones are other jobs)."""
FIRST_PROBE: Final = 1.0
"""The permission circuit's first probe, doubling up to HARVESTER_AUTH_PROBE_INTERVAL."""

Change = Literal["opened", "closed"]


@dataclass(slots=True)
class Refusals:
    """The judge of 403s; it opens and closes ``circuit`` (the permission circuit)."""

    circuit: Circuit
    readable_sent: float = -math.inf
    """Departure of the latest result request answered readably."""
    refused_sent: float = -math.inf
    """Departure of the request whose refusal opened the circuit: only a readable answer
    to a request sent after it closes the circuit (one already on its way proves nothing)."""
    run: int = 0
    """Refusals since the last readable answer that no verdict covered (BLIND_RUN)."""
    run_began: float = math.inf
    """When the first refusal of the run came back."""
    run_first_sent: float = math.inf
    """When the request of the first refusal of the run left."""
    asked: bool = False
    """A refusal waits for a control."""
    in_flight: UUID | None = None
    """The control on its way, if any (one at a time)."""
    because: str = ""
    """Why the circuit last opened, for its log line."""
    blind: bool = False
    """The circuit was opened by a run of refusals, not by a refused control: a guess."""
    known: OrderedDict[UUID, None] = field(default_factory=OrderedDict)

    @property
    def can_check(self) -> bool:
        """A control can be made: some job landed lately."""
        return bool(self.known)

    def verdict(self, sent_at: float) -> Refusal:
        """Whose is a 403 to a request that left at ``sent_at``, as far as is known now."""
        if self.circuit.is_open:
            return "unknown" if self.blind else "token"
        if self.readable_sent >= sent_at - SLACK:
            return "job"
        return "unknown"

    def remember(self, job_id: UUID) -> None:
        """This job landed: its result was served, a control to check with."""
        self.known[job_id] = None
        self.known.move_to_end(job_id)
        while len(self.known) > MEMORY:
            self.known.popitem(last=False)

    def forget(self, job_id: UUID) -> None:
        """No use as a control any more (its result is gone)."""
        self.known.pop(job_id, None)

    def readable(self, sent_at: float, now: float) -> Change | None:
        """A result request that left at ``sent_at`` was answered readably."""
        self.readable_sent = max(self.readable_sent, sent_at)
        self.run = 0
        if self.circuit.is_open and sent_at > self.refused_sent and self.circuit.on_success(now):
            return "closed"
        return None

    def refused(self, sent_at: float, now: float) -> Change | None:
        """A result GET (not a control) that left at ``sent_at`` was refused 403."""
        if self.circuit.is_open or self.verdict(sent_at) != "unknown":
            return None
        if self.run == 0:
            self.run, self.run_began, self.run_first_sent = 1, now, sent_at
        elif sent_at >= self.run_began:
            self.run += 1
        if self.can_check or self.run < BLIND_RUN:
            return None  # a control will tell (or the run is still short)
        # A guess: any readable answer to a request that left after the run's first
        # refused one shows the token could read, and closes it.
        return self._open(self.run_first_sent, now, f"{self.run} refusals in a row and no "
                          "job known to be readable to check with", blind=True)

    def ask(self) -> bool:
        """A refusal wants a control: True when one will be made."""
        if not self.known:
            return False
        self.asked = True
        return True

    def next_control(self, now: float) -> tuple[UUID | None, float]:
        """The job to GET as a control now, or None and how long until one may be due
        (a probe of the open circuit; ``inf``: only when a refusal asks)."""
        if not self.known:
            self.asked = False
            return None, math.inf
        if self.in_flight is not None:
            return None, math.inf
        if self.circuit.is_open:
            if not self.circuit.try_probe(now):
                return None, max(0.0, self.circuit.next_probe_at - now)
        elif not self.asked:
            return None, math.inf
        self.asked = False
        # The most recent first; the one just used goes to the back of the line, so that
        # a job refused for reasons of its own does not keep the circuit open.
        job_id = next(reversed(self.known))
        self.known.move_to_end(job_id, last=False)
        self.in_flight = job_id
        return job_id, 0.0

    def controlled(self, job_id: UUID, result: ControlResult, sent_at: float, now: float,
                   *, gone: bool = False) -> Change | None:
        """The control for ``job_id``, sent at ``sent_at``, came back (or never left:
        ``inconclusive``)."""
        self.in_flight = None
        if gone:
            self.forget(job_id)
        if result == "readable":
            return self.readable(sent_at, now)
        if result == "refused" and not self.circuit.is_open:
            if self.readable_sent > sent_at:
                # Another job was answered after this control left: the token reads, and
                # this job is refused for reasons of its own. No use as a control.
                self.forget(job_id)
                return None
            return self._open(sent_at, now, "a job that landed lately is refused too",
                              blind=False)
        return None

    def _open(self, sent_at: float, now: float, because: str, *, blind: bool) -> Change | None:
        self.run = 0
        self.refused_sent = sent_at
        self.because = because
        self.blind = blind
        return "opened" if self.circuit.on_failure(now) else None
