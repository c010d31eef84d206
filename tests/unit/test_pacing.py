"""Manners towards upstream, with time as an argument or an injected clock.

Nothing here measures wall-clock time: where the gate would make a request wait, the
test shows that it waits (the task is still pending with a spacing of many minutes) and
what it reserved, never how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.pacing import AuthCircuit, FaultThrottle, Gate, Released


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def still_waiting(task: asyncio.Task[None]) -> bool:
    """True if ``task`` has not finished after the loop ran everything else that was ready."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------- auth circuit


def test_circuit_closed_lets_everyone_through() -> None:
    circuit = AuthCircuit(probe_interval=30.0)
    assert not circuit.is_open
    assert all(circuit.try_probe(t) for t in (0.0, 0.0, 0.1, 5.0))
    assert circuit.on_authorized(1.0) is False  # already closed: no transition to log


def test_circuit_opens_once() -> None:
    circuit = AuthCircuit(probe_interval=30.0)
    assert circuit.on_unauthorized(100.0) is True
    assert circuit.is_open
    assert circuit.opened_at == 100.0
    # Every other 401 from requests already in flight is the same outage: no new transition.
    assert [circuit.on_unauthorized(t) for t in (100.0, 100.5, 129.0)] == [False, False, False]
    assert circuit.opened_at == 100.0


def test_circuit_lets_one_probe_through_per_interval() -> None:
    circuit = AuthCircuit(probe_interval=30.0)
    circuit.on_unauthorized(100.0)
    assert not circuit.try_probe(100.0)
    assert not circuit.try_probe(129.999)
    assert circuit.try_probe(130.0)
    assert not circuit.try_probe(130.0)  # a second caller at the same instant waits
    assert not circuit.try_probe(159.0)
    # The probe was refused again (401): still open, nothing to log, next probe 30 s on.
    assert circuit.on_unauthorized(130.2) is False
    assert circuit.is_open
    assert circuit.try_probe(160.0)
    # A late caller long after the slot gets one probe, and the next one is 30 s after it.
    assert circuit.try_probe(500.0)
    assert not circuit.try_probe(529.0)
    assert circuit.try_probe(530.0)


def test_circuit_closes_on_first_non_401_and_says_so_once() -> None:
    circuit = AuthCircuit(probe_interval=30.0)
    circuit.on_unauthorized(100.0)
    assert circuit.on_authorized(101.0) is True  # any answer but 401, even before the probe
    assert not circuit.is_open
    assert circuit.opened_at is None
    assert circuit.on_authorized(102.0) is False
    assert circuit.try_probe(102.0)


def test_circuit_reopens_with_a_fresh_probe_schedule() -> None:
    circuit = AuthCircuit(probe_interval=30.0)
    circuit.on_unauthorized(100.0)
    circuit.on_authorized(110.0)
    assert circuit.on_unauthorized(200.0) is True
    assert circuit.opened_at == 200.0
    assert not circuit.try_probe(229.0)
    assert circuit.try_probe(230.0)


@given(st.lists(st.tuples(st.sampled_from(["401", "ok", "probe"]),
                          st.floats(min_value=0.0, max_value=100.0)), max_size=60))
