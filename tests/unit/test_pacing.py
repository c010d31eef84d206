"""Manners towards upstream (README "Pace"), with time as an argument or an injected clock.

Nothing here measures wall-clock time: where the gate would make a request wait, the
test shows that it waits (the task is still pending with a spacing of many minutes) and
what it reserved, never how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.circuit import Circuit
from harvester.pacing import (
    BOOK_AHEAD,
    BURST,
    CUT,
    EPISODE_QUIET,
    GENTLE_CUT,
    HOLD,
    MIN_RATE,
    PERMISSION_RECHECK,
    PLATEAU,
    RAMP_EXIT,
    RAMP_START,
    SAME_EVENT,
    FaultThrottle,
    Gate,
    Released,
    SendRate,
)
from harvester.refusals import BLIND_RUN
from harvester.status_policy import ControlAnswer


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    """True if ``task`` has not finished after the loop ran everything else that was ready."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------- circuits


def test_circuit_closed_lets_everyone_through() -> None:
    circuit = Circuit(probe_interval=30.0)
    assert not circuit.is_open
    assert all(circuit.try_probe(t) for t in (0.0, 0.0, 0.1, 5.0))
    assert circuit.on_success(1.0) is False  # already closed: no transition to log


def test_circuit_opens_once() -> None:
    circuit = Circuit(probe_interval=30.0)
    assert circuit.on_failure(100.0) is True
    assert circuit.is_open
    assert circuit.opened_at == 100.0
    # Every other 401 from requests already in flight is the same outage: no new transition.
    assert [circuit.on_failure(t) for t in (100.0, 100.5, 129.0)] == [False, False, False]
    assert circuit.opened_at == 100.0


def test_circuit_with_a_threshold_opens_on_a_run_of_failures_only() -> None:
    """The permission circuit: one refused job is about the job, a run is about the token."""
    circuit = Circuit(probe_interval=30.0, threshold=5)
    for _ in range(4):
        assert circuit.on_failure(10.0) is False
    circuit.on_success(11.0)  # another job was answered: the run is broken
    assert [circuit.on_failure(12.0) for _ in range(5)] == [False] * 4 + [True]
    assert circuit.is_open


def test_circuit_lets_one_probe_through_per_interval() -> None:
    circuit = Circuit(probe_interval=30.0)
    circuit.on_failure(100.0)
    assert not circuit.try_probe(100.0)
    assert not circuit.try_probe(129.999)
    assert circuit.try_probe(130.0)
    assert not circuit.try_probe(130.0)  # a second caller at the same instant waits
    assert not circuit.try_probe(159.0)
    # The probe was refused again: still open, nothing to log, next probe 30 s on.
    assert circuit.on_failure(130.2) is False
    assert circuit.is_open
    assert circuit.try_probe(160.0)
    # A late caller long after the slot gets one probe, and the next one is 30 s after it.
    assert circuit.try_probe(500.0)
    assert not circuit.try_probe(529.0)
    assert circuit.try_probe(530.0)


def test_circuit_closes_on_the_first_success_and_says_so_once() -> None:
    circuit = Circuit(probe_interval=30.0)
    circuit.on_failure(100.0)
    assert circuit.on_success(101.0) is True  # any answer but the failure, even before the probe
    assert not circuit.is_open
    assert circuit.opened_at is None
    assert circuit.on_success(102.0) is False
    assert circuit.try_probe(102.0)


def test_circuit_reopens_with_a_fresh_probe_schedule() -> None:
    circuit = Circuit(probe_interval=30.0)
    circuit.on_failure(100.0)
    circuit.on_success(110.0)
    assert circuit.on_failure(200.0) is True
    assert circuit.opened_at == 200.0
    assert not circuit.try_probe(229.0)
    assert circuit.try_probe(230.0)


def test_a_circuit_probed_first_soon_doubles_its_spacing_up_to_the_interval() -> None:
    """The permission circuit: opened on evidence that may pass in a moment (a batch of
    another organisation's jobs), it is probed after 1, 2, 4 … s, then every interval."""
    circuit = Circuit(probe_interval=30.0, first_probe=1.0)
    circuit.on_failure(100.0)
    granted = [t for t in (x / 4 for x in range(400, 800)) if circuit.try_probe(t)]
    assert granted == [101.0, 103.0, 107.0, 115.0, 131.0, 161.0, 191.0]
    circuit.on_success(192.0)
    circuit.on_failure(300.0)
    assert not circuit.try_probe(300.5)
    assert circuit.try_probe(301.0)  # a fresh schedule after it closed


