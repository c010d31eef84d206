"""Upstream misbehaves in every way it can: 5xx bursts, resets, answers slower than the
timeout, bodies cut short, invalid JSON, HTML with a 200, 50 MB bodies.

The daemon stays up, its memory stays bounded, and every job ends where its fate says:
landed, stuck, or failed with a reason; a job whose every answer is garbage stays
pending with a next poll and a ``last_error`` that says what was wrong.
"""

from __future__ import annotations

import itertools
import uuid

import asyncpg

from harvester.tools.simulator import Mix, plan_for
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import (
    LandedWitness,
    assert_mirror_is_upstream,
    audit,
    expected_counts,
    expected_end,
    new_ids,
)
from tests.helpers import enqueue, wait_for_states

JOBS = 1500
MIX = Mix.preset("chaos", seed=41)
CHAOS_ENV = {"HARVESTER_STUCK_RECHECK": "2", "HARVESTER_CONCURRENCY": "32"}
PEAK_RSS_LIMIT_KIB = 200 * 1024

# Scripted trouble, then the row: each of these must land.
THEN_LANDS: dict[str, list[str]] = {
    "a burst of 500s shorter than STUCK_AFTER": ["500", "500", "200"],
    "502, 503 without Retry-After, 504": ["502", "503", "504", "200"],
    "503 with Retry-After": ["503:1", "200"],
    "a connection reset": ["reset", "reset", "200"],
    "an answer slower than the timeout": ["slow:4", "200"],
    "a body cut short": ["truncated", "200"],
    "invalid JSON": ["badjson", "200"],
    "200 text/html": ["html", "200"],
    "a 50 MB body": ["huge", "200"],
    "a row for another job": ["mismatch", "200"],
}
# The same trouble forever: the job stays pending and last_error says why.
FOREVER: dict[str, tuple[str, str]] = {
    "html": ("html", "HTML page"),
    "bad JSON": ("badjson", "not a valid result"),
    "text/plain": ("textplain", "content-type text/plain"),
    "timeout": ("slow:4", "timeout"),
    "truncated": ("truncated", "truncated"),
    "reset": ("reset", "connection"),
    "50 MB": ("huge", "HARVESTER_MAX_BODY_BYTES"),
    "502": ("502", "502"),
    "wrong job": ("mismatch", "is for job"),
}


