"""Manners towards upstream: the auth circuit, global pauses, the fault throttle, MAX_RPS.

The state machines here are pure (time is an argument) and tested directly; the
:class:`Gate` wraps them for the engine's workers, which ask it before every request.
A worker either goes ahead (perhaps after a short wait) or is told to give its job back
without charging an attempt (:class:`Released`), so that no lease ticks away while the
daemon waits for upstream to recover.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# ---------------------------------------------------------------- auth circuit


@dataclass(slots=True)
class AuthCircuit:
    """Opens on a 401, lets one probe through every ``probe_interval``, closes on the
    first answer that is not a 401. Transitions return True so they are logged once."""

    probe_interval: float
    state: Literal["closed", "open"] = "closed"
    opened_at: float | None = None
    next_probe_at: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def on_unauthorized(self, now: float) -> bool:
        if self.state == "open":
            return False
        self.state = "open"
        self.opened_at = now
        self.next_probe_at = now + self.probe_interval
        return True

    def on_authorized(self, now: float) -> bool:
        if self.state == "closed":
            return False
        self.state = "closed"
        self.opened_at = None
        return True

    def try_probe(self, now: float) -> bool:
        """While open: True for exactly one caller per probe interval."""
        if self.state == "closed":
            return True
        if now >= self.next_probe_at:
            self.next_probe_at = now + self.probe_interval
            return True
        return False


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


# ---------------------------------------------------------------- the gate


class Released(Exception):
    """The worker must give its job back, due after ``delay`` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay
        self.why = why


class Gate:
    """Everything a worker must respect before sending a request."""

    def __init__(self, *, max_rps: float, probe_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.circuit = AuthCircuit(probe_interval)
        self.throttle = FaultThrottle()
        self._clock = clock
        self._min_interval = 1.0 / max_rps if max_rps > 0 else 0.0
        self._next_slot = 0.0
        self.paused_until = 0.0
        """Monotonic time before which no request may start (429/503 Retry-After)."""

    def blocked_for(self) -> float:
        """How long the dispatcher should wait before claiming again (0 = go)."""
        now = self._clock()
        wait = max(0.0, self.paused_until - now)
        if self.circuit.is_open:
            wait = max(wait, self.circuit.next_probe_at - now)
        return wait

    def pause(self, seconds: float) -> bool:
        """Pause all dispatch; True only when this starts a pause: extending one already
        running is the same event, and the engine logs each pause once."""
        until = self._clock() + seconds
        if until > self.paused_until:
            started = self.paused_until <= self._clock()
            self.paused_until = until
            return started
        return False

    async def admit(self) -> None:
        """Wait for this request's turn, or raise Released."""
        now = self._clock()
        if self.paused_until > now:
            raise Released(self.paused_until - now, "upstream asked to slow down")
        if self.circuit.is_open and not self.circuit.try_probe(now):
            raise Released(0.0, "auth circuit open")
        spacing = max(self._min_interval, self.throttle.spacing)
        if spacing <= 0:
            return
        slot = max(now, self._next_slot)
        self._next_slot = slot + spacing
        if slot > now:
            await asyncio.sleep(slot - now)

    async def wait_turn(self) -> None:
        """For requests that cannot be given back (batch-status): wait, never release."""
        while True:
            now = self._clock()
            wait = max(0.0, self.paused_until - now)
            spacing = max(self._min_interval, self.throttle.spacing)
            slot = max(now, self._next_slot)
            if wait <= 0:
                if spacing > 0:
                    self._next_slot = slot + spacing
                    if slot > now:
                        await asyncio.sleep(slot - now)
                return
            await asyncio.sleep(wait)

    def backlog(self) -> float:
        """Seconds of already reserved request slots (for the dispatcher's look-ahead)."""
        return max(0.0, self._next_slot - self._clock())