@given(st.integers(min_value=1, max_value=5),
       st.lists(st.tuples(st.sampled_from(["fail", "ok", "probe"]),
                          st.floats(min_value=0.0, max_value=100.0)), max_size=60))
def test_circuit_transitions_alternate(threshold: int, events: list[tuple[str, float]]) -> None:
    """Whatever happens, the logged transitions alternate open, closed, open, …; and while
    open, granted probes are at least one interval apart."""
    circuit = Circuit(probe_interval=30.0, threshold=threshold)
    now = 0.0
    transitions: list[str] = []
    last_probe: float | None = None
    for what, dt in events:
        now += dt
        if what == "fail" and circuit.on_failure(now):
            transitions.append("open")
            last_probe = now  # the opening failure was the last request through
        elif what == "ok" and circuit.on_success(now):
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


# ---------------------------------------------------------------- the send rate


def busy(rate: SendRate, start: float, seconds: float, *, limited_after: float | None = None,
         rtt: float = 0.005) -> tuple[float, int]:
    """Drive ``rate`` as a daemon with more work than it may send would: every departure
    taken as soon as it is allowed, every answer one ``rtt`` later (a 429 for departures
    after ``limited_after``). Returns the time reached and the departures made."""
    now, sent = start, 0
    while now < start + seconds:
        now += rate.reserve(now)
        rate.sent(now)
        sent += 1
        refused = limited_after is not None and now >= limited_after
        rate.observe(now + rtt, limited=refused, sent_at=now)
        if refused:
            break
    return now, sent


def test_a_new_rate_ramps_to_thousands_within_a_fraction_of_a_second() -> None:
    """No limit known: as fast as before, reached within ~0.2 s (README "Pace")."""
    rate = SendRate()
    assert rate.allowed == RAMP_START
    _, sent = busy(rate, 0.0, 0.25)
    assert rate.allowed > 5000
    assert rate.ramping
    assert sent > 300


def test_an_idle_rate_does_not_grow() -> None:
    """Growth needs requests waiting for their slots: a rate never used is not banked."""
    rate = SendRate()
    now = 0.0
    for _ in range(1000):
        now += 1.0  # one request a second, far below the rate
        assert rate.reserve(now) == 0.0
        rate.sent(now)
        rate.observe(now + 0.01, limited=False, sent_at=now)
    assert rate.allowed == RAMP_START


def test_a_low_rate_with_work_waiting_grows_again() -> None:
    """The engine's workers each reserve a slot when they take a job, so at a rate of a
    few per second reservations are half a second apart or more; requests still wait for
    their slots, and the rate must grow back (a daemon cut to 2/s by a 429 at start-up
    stayed there for a minute)."""
    rate = SendRate(rate=2.0)  # as after a refusal met while barely sending: ramping
    slots = sorted(rate.reserve(0.0) for _ in range(32))  # 32 workers, one slot each
    for _ in range(10):
        departure = slots.pop(0)
        rate.sent(departure)
        answered = departure + 0.005
        rate.observe(answered, limited=False, sent_at=departure)
        slots.append(answered + rate.reserve(answered))  # that worker's next job
        slots.sort()
    assert rate.allowed >= RAMP_START


def test_a_rate_limit_met_while_ramping_settles_under_what_was_really_sent() -> None:
    """The ramp's rate ran ahead of what left (answers lag it): the refused rate is the
    lower of half the ramp's rate and what was sent since sending began, and the rate
    settles just under it, so the next pause is not spent over the limit again."""
    rate = SendRate()
    now, sent = busy(rate, 0.0, 0.1)
    before = rate.rate
    answered = now + 0.001
    change = rate.observe(answered, limited=True, sent_at=now)
    assert change is not None
    assert change.kind == "limited"
    really_sent = sent / answered  # the first departure was at 0.0
    assert really_sent < before * RAMP_EXIT
    assert rate.refused == pytest.approx(really_sent)
    assert rate.allowed == pytest.approx(really_sent * GENTLE_CUT)
    assert not rate.ramping


