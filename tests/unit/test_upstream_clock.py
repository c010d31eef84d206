"""Upstream's clock as its Date headers show it (README "Probes and metrics",
``harvester_upstream_clock_skew_seconds``): pure, times are arguments."""

from __future__ import annotations

import email.utils
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.upstream_clock import AGREES, NOTABLE, OURS_STEPPED, STEPPED, WINDOW, UpstreamClock

T0 = 1_772_366_400.0  # 2026-03-01 12:00:00 UTC


def answered(clock: UpstreamClock, ours: float, skew: float, latency: float = 0.0,
             stamped_at: float = 0.5) -> None:
    """An answer sent at ``ours`` (our clock), stamped by upstream ``stamped_at`` of the
    way through its ``latency``, whose clock runs ``skew`` seconds from ours."""
    upstream = ours + stamped_at * latency + skew
    clock.observe(email.utils.formatdate(math.floor(upstream), usegmt=True), ours, ours + latency)


def test_nothing_measured_yet() -> None:
    clock = UpstreamClock()
    assert clock.skew is None
    assert clock.transition() is None
    for date in (None, "", "not a date", "5"):
        clock.observe(date, T0, T0 + 0.01)
    assert clock.skew is None


@pytest.mark.parametrize("skew", [-20.0, -3.2, 0.0, 0.4, 20.0, 7200.0, -86400.0])
def test_the_median_finds_the_skew_within_a_fraction_of_a_second(skew: float) -> None:
    """Date is a whole second, so one answer is off by up to half a second; the median
    over answers sent at every phase of the second is not."""
    clock = UpstreamClock()
    rng = random.Random(7)
    for n in range(WINDOW):
        answered(clock, T0 + n * 0.37 + rng.random(), skew, latency=rng.uniform(0.001, 0.05))
    assert clock.skew == pytest.approx(skew, abs=0.15)


@given(skew=st.floats(min_value=-6 * 3600, max_value=6 * 3600),
       phases=st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                       min_size=1, max_size=WINDOW),
       latency=st.floats(min_value=0.0, max_value=2.0),
       stamped_at=st.floats(min_value=0.0, max_value=1.0))
def test_the_estimate_is_never_further_than_half_a_second_and_half_the_round_trip(
        skew: float, phases: list[float], latency: float, stamped_at: float) -> None:
    clock = UpstreamClock()
    for n, phase in enumerate(phases):
        answered(clock, T0 + 10 * n + phase, skew, latency, stamped_at)
    assert clock.skew is not None
    assert abs(clock.skew - skew) <= 0.5 + latency / 2 + 1e-6


def test_a_few_answers_from_a_stray_clock_do_not_move_it() -> None:
    clock = UpstreamClock()
    for n in range(WINDOW):
        answered(clock, T0 + n * 0.31, -20.0)
    for n in range(5):  # a proxy's own clock, an hour off
        answered(clock, T0 + 30 + n, 3600.0)
    assert clock.skew == pytest.approx(-20.0, abs=0.6)


def test_the_window_forgets_old_answers() -> None:
    clock = UpstreamClock()
    for n in range(WINDOW):
        answered(clock, T0 + n * 0.29, 20.0)
    for n in range(WINDOW):
        answered(clock, T0 + 100 + n * 0.29, 0.0)
    assert clock.skew == pytest.approx(0.0, abs=0.6)


def test_one_line_when_the_skew_passes_a_few_seconds_and_one_when_it_is_back() -> None:
    clock = UpstreamClock(window=1)
    said = []
    for skew in (0.0, 1.0, NOTABLE - 0.6, NOTABLE + 1, 20.0, NOTABLE - 0.6, AGREES + 0.6, 2.0,
                 0.0, 0.0, -NOTABLE - 1, -20.0, 0.0):
        answered(clock, T0, skew, stamped_at=0.0)
        said.append(clock.transition())
    assert said == [None, None, None, "skewed", None, None, None, None, "agrees", None,
                    "skewed", None, "agrees"]


# ---------------------------------------------------------------- the floor


@given(skew=st.floats(min_value=-6 * 3600, max_value=6 * 3600),
       answers=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                                  st.floats(min_value=0.0, max_value=2.0),
                                  st.floats(min_value=0.0, max_value=1.0)),
                        min_size=1, max_size=2 * WINDOW))
