"""Manners towards upstream: circuits, pauses, the fault throttle and the send rate.

README "Pace". The state machines here are pure (time is an argument) and tested
directly, with tables and hypothesis:

- :class:`~harvester.circuit.Circuit` (its own module): the auth circuit (401) and the
  permission circuit (403s that :mod:`harvester.refusals` finds are about the token);
- :class:`FaultThrottle`: slows everything down while upstream is faulting;
- :class:`SendRate`: the adaptive send rate. It finds a rate limit nobody announced and
  sits just under it, with requests leaving evenly paced (AIMD, shaped like CUBIC);
  ``HARVESTER_MAX_RPS`` is a hard ceiling on top.

The :class:`Gate` wraps them for the engine: every request (a result GET or a
batch-status call) asks it first, and every answer is reported back to it with
:meth:`Gate.observe`, which returns the transitions worth a log line. A request either
goes ahead (perhaps after waiting for its slot) or is told to give its jobs back without
charging an attempt (:class:`Released`), so that no lease ticks away while the daemon
waits for upstream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal
from uuid import UUID

from harvester.circuit import Circuit
from harvester.policy import READABLE
from harvester.refusals import FIRST_PROBE, Change, Refusals
from harvester.status_policy import ControlAnswer

Request = Literal["result", "status", "control"]
"""What a request is: a result GET for a job, a batch-status call, or a control (a GET
asked to tell whose a run of 403s is, :mod:`harvester.refusals`)."""

# ---------------------------------------------------------------- fault throttle


@dataclass(slots=True)
class FaultThrottle:
    """Slows the whole daemon down while upstream is failing (no retry storm).

    After ``threshold`` consecutive faults, the spacing between request starts doubles
    at most once per second, from ``base`` up to ``cap``; every healthy answer halves it
    again, so recovery is quick once upstream answers.
    """

    threshold: int = 10
    base: float = 0.05
    cap: float = 5.0
    streak: int = 0
    level: int = 0
    last_raise: float = -math.inf

    def observe(self, fault: bool, now: float) -> bool:
        """Record one answer; True when the throttle level went up."""
        if not fault:
            self.streak = 0
            if self.level:
                self.level -= 1
            return False
        self.streak += 1
        if self.streak >= self.threshold and now - self.last_raise >= 1.0:
            ceiling = 1 + math.ceil(math.log2(self.cap / self.base))
            if self.level < ceiling:
                self.level += 1
                self.last_raise = now
                return True
        return False

    @property
    def spacing(self) -> float:
        if self.level == 0:
            return 0.0
        return min(self.cap, self.base * 2.0 ** (self.level - 1))


# ---------------------------------------------------------------- send rate

RAMP_START: Final = 200.0
"""Requests/s at which a ramp begins (a new daemon, or one that was idle)."""
RAMP_DOUBLING: Final = 0.03
"""While no limit is known and requests wait for their slot, the rate doubles this often
(like TCP slow start): from 200/s to 6,400/s in 0.15 s, so an unlimited upstream is
reached at once, yet the first rate limit is met by a few requests, not a burst of
every free slot."""
CUT: Final = 0.7
"""Multiplicative decrease on a rate-limit answer that came while ramping or settled (not
probing): the β of CUBIC, and of the AWS SDKs' adaptive retry mode."""
GENTLE_CUT: Final = 0.9
"""The decrease when refused only after a while at the plateau (just over the limit)."""
SOON: Final = 1.0
"""Refused within this many seconds of sending resuming: far over the limit."""
RAMP_EXIT: Final = 0.5
"""Leaving the ramp, the rate that was refused is halved first: it doubled since the
last rate that was surely accepted (TCP's slow-start exit)."""
PLATEAU: Final = 0.9
"""Refused while probing above a rate that worked, the rate settles at this share of the
refused one. The refused rate is an upper bound (a gateway's burst lets a probe run over
the limit for a while, and the measured rate counts the burst too); 0.95 settled over
the limit about half the time, and every such miss costs one more Retry-After pause."""
HOLD: Final = 8.0
"""Seconds at the plateau, from the end of the pause, before probing above it. Every
probe that finds the limit costs a Retry-After pause, so probes are spaced."""
PROBE: Final = 0.02
"""Probing above the plateau: rate = plateau × (1 + PROBE·t³), CUBIC's convex part:
+16 % after 2 s, ×3.5 after 5 s, so a limit that was raised is found within seconds."""
PROBE_LOOKBACK: Final = 0.5
"""Seconds back along the probe where refusals are taken to have begun (a gateway's
burst absorbs the excess for about that long before it answers 429)."""
MIN_RATE: Final = 0.5
"""Never slower than one request every two seconds (the AWS SDKs use the same floor)."""
BURST: Final = 0.02
"""Seconds of the current rate that may leave back to back (at least one request)."""
MEASURE_WINDOW: Final = 1.0
RECENT_WINDOW: Final = 0.05
"""The ramp never allows more than twice what was really sent over this window (TCP's
congestion-window validation): answers come back faster than 30 ms, and a rate that
doubled on every one of them would run far ahead of anything sent."""
WAITED_WINDOW: Final = 0.25
"""A request that waited for its slot this recently (or two departures back, when that
is longer) shows the rate is what holds the daemon back."""
SAME_EVENT: Final = 0.5
"""A refusal heard this soon after the last cut is the same event: when a gateway runs
dry, several daemons are refused within milliseconds of each other."""
EPISODE_QUIET: Final = 60.0
"""An episode of rate limiting ends after this long without a rate-limit answer."""


