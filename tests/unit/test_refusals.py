"""Whose is a 403 (README "How upstream answers are handled"): the judge alone, with time
as an argument, then with the policy in a small simulation of many jobs, checked with
hypothesis: another organisation's jobs fail ``forbidden`` after three refusals, and a
token that loses ``jobs:read`` fails no job."""

from __future__ import annotations

import heapq
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.circuit import Circuit
from harvester.policy import FORBIDDEN_AFTER, Context, Fail, Hold, Job, PolicyConfig, Response, decide
from harvester.refusals import BLIND_RUN, FIRST_PROBE, MEMORY, SLACK, Refusals


def judge(known: int = 0) -> Refusals:
    refusals = Refusals(Circuit(30.0, first_probe=FIRST_PROBE))
    for _ in range(known):
        refusals.remember(uuid.uuid4())
    return refusals


# ---------------------------------------------------------------- the verdict


@pytest.mark.parametrize(("readable_sent", "refused_sent", "verdict"), [
    (None, 100.0, "unknown"),
    (100.0, 100.0, "job"),
    (100.5, 100.0, "job"),  # sent after it: the token read after this one was refused
    (100.0 - SLACK, 100.0, "job"),
    (100.0 - SLACK - 0.01, 100.0, "unknown"),  # too long before to vouch for it
])
def test_a_refusal_is_the_jobs_when_a_request_sent_about_then_was_answered(
        readable_sent: float | None, refused_sent: float, verdict: str) -> None:
    refusals = judge()
    if readable_sent is not None:
        refusals.readable(readable_sent, readable_sent + 0.1)
    assert refusals.verdict(refused_sent) == verdict


def test_while_a_refused_control_holds_the_circuit_open_every_refusal_is_the_tokens() -> None:
    refusals = judge(known=1)
    refusals.ask()
    job_id, _ = refusals.next_control(100.0)
    assert job_id is not None
    refusals.controlled(job_id, "refused", 100.0, 100.1)
    refusals.readable(99.0, 100.2)  # on its way before: proves nothing now
    assert refusals.circuit.is_open
    assert refusals.verdict(200.0) == "token"


def test_while_a_run_alone_holds_the_circuit_open_nobody_can_tell() -> None:
    """Opened blind, the circuit is a guess: refusals meanwhile still count (never the
    third), so the refused jobs back off and the probes find other jobs first."""
    refusals = judge()
    for n in range(BLIND_RUN):
        refusals.refused(100.0 + n, 100.1 + n)
    assert refusals.circuit.is_open and refusals.blind
    assert refusals.verdict(200.0) == "unknown"


# ---------------------------------------------------------------- opening and closing


def test_blind_a_run_of_refusals_opens_the_circuit_and_a_readable_answer_breaks_the_run() -> None:
    refusals = judge()
    assert [refusals.refused(100.0, 100.1) for _ in range(BLIND_RUN - 1)] == [None] * (BLIND_RUN - 1)
    refusals.readable(99.5, 100.2)  # an answer sent within SLACK: those were the jobs'
    assert refusals.run == 0
    assert [refusals.refused(103.0 + n, 103.1 + n) for n in range(BLIND_RUN)] == [
        None] * (BLIND_RUN - 1) + ["opened"]
    assert "no job known to be readable" in refusals.because
    # A guess: a readable answer to any request sent after the run's first refused one
    # closes it (one sent before proves nothing).
    assert refusals.readable(102.9, 110.0) is None
    assert refusals.readable(103.5, 110.1) == "closed"


def test_blind_refusals_already_on_their_way_with_the_first_count_once() -> None:
    """A batch of foreign IDs claimed together leaves together: the 64 refusals of one
    volley are one event; what decides is what the requests sent after it meet."""
    refusals = judge()
    assert {refusals.refused(100.0 + n / 1000, 100.2 + n / 1000) for n in range(64)} == {None}
    assert refusals.run == 1
    refusals.readable(100.25, 100.3)  # the next job sent: readable
    assert not refusals.circuit.is_open and refusals.run == 0
    # Sent after the first came back, refused: those count (a token without jobs:read).
    assert [refusals.refused(102.0 + n / 10, 102.05 + n / 10) for n in range(BLIND_RUN)] == [
        None] * (BLIND_RUN - 1) + ["opened"]