def test_the_floor_is_never_above_the_skew(
        skew: float, answers: list[tuple[float, float, float]]) -> None:
    """Date rounds down and is stamped before the answer arrives: whatever the phase of
    the second, the round trip and where in it upstream stamped, Date − received is at
    most the skew, so a wait read with the floor is never shorter than meant."""
    clock = UpstreamClock()
    for n, (phase, latency, stamped_at) in enumerate(answers):
        answered(clock, T0 + 10 * n + phase, skew, latency, stamped_at)
        assert clock.floor is not None
        assert clock.floor <= skew + 1e-6


@pytest.mark.parametrize("skew", [-20.0, 0.0, 0.4, 20.0])
def test_the_floor_comes_within_a_round_trip_of_the_skew(skew: float) -> None:
    """Answers at every phase of the second: one of them was stamped just after a
    second began, and its reading is the skew less its trip."""
    clock = UpstreamClock()
    rng = random.Random(11)
    for n in range(WINDOW):
        answered(clock, T0 + n * 0.37 + rng.random(), skew, latency=rng.uniform(0.001, 0.03))
    assert clock.floor is not None
    assert skew - 0.03 - 0.1 <= clock.floor <= skew


def test_a_step_of_either_clock_starts_the_floor_again() -> None:
    clock = UpstreamClock()
    for n in range(WINDOW):
        clock.observe(email.utils.formatdate(math.floor(T0 + n * 0.37 + 5.0), usegmt=True),
                      T0 + n * 0.37, T0 + n * 0.37, steady=1000.0)
    high = clock.floor
    assert high is not None and 4.0 <= high <= 5.0
    # Upstream's clock stepped back 5 s: the next reading is far below the floor.
    answered(clock, T0 + 40.0, 0.0)
    assert clock.floor is not None and clock.floor <= 0.0
    # Ours stepped (the wall clock moved 2 s against the monotonic one): a reading that
    # alone would not lower the floor still starts it again.
    clock.observe(email.utils.formatdate(math.floor(T0 + 50.0), usegmt=True),
                  T0 + 50.0, T0 + 50.0, steady=1000.0)
    before = clock.floor
    clock.observe(email.utils.formatdate(math.floor(T0 + 60.0) - 1, usegmt=True),
                  T0 + 60.0, T0 + 60.0, steady=1002.0)
    assert before is not None and clock.floor is not None and clock.floor < before


def test_the_floor_forgets_readings_older_than_its_window() -> None:
    clock = UpstreamClock(window=4)
    clock.observe(email.utils.formatdate(math.floor(T0), usegmt=True), T0 - 0.001, T0)
    assert clock.floor == pytest.approx(math.floor(T0) - T0, abs=1e-6)
    for n in range(1, 5):  # later answers stamped late in their second
        clock.observe(email.utils.formatdate(math.floor(T0 + n), usegmt=True),
                      T0 + n + 0.9, T0 + n + 0.9)
    assert clock.floor == pytest.approx(-0.9 - (T0 - math.floor(T0)), abs=1e-6)


def _floors_as_defined(readings: list[tuple[float, float]], window: int) -> list[float]:
    """The floor as README "How upstream answers are handled" defines it: the highest
    Date − received over the last ``window`` answers since the last step (a reading more
    than STEPPED below the floor, or our clock moved against the monotonic one)."""
    floors: list[float] = []
    kept: list[float] = []
    steady: float | None = None
    for low, now_steady in readings:
        stepped = steady is not None and abs(now_steady - steady) > OURS_STEPPED
        steady = now_steady
        if stepped or (kept and low < max(kept[-window:]) - STEPPED):
            kept = []
        kept.append(low)
        floors.append(max(kept[-window:]))
    return floors


@given(window=st.integers(min_value=1, max_value=8),
       readings=st.lists(st.tuples(st.integers(min_value=-4, max_value=4),
                                   st.floats(min_value=0.0, max_value=1.0),
                                   st.sampled_from([0.0, 0.0, 0.0, 2.0])),
                         min_size=1, max_size=60))
def test_the_floor_is_the_highest_reading_of_its_window(
        window: int, readings: list[tuple[int, float, float]]) -> None:
    """Kept as a sliding maximum (cheap per answer): the same floor as the highest
    reading of the window, through steps of either clock and readings of equal value."""
    clock = UpstreamClock(window=window)
    lows: list[tuple[float, float]] = []
    steady = 0.0
    for n, (seconds, into, step) in enumerate(readings):
        steady += step
        received = T0 + 10 * n + into
        date = email.utils.formatdate(math.floor(T0) + 10 * n + seconds, usegmt=True)
        clock.observe(date, received, received, steady=steady)
        lows.append((math.floor(T0) + 10 * n + seconds - received, steady))
        assert clock.floor == pytest.approx(_floors_as_defined(lows, window)[-1], abs=1e-9)