@dataclass(slots=True)
class RateChange:
    """A transition worth one log line."""

    kind: Literal["limited", "recovered"]
    rate: float
    refused_at: float | None = None
    cuts: int = 0


@dataclass(slots=True)
class SendRate:
    """The adaptive send rate (README "Pace"): pure, every method takes ``now``.

    :meth:`reserve` gives each request an evenly spaced departure (virtual scheduling,
    as in GCRA: ``tat`` is the theoretical time of the next departure). :meth:`observe`
    takes every answer: a rate-limit answer cuts the rate multiplicatively; the others
    let it grow again, first back to just under the rate that was refused, then, after a
    while there, beyond it. The rate only grows while requests actually wait for their
    slots, so an idle daemon does not bank a rate it never used.
    """

    ceiling: float = math.inf
    rate: float = RAMP_START
    refused: float | None = None
    """The rate at the last rate-limit answer (None: no limit found yet)."""
    plateau: float = 0.0
    """Where the rate settles after the last cut, until it probes beyond."""
    cut_at: float = -math.inf
    resumed_at: float = -math.inf
    """When sending could resume after the last cut (the end of its pause): recovery,
    hold and probing are timed from here."""
    last_limited: float = -math.inf
    episode_cuts: int = 0
    cuts: int = 0
    """Cuts so far, own refusals and heard ones."""
    cut_heard: bool = False
    """The last cut was another daemon's refusal, heard."""
    tat: float = 0.0
    last_wait: float = -math.inf
    last_grow: float | None = None
    began: float = -math.inf
    """When sending last began after a quiet second."""
    _sends: deque[float] = field(default_factory=deque)

    @classmethod
    def with_ceiling(cls, max_rps: float) -> SendRate:
        """``max_rps`` 0 means no ceiling (HARVESTER_MAX_RPS)."""
        ceiling = max_rps if max_rps > 0 else math.inf
        return cls(ceiling=ceiling, rate=min(RAMP_START, ceiling))

    @property
    def allowed(self) -> float:
        """Requests per second allowed right now (HARVESTER_MAX_RPS wins over the floor)."""
        return min(self.ceiling, max(MIN_RATE, self.rate))

    @property
    def ramping(self) -> bool:
        return self.refused is None

    def reserve(self, now: float, spacing: float = 0.0, within: float = math.inf) -> float:
        """Reserve the next departure; returns how long to wait for it (0: go now).

        ``spacing`` is a minimum gap imposed from outside (the fault throttle). A
        departure more than ``within`` seconds away is not reserved (the caller gives its
        job back instead), so a slot nobody will use never pushes the others back."""
        gap = max(1.0 / self.allowed, spacing)
        tolerance = BURST if spacing == 0.0 else 0.0
        start = max(self.tat, now)
        wait = max(0.0, start - tolerance - now)
        if wait > 0.0:
            self.last_wait = now
        if wait <= within:
            self.tat = start + gap
        return wait

    def hold_until(self, until: float) -> None:
        """Nothing leaves before ``until`` (a pause); departures resume paced from there,
        the first exactly then (the burst allowance never reaches into a pause)."""
        self.tat = max(self.tat, until + BURST)
        if self.cut_at >= until - EPISODE_QUIET:
            self.resumed_at = max(self.resumed_at, until)

    def sent(self, now: float) -> None:
        sends = self._sends
        if not sends or now - sends[-1] > MEASURE_WINDOW:
            self.began = now
        sends.append(now)
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Departures older than MEASURE_WINDOW: nothing measures them any more."""
        sends = self._sends
        while sends and sends[0] < now - MEASURE_WINDOW:
            sends.popleft()

    def measured(self, now: float) -> float:
        """Requests per second actually sent over the last second, not counting a pause
        nor the quiet before sending began (0: nothing sent since sending resumed)."""
        self._forget(now)
        sends = self._sends
        start = max(now - MEASURE_WINDOW, self.resumed_at, self.began)
        recent = sum(1 for t in sends if t >= start) if start > now - MEASURE_WINDOW else len(sends)
        return recent / max(now - start, BURST)

    def recent(self, now: float) -> float:
        """Requests per second sent over the last RECENT_WINDOW."""
        count = 0
        for sent in reversed(self._sends):
            if sent <= now - RECENT_WINDOW:
                break
            count += 1
        return count / RECENT_WINDOW

    def observe(self, now: float, *, limited: bool, sent_at: float) -> RateChange | None:
        """One answer. ``limited``: a 429 (or a 503 with Retry-After)."""
        if limited:
            return self._cut(now, sent_at)
        self._grow(now)
        if self.episode_cuts and now - self.last_limited >= EPISODE_QUIET:
            # A quiet minute: the limit that was found no longer binds (or is gone).
            # Back to ramping from here, so a higher limit is found at the ramp's pace.
            cuts, self.episode_cuts = self.episode_cuts, 0
            refused, self.refused = self.refused, None
            return RateChange("recovered", self.allowed, refused, cuts)
        return None

    def _cut(self, now: float, sent_at: float) -> RateChange | None:
        self.last_limited = now
        if sent_at < self.cut_at or (self.cut_heard and now - self.cut_at < SAME_EVENT):
            return None  # the same event as the last cut, already answered
        measured = self.measured(now)
        if not self._waited_recently(now) and measured > 0:
            # Refused while sending less than allowed (others filled the gateway, or a
            # passing overload): no limit of ours was found. Back off from what was being
            # sent and ramp again: a real limit is met again within a fraction of a second,
            # this time while pushing against it, and then settled properly.
            refused = min(self.rate, self.ceiling, measured)
            self.refused = None
            self.rate = max(MIN_RATE, CUT * refused)
        else:
            refused = self._settle(now, measured)
        self.cut_heard = False
        return self._cut_done(now, resume=max(now, self.tat), refused=refused)

    def heard(self, now: float, resume_in: float) -> RateChange | None:
        """Another daemon sharing this upstream was refused (README "Pace", several
        daemons): the gateway's limit is the fleet's, and the rate of every daemon that
        pushes against it helped fill it. So this one settles its own rate the way its own
        refusal would, and times its hold from when the refused daemon resumes, ``resume_in``
        seconds from now: the fleet holds and probes as one, and one probe that finds the
        limit costs one daemon's pause, not a pause of each. It does not pause: its own
        requests were answered. A daemon that does not use its rate, or that was cut for
        the same event already, has nothing to settle."""
        if now - self.cut_at < SAME_EVENT or not self._waited_recently(now):
            return None
        self.last_limited = now
        refused = self._settle(now, self.measured(now))
        self.cut_heard = True
        return self._cut_done(now, resume=now + min(max(resume_in, 0.0), HOLD), refused=refused)

    def _settle(self, now: float, measured: float) -> float:
        """Settle under the rate that was just refused; returns that rate."""
        refused = min(self.rate, self.ceiling)
        if self.refused is not None and now - self.resumed_at > HOLD:
            # Probing: a gateway's burst hides the limit for a while: the rate a moment
            # earlier on the probe, and what was really sent over the last second (the
            # gateway admitted that much, its burst included), both bound where refusals
            # began. Under the lower one is known to work; the pause that comes with this
            # answer empties nothing, so sending resumes there.
            refused = min(refused, measured or math.inf, self.target(now - PROBE_LOOKBACK))
            self.refused = max(MIN_RATE, refused)
            self.rate = self.plateau = max(MIN_RATE, PLATEAU * self.refused)
            return refused
        # Refused while ramping or settled: the limit is below where the rate was; cut
        # multiplicatively and settle there. Refused soon after sending resumed (the
        # gateway's burst lasted no time), it is far below: cut deep; refused at the end
        # of a ramp (measured, below) or after a while at the plateau, it is just below:
        # cut gently.
        if self.ramping:
            # The ramp doubled since the last rate surely accepted, and answers lag it:
            # what was really sent since sending began is closer to the limit (a gateway
            # admitted that, burst included). A ramp that met a limit early (a few
            # requests sent, or a limit reached by others) has learned little: never below
            # the ramp's start.
            refused = max(RAMP_START, min(refused * RAMP_EXIT, measured or math.inf))
        soon = now - self.resumed_at < SOON
        self.refused = max(MIN_RATE, refused)
        self.rate = self.plateau = max(MIN_RATE, (CUT if soon else GENTLE_CUT) * self.refused)
        return refused

    def _cut_done(self, now: float, *, resume: float, refused: float) -> RateChange | None:
        self.rate = min(self.rate, self.ceiling)
        self.cut_at = now
        self.resumed_at = resume
        self.last_grow = now
        self.cuts += 1
        self.episode_cuts += 1
        if self.episode_cuts == 1:
            return RateChange("limited", self.allowed, self.refused or refused, 1)
        return None

    def _grow(self, now: float) -> None:
        last, self.last_grow = self.last_grow, now
        if last is None or not self._waited_recently(now):
            return  # not using the rate it has: nothing learned, nothing to grow
        if self.refused is None:
            ceiling = max(RAMP_START, 2.0 * self.recent(now))
            if self.rate < ceiling:
                self.rate = min(ceiling, self.rate * 2.0 ** ((now - last) / RAMP_DOUBLING))
        else:
            self.rate = max(self.rate, self.target(now))
        self.rate = min(self.rate, self.ceiling)

    def _waited_recently(self, now: float) -> bool:
        """Requests waited for their slots lately: the rate, not the work, sets the pace.

        "Lately" is at least two departures back: at a few requests a second, the
        workers' reservations are themselves that far apart, and a rate that may only
        grow within a fixed 0.25 s of one would never grow again."""
        return now - self.last_wait < max(WAITED_WINDOW, 2.0 / self.allowed)

    def target(self, now: float) -> float:
        """Where the rate may be ``now`` after the last cut: the plateau for HOLD seconds
        after sending resumed, then probing beyond it."""
        if self.refused is None:
            return self.rate
        t = now - self.resumed_at - HOLD
        if t <= 0:
            return self.plateau
        return self.plateau * (1.0 + PROBE * min(t, 60.0) ** 3)


# ---------------------------------------------------------------- the gate


class Released(Exception):
    """The caller must give its jobs back, due after ``delay`` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay
        self.why = why