def test_with_a_job_to_check_with_a_run_of_refusals_opens_nothing() -> None:
    refusals = judge(known=1)
    assert [refusals.refused(100.0 + n, 100.1 + n) for n in range(3 * BLIND_RUN)] == [None] * (
        3 * BLIND_RUN)
    assert not refusals.circuit.is_open


def test_a_refused_control_opens_the_circuit_and_a_readable_one_closes_it() -> None:
    refusals = judge()
    landed = uuid.uuid4()
    refusals.remember(landed)
    assert refusals.next_control(100.0) == (None, math.inf)  # nobody asked
    assert refusals.ask()
    assert refusals.next_control(100.0) == (landed, 0.0)
    assert refusals.next_control(100.0) == (None, math.inf)  # one at a time
    assert refusals.controlled(landed, "refused", 100.0, 100.1) == "opened"
    assert "landed lately is refused too" in refusals.because
    # Its probes are controls too: after 1 s, 2 s, 4 s ...
    job_id, wait = refusals.next_control(100.5)
    assert job_id is None and wait == pytest.approx(0.6)
    assert refusals.next_control(101.1) == (landed, 0.0)
    assert refusals.controlled(landed, "refused", 101.1, 101.2) is None
    job_id, wait = refusals.next_control(101.2)
    assert job_id is None and wait == pytest.approx(1.9)
    assert refusals.next_control(103.1) == (landed, 0.0)
    assert refusals.controlled(landed, "readable", 103.1, 103.2) == "closed"
    assert refusals.verdict(103.1) == "job"


def test_a_control_refused_while_others_are_answered_is_the_controls_own_business() -> None:
    refusals = judge()
    odd, good = uuid.uuid4(), uuid.uuid4()
    refusals.remember(good)
    refusals.remember(odd)
    refusals.ask()
    assert refusals.next_control(100.0) == (odd, 0.0)
    refusals.readable(100.2, 100.3)  # another job, sent after the control, was answered
    assert refusals.controlled(odd, "refused", 100.0, 100.4) is None
    assert not refusals.circuit.is_open
    assert list(refusals.known) == [good]


@pytest.mark.parametrize("result", ["readable", "inconclusive"])
def test_a_control_whose_job_is_gone_is_forgotten(result: str) -> None:
    refusals = judge()
    gone = uuid.uuid4()
    refusals.remember(gone)
    refusals.ask()
    refusals.next_control(100.0)
    refusals.controlled(gone, result, 100.0, 100.1, gone=True)  # type: ignore[arg-type]
    assert not refusals.can_check
    assert refusals.in_flight is None


def test_controls_take_turns_most_recent_first_and_the_memory_is_bounded() -> None:
    refusals = judge()
    ids = [uuid.uuid4() for _ in range(MEMORY + 3)]
    for job_id in ids:
        refusals.remember(job_id)
    assert list(refusals.known) == ids[-MEMORY:]
    picked = []
    for n in range(3):
        refusals.ask()
        control, _ = refusals.next_control(100.0 + n)
        assert control is not None
        picked.append(control)
        refusals.controlled(control, "inconclusive", 100.0 + n, 100.1 + n)
    assert picked == [ids[-1], ids[-2], ids[-3]]


def test_nothing_to_check_with_asks_for_nothing() -> None:
    refusals = judge()
    assert not refusals.ask()
    assert refusals.next_control(100.0) == (None, math.inf)


# ---------------------------------------------------------------- with the policy, many jobs