def test_the_record_of_departures_keeps_only_the_last_second() -> None:
    """A daemon never rate limited sends millions of requests; the departures kept to
    measure the rate must not grow with them (they once did, until the first 429)."""
    rate = SendRate()
    for i in range(100_000):
        rate.sent(i * 0.001)  # 1,000/s for 100 s
    assert len(rate._sends) <= 1_001
    assert rate.measured(100.0) == pytest.approx(1_000, rel=0.01)


def test_answers_to_requests_sent_before_the_cut_are_the_same_event() -> None:
    rate = SendRate()
    now, _ = busy(rate, 0.0, 0.1)
    rate.observe(now, limited=True, sent_at=now - 0.001)
    after_first = rate.allowed
    for late in range(10):  # 429s for requests that were already in flight
        assert rate.observe(now + 0.001 * late, limited=True, sent_at=now - 0.002) is None
    assert rate.allowed == after_first


def test_settled_it_holds_then_probes_then_settles_just_under_the_refusal() -> None:
    rate = SendRate()
    now, _ = busy(rate, 0.0, 0.1)
    rate.observe(now, limited=True, sent_at=now)
    settled = rate.allowed
    rate.hold_until(now + 1.0)  # the Retry-After pause
    busy(rate, now + 1.0, HOLD - 0.1)
    assert rate.allowed == pytest.approx(settled)  # holds: no probing yet
    end, _ = busy(rate, now + 1.0 + HOLD, 3.0)
    assert rate.allowed > settled * 1.2  # probing beyond
    probed = rate.allowed
    rate.observe(end, limited=True, sent_at=end)
    assert settled <= rate.allowed < probed
    assert rate.allowed == pytest.approx(PLATEAU * rate.refused)  # type: ignore[operator]