async def test_upstream_chaos_never_downs_the_daemon_and_every_job_ends_with_a_reason(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    witness: LandedWitness,
) -> None:
    sim = await simulators(MIX)
    drawn = new_ids(JOBS)
    lands = {name: uuid.uuid4() for name in THEN_LANDS}
    forever = {name: uuid.uuid4() for name in FOREVER}
    sim.script({lands[name]: steps for name, steps in THEN_LANDS.items()})
    sim.script({forever[name]: [step] for name, (step, _) in FOREVER.items()})
    await enqueue(pool, [*drawn, *lands.values(), *forever.values()])
    expected = expected_counts(drawn, MIX)
    assert min(expected.values()) > 0, expected  # the draw covers every ending

    fleet = fleets(db_url, sim.url, CHAOS_ENV)
    daemon = fleet.spawn()
    await wait_for_states(pool, 150, landed=expected["landed"] + len(lands),
                          failed=expected["failed"], stuck=expected["stuck"],
                          pending=len(forever))
    assert daemon.proc is not None and daemon.proc.poll() is None
    peak_kib = fleet.sample_rss(daemon)
    _, metrics = await daemon.get("/metrics")
    # GETs asking whose a 403 was (README "How upstream answers are handled"): no polls.
    checks = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("harvester_permission_checks_total{"))
    assert await fleet.stop(daemon) == 0
    print(f"chaos: {sim.state.stats()['statuses']}, peak RSS {peak_kib / 1024:.0f} MiB")

    # Never down, never out of memory: the 50 MB bodies were refused, not read.
    fleet.assert_healthy_logs()
    assert 0 < peak_kib < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak_kib} KiB"
    served_kinds = {s.kind for s in sim.state.log}
    assert {"truncated", "reset", "html", "badjson", "500", "502", "503", "504"} <= served_kinds
    # The slow answers and the 50 MB bodies were served (or hung up on: "").
    for fate in ("slow", "huge"):
        jobs = [j for j in drawn if plan_for(j, MIX).fate == fate]
        assert jobs
        for job_id in jobs:
            assert any(s.kind in (fate, "") for s in sim.requests_for(job_id)), job_id

    found = await audit(pool)
    assert found.problems() == []
    assert sim.state.overlaps == 0
    assert sim.state.stats()["early_polls"] == 0
    # Every request upstream saw is a poll on the books: timeouts, resets, cut bodies;
    # or a control, asking whose a 403 was.
    assert found.polls == sim.state.requests - checks

    rows = {r["job_id"]: r for r in await pool.fetch(
        "SELECT job_id, state, failed_reason, last_error, next_poll_at, polls "
        "FROM harvester.jobs")}
    # Per-job poll errors: the first few of each window in full, the rest summarised
    # (README "Operating": logs stay proportionate during an incident).
    poll_errors = {e["job_id"]: e for e in daemon.events("job.poll_error")}
    summarised = sum(e["more"] for e in daemon.events("log.summary")
                     if e["summarised"] == "job.poll_error")
    troubled = 0
    for job_id in drawn:
        state, reason = expected_end(job_id, MIX)
        row = rows[job_id]
        assert (row["state"], row["failed_reason"]) == (state, reason), dict(row)
        if state in ("failed", "stuck"):
            assert row["last_error"], dict(row)
        # A landed job's last_error is cleared; the trouble it met on the way was logged
        # against it, with what was wrong.
        fate = plan_for(job_id, MIX).fate
        if fate.startswith("malformed") or fate in ("truncated", "huge", "slow", "fault:reset"):
            troubled += 1
            if str(job_id) in poll_errors:
                assert poll_errors[str(job_id)]["error"], (fate, poll_errors[str(job_id)])
    assert poll_errors
    assert len(poll_errors) + summarised >= troubled
    for name, job_id in lands.items():
        row = rows[job_id]
        assert row["state"] == "landed", (name, dict(row))
        # What the simulator served, in order ("" when the daemon hung up before the
        # simulator's handler was through: the slow answer, the 50 MB body).
        seen = [s.kind for s in sim.requests_for(job_id)]
        first = THEN_LANDS[name][0].split(":")[0]
        assert seen[-1] == "200" and seen[0] in (first, ""), (name, seen)
    for name, (_, why) in FOREVER.items():
        row = rows[forever[name]]
        assert row["state"] == "pending" and row["next_poll_at"] is not None, (name, dict(row))
        assert why in (row["last_error"] or ""), (name, row["last_error"])
        assert row["polls"] >= 2, (name, dict(row))
    stuck_open = {r["job_id"] for r in await pool.fetch(
        "SELECT job_id FROM harvester.open_stuck_jobs")}
    assert stuck_open == {j for j in drawn if expected_end(j, MIX)[0] == "stuck"}
    assert found.mirror_rows == expected["landed"] + len(lands)
    assert witness.duplicates == {}
    await assert_mirror_is_upstream(pool, MIX.seed)


async def test_a_connection_reset_counts_as_a_poll_of_its_own(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    """``polls`` counts every result request made for a job (README "Querying the
    mirror"), and the fault backoff
    decides when the next one goes out: a GET that met a reset must not be repeated
    at once, unseen, by the HTTP client."""
    sim = await simulators()
    warm, reset = uuid.uuid4(), uuid.uuid4()
    sim.script({warm: ["200"], reset: ["reset", "reset", "200"]})
    await enqueue(pool, [warm])
    fleet = fleets(db_url, sim.url)
    daemon = fleet.spawn()
    await wait_for_states(pool, 30, landed=1)
    # A keep-alive connection now exists; the next request reuses it and meets a reset.
    await enqueue(pool, [reset])
    await wait_for_states(pool, 30, landed=2)
    assert await fleet.stop(daemon) == 0
    served = sim.requests_for(reset)
    row = await pool.fetchrow("SELECT polls, last_status FROM harvester.jobs WHERE job_id = $1",
                              reset)
    assert row is not None
    gaps = [round(b.started - a.finished, 2) for a, b in itertools.pairwise(served)]
    assert row["polls"] == len(served) == 3, (row["polls"], [s.kind for s in served], gaps)
    # Each retry came after the fault backoff (at least 1 s), not at once.
    assert min(gaps) >= 1.0, gaps