CONFIG = PolicyConfig()
EPOCH = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def simulate(*, foreign: int, ordinary: int, lost_at: float, latency: float, seed: int,
             remembered: bool, until: float = 120.0) -> dict[str, set[int]]:
    """Jobs polled as the engine would: each GET leaves when its job is due, is answered
    ``latency`` later (judged by upstream halfway), and decided with the judge's verdict
    (after a control, when one is asked for: answered at once, as the truth is). Foreign
    jobs are always refused; ordinary ones answer 202 (wait 3 s) until the token loses
    jobs:read at ``lost_at``, then 403. Returns which jobs failed and which were
    refused while the circuit was open."""
    import random  # noqa: PLC0415

    rng = random.Random(seed)
    refusals = judge()
    control = uuid.uuid4()
    if remembered:
        refusals.remember(control)
    jobs = {n: Job(job_id=uuid.UUID(int=n + 1), state="pending", age_origin=EPOCH)
            for n in range(foreign + ordinary)}
    # (when it may leave, when it became due, job): while the circuit is open, the probe
    # is the job due longest, as the claim orders them.
    due = [(t, t, n) for n, t in ((n, rng.random()) for n in jobs)]
    heapq.heapify(due)
    failed: set[int] = set()
    while due:
        sent, since, n = heapq.heappop(due)
        if sent > until:
            break
        if refusals.circuit.is_open and not refusals.circuit.try_probe(sent):
            heapq.heappush(due, (refusals.circuit.next_probe_at, since, n))
            continue
        judged, answered = sent + latency / 2, sent + latency
        readable = n >= foreign and judged < lost_at
        if readable:
            refusals.readable(sent, answered)
            refusals.remember(jobs[n].job_id)  # as a landed job: a control from now on
            heapq.heappush(due, (answered + 3.0, answered + 3.0, n))
            continue
        refusals.refused(sent, answered)
        verdict = refusals.verdict(sent)
        if verdict == "unknown" and refusals.ask():
            job_id, _ = refusals.next_control(answered)
            if job_id is not None:  # one control for this refusal, sent after it
                refusals.controlled(job_id, "readable" if answered < lost_at else "refused",
                                    answered, answered + latency)
            verdict = refusals.verdict(sent)
        decision = decide(Response(403), jobs[n], CONFIG, EPOCH, rng.random,
                          Context(refusal=verdict))
        if isinstance(decision, Fail):
            failed.add(n)
            continue
        assert isinstance(decision, Hold)
        jobs[n] = replace(jobs[n], consecutive_403s=decision.consecutive_403s)
        again = answered + decision.delay + rng.random() / 100
        heapq.heappush(due, (again, again, n))
    return {"failed": failed, "foreign": set(range(foreign)),
            "ordinary": set(range(foreign, foreign + ordinary))}


@settings(deadline=None, max_examples=60)
@given(foreign=st.integers(min_value=1, max_value=40), ordinary=st.integers(min_value=0, max_value=40),
       latency=st.floats(min_value=0.001, max_value=0.5), seed=st.integers(0, 2**16))
def test_foreign_jobs_fail_forbidden_when_the_token_reads(
        foreign: int, ordinary: int, latency: float, seed: int) -> None:
    """Another organisation's jobs, among readable ones or alone, all fail once the
    daemon has a job to check with, whatever the order and the latency. (A daemon that
    has read nothing yet, alone with foreign jobs, cannot tell them from a token without
    the permission: the acceptance test feeds it ordinary jobs behind them.)"""
    jobs = simulate(foreign=foreign, ordinary=ordinary, lost_at=math.inf, latency=latency,
                    seed=seed, remembered=True)
    assert jobs["failed"] == jobs["foreign"]


@settings(deadline=None, max_examples=60)
@given(foreign=st.integers(min_value=0, max_value=30), ordinary=st.integers(min_value=1, max_value=60),
       lost_at=st.floats(min_value=0.0, max_value=20.0), latency=st.floats(min_value=0.001, max_value=0.5),
       seed=st.integers(0, 2**16), remembered=st.booleans())
def test_a_token_that_loses_jobs_read_fails_no_ordinary_job(
        foreign: int, ordinary: int, lost_at: float, latency: float, seed: int,
        remembered: bool) -> None:
    """The token loses jobs:read at any moment, among any mix: no job that was readable
    fails ``forbidden`` (foreign ones may or may not have been failed first)."""
    jobs = simulate(foreign=foreign, ordinary=ordinary, lost_at=lost_at, latency=latency,
                    seed=seed, remembered=remembered)
    assert not jobs["failed"] & jobs["ordinary"]
    assert FORBIDDEN_AFTER == 3