def test_circuit_transitions_alternate(events: list[tuple[str, float]]) -> None:
    """Whatever happens, the logged transitions alternate open, closed, open, …; and while
    open, granted probes are at least one interval apart."""
    circuit = AuthCircuit(probe_interval=30.0)
    now = 0.0
    transitions: list[str] = []
    last_probe: float | None = None
    for what, dt in events:
        now += dt
        if what == "401" and circuit.on_unauthorized(now):
            transitions.append("open")
            last_probe = now  # the opening 401 was the last request through
        elif what == "ok" and circuit.on_authorized(now):
            transitions.append("closed")
        elif what == "probe" and circuit.is_open and circuit.try_probe(now):
            assert last_probe is not None
            assert now - last_probe >= 30.0
            last_probe = now
        assert circuit.is_open == (bool(transitions) and transitions[-1] == "open")
    assert transitions == ["open", "closed"] * (len(transitions) // 2) + ["open"] * (len(transitions) % 2)


# ---------------------------------------------------------------- fault throttle


def test_throttle_needs_threshold_consecutive_faults() -> None:
    throttle = FaultThrottle(threshold=3, base=0.05, cap=5.0)
    assert [throttle.observe(True, 10.0), throttle.observe(True, 10.0)] == [False, False]
    assert throttle.spacing == 0.0
    assert throttle.observe(True, 10.0) is True
    assert throttle.spacing == 0.05


def test_throttle_streak_is_broken_by_a_healthy_answer() -> None:
    throttle = FaultThrottle(threshold=3, base=0.05, cap=5.0)
    for now in range(20):
        throttle.observe(True, float(now))
        throttle.observe(True, float(now))
        assert throttle.observe(False, float(now)) is False
    assert throttle.spacing == 0.0
    assert throttle.streak == 0


def test_throttle_raises_at_most_once_per_second() -> None:
    throttle = FaultThrottle(threshold=3, base=0.05, cap=5.0)
    tick = 1 / 128  # exact in binary: no rounding at the 1 s boundary
    raised = [throttle.observe(True, 10.0 + i * tick) for i in range(128)]  # 1 s of faults
    assert raised.index(True) == 2  # the third fault
    assert raised.count(True) == 1
    assert throttle.spacing == 0.05
    assert throttle.observe(True, 11.0 + 1 * tick) is False  # first raise was at 10 + 2 ticks
    assert throttle.observe(True, 11.0 + 2 * tick) is True
    assert throttle.spacing == 0.1


def test_throttle_doubles_up_to_the_cap_and_stays() -> None:
    throttle = FaultThrottle(threshold=1, base=0.05, cap=5.0)
    spacings = []
    for second in range(30):
        throttle.observe(True, float(second))
        spacings.append(throttle.spacing)
    assert spacings[:8] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert set(spacings[7:]) == {5.0}
    assert throttle.observe(True, 100.0) is False  # at the cap: nothing new to log


def test_throttle_healthy_answers_lower_it_step_by_step() -> None:
    throttle = FaultThrottle(threshold=1, base=0.05, cap=5.0)
    for second in range(30):
        throttle.observe(True, float(second))
    lowered = []
    for _ in range(10):
        assert throttle.observe(False, 31.0) is False
        lowered.append(throttle.spacing)
    assert lowered == [3.2, 1.6, 0.8, 0.4, 0.2, 0.1, 0.05, 0.0, 0.0, 0.0]


@given(st.integers(min_value=1, max_value=20),
       st.lists(st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=2.0)), max_size=200))
def test_throttle_invariants(threshold: int, answers: list[tuple[bool, float]]) -> None:
    throttle = FaultThrottle(threshold=threshold, base=0.05, cap=5.0)
    now = 0.0
    raises: list[float] = []
    streak = 0
    for fault, dt in answers:
        now += dt
        before = throttle.spacing
        streak = streak + 1 if fault else 0
        if throttle.observe(fault, now):
            assert streak >= threshold
            assert throttle.spacing > before
            raises.append(now)
        elif fault:
            assert throttle.spacing == before
        else:
            assert throttle.spacing <= before
        assert throttle.spacing == 0.0 or 0.05 <= throttle.spacing <= 5.0
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(raises))


# ---------------------------------------------------------------- the gate


async def test_gate_without_limits_admits_at_once() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    for _ in range(100):
        await gate.admit()
    assert gate.backlog() == 0.0
    assert gate.blocked_for() == 0.0


async def test_gate_pause_releases_jobs_until_it_ends() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    assert gate.pause(10.0) is True
    assert gate.pause(5.0) is False  # inside the current pause: nothing changes
    with pytest.raises(Released) as released:
        await gate.admit()
    assert released.value.delay == 10.0
    assert gate.blocked_for() == 10.0
    clock.advance(4.0)
    assert gate.pause(20.0) is False  # extends the pause already logged
    with pytest.raises(Released) as released:
        await gate.admit()
    assert released.value.delay == 20.0
    clock.advance(20.0)
    assert gate.blocked_for() == 0.0
    await gate.admit()
    assert gate.pause(1.0) is True  # a new pause after the old one ended