async def test_through_the_gate_a_refused_probe_settles_just_under_the_refusal() -> None:
    """The gate pauses for the 429's Retry-After; the rate must learn from the answer as
    it was sent (probing, long after the last pause), not as if the new pause had already
    begun: that once made every refusal look "soon after resuming" and cut deep."""
    clock = Clock(0.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    rate = gate.rate
    now, _ = busy(rate, 0.0, 0.1)
    clock.advance(now)
    gate.observe(429, now, pause_for=1.0)
    end, _ = busy(rate, now + 1.0, HOLD + 3.0)
    probed = rate.allowed
    clock.advance(end - now)
    gate.observe(429, end, pause_for=1.0)
    assert rate.refused is not None
    assert rate.refused < probed
    assert rate.allowed == pytest.approx(PLATEAU * rate.refused)


def test_refused_again_before_probing_cuts_again() -> None:
    """The limit is below where the rate settled: multiplicative decrease, settle there."""
    rate = SendRate()
    now, _ = busy(rate, 0.0, 0.1)
    rate.observe(now, limited=True, sent_at=now)
    first = rate.allowed
    rate.hold_until(now + 1.0)
    again, _ = busy(rate, now + 1.0, 0.2, limited_after=now + 1.2)
    assert again >= now + 1.2
    assert rate.allowed == pytest.approx(first * CUT)


def test_the_rate_never_exceeds_max_rps() -> None:
    rate = SendRate.with_ceiling(50.0)
    assert rate.allowed == 50.0
    busy(rate, 0.0, 2.0)
    assert rate.allowed == 50.0
    assert rate.rate <= 50.0  # nothing banked above the ceiling either


def test_departures_are_evenly_spaced_and_a_pause_does_not_end_in_a_burst() -> None:
    rate = SendRate.with_ceiling(100.0)
    now = 10.0
    rate.hold_until(now + 5.0)  # a pause: everything waits for its end
    departures = []
    for _ in range(50):  # fifty workers all asking at once
        departures.append(now + rate.reserve(now))
    assert min(departures) == pytest.approx(now + 5.0)
    gaps = [b - a for a, b in itertools.pairwise(departures)]
    assert all(g == pytest.approx(0.01) for g in gaps)


def test_the_rate_has_a_floor() -> None:
    rate = SendRate()
    now = 0.0
    for _ in range(100):
        now += 10.0
        rate.observe(now, limited=True, sent_at=now)
    assert rate.allowed == MIN_RATE


def test_an_episode_is_one_line_when_it_begins_and_one_when_it_ends() -> None:
    rate = SendRate()
    now, _ = busy(rate, 0.0, 0.1)
    kinds = []
    for step in range(5):  # five refusals within a minute: one episode
        at = now + step * 5.0
        change = rate.observe(at, limited=True, sent_at=at)
        kinds.append(change.kind if change else None)
    assert kinds == ["limited", None, None, None, None]
    quiet = now + 20.0 + EPISODE_QUIET
    change = rate.observe(quiet, limited=False, sent_at=quiet)
    assert change is not None
    assert (change.kind, change.cuts) == ("recovered", 5)
    assert rate.ramping  # a higher limit is looked for at the ramp's pace again


def settled_and_probing(rate: SendRate) -> float:
    """Drive ``rate`` through a refusal, its pause and the hold, into probing; returns
    the time reached."""
    now, _ = busy(rate, 0.0, 0.1)
    rate.observe(now, limited=True, sent_at=now)
    rate.hold_until(now + 1.0)
    end, _ = busy(rate, now + 1.0, HOLD + 2.0)
    assert rate.allowed > rate.plateau  # probing
    return end


def test_a_refusal_heard_from_another_daemon_settles_this_rate_without_a_pause() -> None:
    """The gateway's limit is the fleet's (README "Pace", several daemons): a daemon
    probing when another is refused settles just under where it was, as its own refusal
    would, but keeps its slots (its requests were answered), and holds until the refused
    daemon resumes, so the fleet probes again together."""
    rate = SendRate()
    now = settled_and_probing(rate)
    probed, tat = rate.allowed, rate.tat
    change = rate.heard(now, resume_in=1.0)
    assert change is None  # the episode's line was written at the first cut
    assert rate.refused is not None
    assert rate.refused <= probed
    assert rate.allowed == pytest.approx(PLATEAU * rate.refused)
    assert rate.tat == tat  # no pause
    assert rate.resumed_at == pytest.approx(now + 1.0)
    assert rate.target(now + 1.0 + HOLD) == pytest.approx(rate.plateau)  # holds till then


def test_a_refusal_heard_while_ramping_ends_the_ramp() -> None:
    """At start-up every daemon ramps: the first refusal anywhere settles all of them,
    each under what it really sent, instead of each ramping on into its own 429."""
    rate = SendRate()
    now, sent = busy(rate, 0.0, 0.1)
    change = rate.heard(now + 0.001, resume_in=1.0)
    assert change is not None
    assert change.kind == "limited"
    assert not rate.ramping
    assert rate.refused == pytest.approx(sent / (now + 0.001))


def test_a_refusal_heard_and_ones_own_within_moments_are_one_event() -> None:
    """When a gateway runs dry several daemons are refused within milliseconds: heard
    first, then refused itself (or the other way round), a daemon cuts once."""
    heard_first = SendRate()
    now = settled_and_probing(heard_first)
    heard_first.heard(now, resume_in=1.0)
    after = heard_first.allowed
    late = now + SAME_EVENT / 2
    heard_first.observe(late, limited=True, sent_at=late - 0.001)  # sent after the cut
    assert heard_first.allowed == after
    refused_first = SendRate()
    now = settled_and_probing(refused_first)
    refused_first.observe(now, limited=True, sent_at=now)
    after = refused_first.allowed
    assert refused_first.heard(now + SAME_EVENT / 2, resume_in=1.0) is None
    assert refused_first.allowed == after
    # A refusal after the moment has passed is news again.
    refused_first.heard(now + 2 * SAME_EVENT, resume_in=0.0)
    assert refused_first.cuts == 2


def test_a_daemon_that_does_not_use_its_rate_ignores_refusals_heard() -> None:
    """Its rate did not fill the gateway: there is nothing of its own to settle."""
    rate = SendRate()
    for second in range(10):
        rate.sent(float(second))
        rate.observe(second + 0.01, limited=False, sent_at=float(second))
    assert rate.heard(10.0, resume_in=1.0) is None
    assert rate.ramping
    assert rate.allowed == RAMP_START


@pytest.mark.parametrize("resume_in", [-5.0, 1e9])
def test_an_absurd_resume_time_heard_is_bounded(resume_in: float) -> None:
    rate = SendRate()
    now = settled_and_probing(rate)
    rate.heard(now, resume_in=resume_in)
    assert now <= rate.resumed_at <= now + HOLD


@settings(deadline=None, max_examples=200)
@given(st.floats(min_value=0.0, max_value=1000.0),
       st.lists(st.tuples(st.floats(min_value=0.0, max_value=2.0),
                          st.sampled_from(["send", "ok", "limited", "pause", "heard"])),
                max_size=300))
def test_send_rate_invariants(ceiling: float, steps: list[tuple[float, str]]) -> None:
    """Whatever the answers: the allowed rate stays within [MIN_RATE, MAX_RPS], waits are
    never negative, and no departure comes before a pause ends."""
    rate = SendRate.with_ceiling(ceiling)
    now = 100.0
    paused_until = 0.0
    for dt, what in steps:
        now += dt
        if what == "send":
            wait = rate.reserve(now)
            assert wait >= 0.0
            assert now + wait >= paused_until - 1e-9
            rate.sent(now + wait)
        elif what == "pause":
            paused_until = now + 1.0
            rate.hold_until(paused_until)
        elif what == "heard":
            rate.heard(now, resume_in=dt)
        else:
            rate.observe(now, limited=what == "limited", sent_at=now - dt / 2)
        limit = ceiling if ceiling > 0 else math.inf
        assert min(MIN_RATE, limit) <= rate.allowed <= limit


def gateway_model(senders: int, *, hear: bool, seconds: float = 30.0
                  ) -> tuple[float, float, float]:
    """Senders with a full queue each behind a token-bucket gateway (300/s, burst 30,
    429 + Retry-After 1), answers 4 ms after departure; with ``hear``, a sender whose
    rate was cut is heard by the others 3 ms later (the database's NOTIFY). Returns the
    accepted rate as a share of the limit, the 429 share of requests, and the smallest
    sender's share of requests."""
    limit, burst, rtt, latency = 300.0, 30.0, 0.004, 0.003
    tokens, at = burst, 0.0
    rates = [SendRate() for _ in range(senders)]
    clocks = [0.001 * i for i in range(senders)]
    paused = [0.0] * senders
    sent, refused, accepted = [0] * senders, 0, 0
    news: list[tuple[float, int, float]] = []  # (heard at, by whom, resume_in)
    while min(clocks) < seconds:
        i = clocks.index(min(clocks))
        now = max(clocks[i], paused[i])
        for item in [n for n in news if n[0] <= now]:
            news.remove(item)
            rates[item[1]].heard(item[0], item[2])
        now += rates[i].reserve(now)
        rates[i].sent(now)
        sent[i] += 1
        tokens = min(burst, tokens + (now - at) * limit)
        at = now
        ok = tokens >= 1.0
        tokens -= 1.0 if ok else 0.0
        accepted += ok
        refused += not ok
        if not ok:
            paused[i] = now + rtt + 1.0
            rates[i].hold_until(paused[i])
        cuts = rates[i].cuts
        rates[i].observe(now + rtt, limited=not ok, sent_at=now)
        if hear and rates[i].cuts != cuts:
            news += [(now + rtt + latency, j, paused[i] - now - rtt)
                     for j in range(senders) if j != i]
        clocks[i] = now
    total = sum(sent)
    return accepted / seconds / limit, refused / total, min(sent) / total


def test_three_senders_behind_one_gateway_share_it_without_a_storm() -> None:
    """Three senders, each adapting to the 429s it gets and hearing the others' cuts: a
    fair share each, few 429s, most of the limit used. (A model with instant answers;
    the bench's gateway phase measures the daemon itself.)"""
    used, refused, smallest = gateway_model(3, hear=True)
    assert used >= 0.78
    assert refused <= 0.03
    assert smallest >= 0.3


def test_hearing_each_others_refusals_uses_more_of_the_limit() -> None:
    """Why refusals are shared (README "Pace", several daemons): alone, a sender cut for
    another's probe and a prober that keeps going until its own 429 make more refusals
    and lower plateaus."""
    alone, _, _ = gateway_model(3, hear=False)
    together, _, _ = gateway_model(3, hear=True)
    assert together > alone + 0.02


# ---------------------------------------------------------------- the gate


async def test_gate_without_limits_admits_at_once() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    for _ in range(3):  # within the burst the ramp allows
        await asyncio.wait_for(gate.admit(), timeout=5)
    assert gate.blocked_for() == 0.0


async def test_gate_pause_releases_a_job_whose_lease_cannot_wait() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    assert gate.pause(10.0) is True
    assert gate.pause(5.0) is False  # inside the current pause: nothing changes
    with pytest.raises(Released) as released:
        await gate.admit(patience=9.0)
    assert released.value.delay == 10.0
    assert gate.blocked_for() == 10.0
    clock.advance(4.0)
    assert gate.pause(20.0) is False  # extends the pause already logged
    with pytest.raises(Released) as released:
        await gate.admit(patience=5.0)
    assert released.value.delay == 20.0
    clock.advance(20.0)
    assert gate.blocked_for() == 0.0
    await gate.admit()
    assert gate.pause(1.0) is True  # a new pause after the old one ended
    assert gate.paused_total == pytest.approx(25.0)


async def test_gate_pause_keeps_a_job_whose_lease_can_wait() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    gate.pause(600.0)
    waiting = asyncio.create_task(gate.admit(patience=900.0))
    try:
        assert await still_waiting(waiting)
    finally:
        await cancel(waiting)


async def test_gate_circuit_open_releases_all_but_the_probe() -> None:
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    assert [t.event for t in gate.observe(401, clock())] == ["auth.circuit_open"]
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
    assert [t.event for t in gate.observe(200, clock())] == ["auth.circuit_closed"]
    for _ in range(3):
        await gate.admit()


async def test_gate_permission_circuit_opens_blind_on_a_run_of_403s_with_nothing_to_check() -> None:
    """A daemon that has read nothing yet cannot check a run of 403s: BLIND_RUN of them in
    a row open the permission circuit, probed by the next result GET (never batch-status,
    which says nothing about reading results), after 1 s; a readable answer closes it."""
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    events = [t.event for n in range(BLIND_RUN) for t in gate.observe(403, clock())]
    assert events == ["permission.circuit_open"]
    assert "no job known to be readable" in gate.refusals.because
    for request in ("result", "status"):
        with pytest.raises(Released) as released:
            await gate.admit(request=request)
        assert "permission" in released.value.why
    assert gate.blocked_for() == 1.0
    clock.advance(1.0)
    with pytest.raises(Released):
        await gate.admit(request="status")
    await gate.admit(request="result")  # the probe
    with pytest.raises(Released):
        await gate.admit(request="result")
    # batch-status answers, even 200s, leave the circuit alone.
    assert gate.observe(200, clock(), request="status") == []
    assert [t.event for t in gate.observe(202, clock())] == ["permission.circuit_closed"]


async def test_gate_permission_circuit_opens_when_a_control_is_refused_and_controls_probe_it(
) -> None:
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    landed = uuid.uuid4()
    gate.observe(200, clock())
    gate.refusals.remember(landed)
    clock.advance(5.0)
    assert gate.observe(403, clock()) == []  # a control will tell, not the run
    assert gate.refusals.ask()
    job, _ = gate.refusals.next_control(clock())
    assert job == landed
    sent = await gate.admit(request="control")
    changes = gate.controlled(landed, ControlAnswer("refused"), 403, sent)
    assert [t.event for t in changes] == ["permission.circuit_open"]
    assert "landed lately is refused too" in gate.refusals.because
    # Every job waits; the dispatcher looks again each second while controls probe.
    with pytest.raises(Released):
        await gate.admit()
    assert gate.blocked_for() == PERMISSION_RECHECK
    clock.advance(1.0)
    with pytest.raises(Released):
        await gate.admit()  # not a job's turn to probe: a control's
    job, _ = gate.refusals.next_control(clock())
    assert job == landed
    sent = await gate.admit(request="control")
    changes = gate.controlled(landed, ControlAnswer("readable"), 200, sent)
    assert [t.event for t in changes] == ["permission.circuit_closed"]
    await gate.admit()


async def test_a_control_answers_429_like_any_request() -> None:
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    job = uuid.uuid4()
    gate.refusals.remember(job)
    gate.refusals.ask()
    gate.refusals.next_control(clock())
    sent = await gate.admit(request="control")
    changes = gate.controlled(job, ControlAnswer("inconclusive", pause_for=2.0), 429, sent)
    assert "upstream.paused" in [t.event for t in changes]
    assert gate.paused_until == 102.0
    assert gate.refusals.in_flight is None and not gate.permission.is_open


async def test_gate_pause_wins_over_the_probe() -> None:
    clock = Clock(100.0)
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    gate.observe(401, clock())
    clock.advance(30.0)
    gate.pause(60.0)
    with pytest.raises(Released) as released:
        await gate.admit(patience=10.0)
    assert released.value.delay == 60.0
    assert gate.blocked_for() == 60.0
    clock.advance(60.0)
    await gate.admit()  # the probe is still there once the pause is over


async def test_a_429_pauses_cuts_the_rate_and_says_so_once() -> None:
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    sent = await gate.admit()
    events = [t.event for t in gate.observe(429, sent, pause_for=3600.0)]
    assert events == ["upstream.paused", "rate.limited"]
    assert gate.blocked_for() == 3600.0  # an absurd Retry-After is clamped by the policy, not here
    assert gate.rate.allowed < RAMP_START
    # The other requests of the same moment: same pause, same event, nothing new to say.
    assert gate.observe(429, sent, pause_for=3600.0) == []


async def test_while_the_rate_ramps_a_crowd_books_no_more_than_a_moment_ahead() -> None:
    """A thousand workers asking at once at the ramp's 200/s would book five seconds of
    slots and keep them while the rate grows past them; they book a quarter of a second
    and ask again (README "Pace")."""
    clock = Clock()
    gate = Gate(max_rps=0, probe_interval=30.0, clock=clock)
    crowd = [asyncio.create_task(gate.admit(patience=30.0)) for _ in range(1000)]
    try:
        assert await still_waiting(crowd[-1])
        booked_ahead = gate.rate.tat - clock()
        assert booked_ahead <= BOOK_AHEAD + BURST + 2.0 / RAMP_START
        # Only booked departures can leave (the clock stands still): the rest wait.
        booked = int((BOOK_AHEAD + BURST) * RAMP_START) + 2
        assert sum(task.done() for task in crowd) <= booked
    finally:
        for task in crowd:
            await cancel(task)


async def test_a_known_limit_is_booked_in_full() -> None:
    """With the limit found (or HARVESTER_MAX_RPS reached) the rate no longer grows:
    every departure is booked at once, evenly spaced, and nobody polls for a slot."""
    clock = Clock()
    gate = Gate(max_rps=100.0, probe_interval=30.0, clock=clock)
    crowd = [asyncio.create_task(gate.admit(patience=30.0)) for _ in range(300)]
    try:
        assert await still_waiting(crowd[-1])
        assert gate.rate.tat - clock() == pytest.approx(300 / 100.0, abs=0.05)
    finally:
        for task in crowd:
            await cancel(task)


async def test_gate_spaces_requests_at_max_rps() -> None:
    clock = Clock()
    gate = Gate(max_rps=1 / 600, probe_interval=30.0, clock=clock)  # one request per 10 min
    await asyncio.wait_for(gate.admit(), timeout=5)
    second = asyncio.create_task(gate.admit())
    try:
        assert await still_waiting(second)
        assert gate.rate.tat == pytest.approx(1000.0 + 1200.0)  # it holds the next slot
    finally:
        await cancel(second)


async def test_gate_refuses_a_slot_the_lease_would_not_cover() -> None:
    clock = Clock()
    gate = Gate(max_rps=1 / 600, probe_interval=30.0, clock=clock)
    await gate.admit()
    with pytest.raises(Released) as released:
        await gate.admit(patience=30.0)
    assert released.value.delay == pytest.approx(600.0, abs=BURST)


async def test_gate_does_not_bank_idle_time_into_a_burst() -> None:
    clock = Clock()
    gate = Gate(max_rps=1 / 600, probe_interval=30.0, clock=clock)
    await asyncio.wait_for(gate.admit(), timeout=5)
    clock.advance(3600.0)  # an hour without requests
    await asyncio.wait_for(gate.admit(), timeout=5)
    third = asyncio.create_task(gate.admit())
    try:
        assert await still_waiting(third)  # the next request still waits a full interval
    finally:
        await cancel(third)


async def test_gate_uses_the_throttle_when_it_is_slower_than_max_rps() -> None:
    clock = Clock()
    gate = Gate(max_rps=100, probe_interval=30.0, clock=clock)
    await gate.admit()
    for _ in range(gate.throttle.threshold):
        gate.observe(502, clock(), fault=True)
    assert gate.throttle.spacing == 0.05
    clock.advance(1.0)
    await gate.admit()
    assert gate.rate.tat == pytest.approx(clock() + 0.05)