@dataclass(frozen=True, slots=True)
class Transition:
    """Something that changed for the whole daemon: the observer logs it once."""

    event: str
    detail: dict[str, float | int | str | None] = field(default_factory=dict)


BOOK_AHEAD: Final = 0.25
"""While the rate ramps, departures are booked at most this far ahead: a thousand
workers asking at once at the ramp's 200/s would otherwise book five seconds of slots,
and keep them while the rate grows past them."""
PERMISSION_RECHECK: Final = 1.0
"""While the permission circuit is open and controls probe it, the dispatcher looks
again this often (it claims nothing meanwhile)."""


class Gate:
    """Everything a request must respect before it leaves, and learns from its answer."""

    def __init__(self, *, max_rps: float, probe_interval: float,
                 on_refused: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_refused = on_refused
        """Told, with the seconds until sending resumes, whenever an answer to this
        daemon cut its send rate (the fleet hears of it: :mod:`harvester.fleet`)."""
        self.auth = Circuit(probe_interval)
        self.permission = Circuit(probe_interval, first_probe=FIRST_PROBE)
        self.refusals = Refusals(self.permission)
        """Whose a 403 is; it opens and closes the permission circuit."""
        self.throttle = FaultThrottle()
        self.rate = SendRate.with_ceiling(max_rps)
        self._clock = clock
        self.paused_until = 0.0
        """Monotonic time before which no request may start (429/503 Retry-After)."""
        self.paused_total = 0.0
        """Seconds of pause started so far (for the time-paused counter)."""

    def now(self) -> float:
        return self._clock()

    def blocked_for(self) -> float:
        """How long the dispatcher should wait before claiming again (0 = go)."""
        now = self._clock()
        wait = max(0.0, self.paused_until - now)
        if self.auth.is_open:
            wait = max(wait, self.auth.next_probe_at - now)
        if self.permission.is_open:
            # Probed by controls when there is a job to check with; else by the next job.
            wait = max(wait, PERMISSION_RECHECK if self.refusals.can_check
                       else self.permission.next_probe_at - now)
        return wait

    @property
    def circuit_open(self) -> bool:
        return self.auth.is_open or self.permission.is_open

    def _passes(self, circuit: Circuit, request: Request, now: float) -> bool:
        """May this request leave while ``circuit`` is open (as its probe)?"""
        if circuit is self.permission:
            if request == "control":
                return True  # the refusals' own probe: its turn was taken already
            if request == "status" or self.refusals.can_check:
                return False  # batch-status proves nothing; controls probe
        return circuit.try_probe(now)

    def pause(self, seconds: float) -> bool:
        """Pause all dispatch; True only when this starts a pause: extending one already
        running is the same event, and the engine logs each pause once."""
        now = self._clock()
        until = now + seconds
        if until <= self.paused_until:
            return False
        started = self.paused_until <= now
        self.paused_total += until - max(now, self.paused_until)
        self.paused_until = until
        self.rate.hold_until(until)
        return started

    async def admit(self, patience: float = math.inf, request: Request = "result") -> float:
        """Wait for this request's turn and return its departure time, or raise Released
        when a circuit refuses or the wait would outlast ``patience`` (seconds the caller's
        lease can spare)."""
        while True:
            now = self._clock()
            paused = self.paused_until - now
            if paused > 0:
                if paused > patience:
                    raise Released(paused, "upstream asked to slow down")
                await asyncio.sleep(paused)
                continue
            for circuit, why in ((self.auth, "auth circuit open"),
                                 (self.permission, "permission circuit open")):
                if circuit.is_open and not self._passes(circuit, request, now):
                    raise Released(0.0, why)
            growing = self.rate.ramping and self.rate.allowed < self.rate.ceiling
            ahead = min(patience, BOOK_AHEAD) if growing else patience
            wait = self.rate.reserve(now, self.throttle.spacing, within=ahead)
            if wait > patience:
                raise Released(wait, "the send rate leaves no slot within the lease")
            if wait > ahead:
                # Not booked: while the rate ramps, a slot seconds away at today's rate
                # is a fraction of a second away at the rate of a moment from now.
                await asyncio.sleep(BOOK_AHEAD)
                continue
            if wait > 0:
                await asyncio.sleep(wait)
                if self.paused_until > self._clock():
                    continue  # a pause began while waiting: its end reschedules everyone
            sent = self._clock()
            self.rate.sent(sent)
            return sent

    def observe(self, status: int | None, sent_at: float, *, fault: bool = False,
                pause_for: float | None = None, request: Request = "result"
                ) -> list[Transition]:
        """Learn from one answer (``status`` None: no HTTP answer). Only result GETs
        speak about the permission to read results."""
        now = self._clock()
        changes: list[Transition] = []
        if status == 401:
            if self.auth.on_failure(now):
                changes.append(Transition("auth.circuit_open", {"status": 401}))
        elif status is not None and self.auth.on_success(now):
            changes.append(Transition("auth.circuit_closed", {"status": status}))
        if request == "result" and status == 403:
            changes += self._permission(self.refusals.refused(sent_at, now), status)
        elif request == "result" and status in READABLE:
            changes += self._permission(self.refusals.readable(sent_at, now), status)
        # The rate learns from the answer before its pause begins: how long sending had
        # run since the last pause is what tells a probe that found the limit from a
        # rate that was far over it.
        cuts = self.rate.cuts
        change = self.rate.observe(now, limited=pause_for is not None, sent_at=sent_at)
        if pause_for is not None and self.pause(pause_for):
            changes.append(Transition("upstream.paused",
                                      {"status": status, "seconds": round(pause_for, 2)}))
        if self.rate.cuts != cuts and self.on_refused is not None:
            self.on_refused(max(0.0, self.paused_until - now))
        if change is not None:
            changes.append(_rate_transition(change))
        if self.throttle.observe(fault, now):
            changes.append(Transition("upstream.throttled", {"spacing": self.throttle.spacing}))
        return changes

    def controlled(self, job_id: UUID, control: ControlAnswer, status: int | None,
                   sent_at: float) -> list[Transition]:
        """A control request for ``job_id`` came back (README "How upstream answers are
        handled", 403): like any answer for the rate, pauses and the auth circuit, and
        the verdict on the token."""
        changes = self.observe(status, sent_at, fault=control.fault,
                               pause_for=control.pause_for, request="control")
        change = self.refusals.controlled(job_id, control.result, sent_at, self._clock(),
                                          gone=control.gone)
        return changes + self._permission(change, status)

    def control_lost(self, job_id: UUID) -> None:
        """A control never left (released by a pause longer than it could wait)."""
        self.refusals.controlled(job_id, "inconclusive", -math.inf, self._clock())

    def _permission(self, change: Change | None, status: int | None) -> list[Transition]:
        if change == "opened":
            return [Transition("permission.circuit_open",
                               {"status": 403, "because": self.refusals.because})]
        if change == "closed":
            return [Transition("permission.circuit_closed", {"status": status})]
        return []

    def heard(self, resume_in: float, by: str) -> list[Transition]:
        """Daemon ``by``, sharing this upstream, was refused; its sending resumes in
        ``resume_in`` seconds (see :meth:`SendRate.heard`)."""
        change = self.rate.heard(self._clock(), resume_in)
        return [] if change is None else [_rate_transition(change, refused_daemon=by)]


def _rate_transition(change: RateChange, **detail: float | int | str | None) -> Transition:
    refused = None if change.refused_at is None else round(change.refused_at, 1)
    return Transition(f"rate.{change.kind}", {
        "rate": round(change.rate, 1), "refused_at": refused, "cuts": change.cuts, **detail})