async def test_gate_circuit_open_releases_all_but_the_probe() -> None:
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    assert gate.circuit.on_unauthorized(clock())
    with pytest.raises(Released) as released:
        await gate.admit()
    assert released.value.delay == 0.0
    assert "auth" in released.value.why
    clock.advance(10.0)
    assert gate.blocked_for() == 20.0
    clock.advance(20.0)
    assert gate.blocked_for() == 0.0
    await gate.admit()  # the probe
    for _ in range(3):
        with pytest.raises(Released):
            await gate.admit()
    assert gate.blocked_for() == 30.0
    gate.circuit.on_authorized(clock())
    for _ in range(3):
        await gate.admit()


async def test_gate_pause_wins_over_the_probe() -> None:
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    gate.circuit.on_unauthorized(clock())
    clock.advance(30.0)
    gate.pause(60.0)
    with pytest.raises(Released) as released:
        await gate.admit()
    assert released.value.delay == 60.0
    assert gate.blocked_for() == 60.0
    clock.advance(60.0)
    await gate.admit()  # the probe is still there once the pause is over


async def test_gate_spaces_requests_at_max_rps() -> None:
    clock = Clock()
    gate = Gate(max_rps=10, probe_interval=30.0, clock=clock)
    for _ in range(5):
        await asyncio.wait_for(gate.admit(), timeout=5)  # each exactly on its slot: no wait
        assert gate.backlog() == pytest.approx(0.1)
        clock.advance(0.1)


async def test_gate_makes_an_early_request_wait_for_its_slot() -> None:
    clock = Clock()
    gate = Gate(max_rps=1 / 600, probe_interval=30.0, clock=clock)  # one request per 10 min
    await asyncio.wait_for(gate.admit(), timeout=5)
    assert gate.backlog() == pytest.approx(600.0)
    second = asyncio.create_task(gate.admit())
    try:
        assert await still_waiting(second)
        assert gate.backlog() == pytest.approx(1200.0)  # the second request holds the next slot
    finally:
        await cancel(second)


async def test_gate_does_not_bank_idle_time_into_a_burst() -> None:
    clock = Clock()
    gate = Gate(max_rps=1 / 600, probe_interval=30.0, clock=clock)
    await asyncio.wait_for(gate.admit(), timeout=5)
    clock.advance(3600.0)  # an hour without requests
    await asyncio.wait_for(gate.admit(), timeout=5)
    assert gate.backlog() == pytest.approx(600.0)  # the next request still waits a full interval
    third = asyncio.create_task(gate.admit())
    try:
        assert await still_waiting(third)
    finally:
        await cancel(third)


async def test_gate_uses_the_throttle_when_it_is_slower_than_max_rps() -> None:
    clock = Clock()
    gate = Gate(max_rps=100, probe_interval=30.0, clock=clock)
    await gate.admit()
    assert gate.backlog() == pytest.approx(0.01)
    for _ in range(gate.throttle.threshold):
        gate.throttle.observe(True, clock())
    assert gate.throttle.spacing == 0.05
    clock.advance(1.0)
    await gate.admit()
    assert gate.backlog() == pytest.approx(0.05)


async def test_wait_turn_waits_through_a_pause_instead_of_releasing() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    gate.pause(600.0)
    waiting = asyncio.create_task(gate.wait_turn())
    try:
        assert await still_waiting(waiting)
    finally:
        await cancel(waiting)
    clock.advance(600.0)
    await asyncio.wait_for(gate.wait_turn(), timeout=5)


async def test_wait_turn_takes_a_slot_like_admit() -> None:
    clock = Clock()
    gate = Gate(max_rps=1 / 600, probe_interval=30.0, clock=clock)
    await asyncio.wait_for(gate.wait_turn(), timeout=5)
    assert gate.backlog() == pytest.approx(600.0)
    waiting = asyncio.create_task(gate.admit())
    try:
        assert await still_waiting(waiting)
    finally:
        await cancel(waiting)
