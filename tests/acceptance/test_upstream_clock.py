"""Upstream's clock is not ours (README "How upstream answers are handled").

An HTTP-date in Retry-After names a moment on upstream's clock. The simulator here runs
its clock 20 s behind or ahead of the machine's (its Date header and every HTTP-date it
sends), and the daemon must still wait exactly what upstream asked: the same requests
per job as with clocks that agree, no request inside a 429's wait, and rows landing
within seconds of when upstream allowed the poll that found them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import pytest

from harvester.tools.simulator import Mix, Served
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import new_ids
from tests.helpers import enqueue, wait_for_states

JOBS = 300
GETS_PER_JOB = 3
"""Two 202s (Retry-After 3 s, as an HTTP-date), then the row."""
IN_FLIGHT = 0.05
"""A request that reached upstream this soon after its 429 left was already on its way."""


def requests_inside_pauses(log: list[Served]) -> int:
    """Requests that reached upstream while one of its 429s asked every client to wait
    (less those already on their way when the 429 left)."""
    pauses = [(s.finished, s.finished + s.retry_after) for s in log
              if s.status == 429 and s.retry_after is not None]
    return sum(1 for s in log for start, end in pauses if start + IN_FLIGHT <= s.started < end)


def landing_lags(sim: Any, landed_at: dict[str, float]) -> list[float]:
    """Per job: when its row reached the mirror minus when upstream's last 202 allowed
    the poll that found it (after any pause that covered that moment)."""
    lags = []
    for job_id, record in sim.state.jobs.items():
        if record.served_rows and record.ready_wall is not None and str(job_id) in landed_at:
            ready = sim.simulator._effective_ready(record.ready_wall)
            lags.append(landed_at[str(job_id)] - ready)
    return lags


@pytest.mark.parametrize("skew", [-20.0, 0.0, 20.0], ids=["behind-20s", "agreeing", "ahead-20s"])
async def test_http_dates_are_read_on_upstreams_clock(
    skew: float, db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    mix = Mix(pending_min=2, pending_max=2, retry_after=3.0, retry_after_style="date",
              rate_retry_after_style="date", clock_skew=skew, seed=21)
    sim = await simulators(mix)
    limited = uuid.uuid4()
    sim.script({limited: ["429:2:date", "200"]})
    ids = new_ids(JOBS)
    await enqueue(pool, [limited, *ids])

    fleet = fleets(db_url, sim.url)
    daemon = fleet.spawn()
    started = time.monotonic()
    await wait_for_states(pool, 120, landed=JOBS + 1)
    took = time.monotonic() - started
    status, metrics = await daemon.get("/metrics")
    assert await fleet.stop(daemon) == 0
    fleet.assert_healthy_logs()

    stats = sim.state.stats()
    landed_at = {str(r["job_id"]): r["t"] for r in await pool.fetch(
        "SELECT job_id, extract(epoch FROM landed_at)::float8 AS t FROM harvester.jobs")}
    lags = landing_lags(sim, landed_at)
    inside = requests_inside_pauses(sim.state.log)
    per_job = stats["requests"] / (JOBS + 1)
    print(f"skew {skew:+.0f} s: {stats['requests']} GETs for {JOBS + 1} jobs ({per_job:.2f} per "
          f"job), {inside} inside a 429's wait (arrived during a pause: "
          f"{stats['during_pause']}), {stats['early_polls']} early, worst lag "
          f"{max(lags):.2f} s over {len(lags)} jobs, {took:.1f} s")

    assert stats["statuses"].get("429", 0) >= 1
    assert per_job <= GETS_PER_JOB + 0.25, per_job
    assert inside == 0
    assert stats["early_polls"] == 0, stats["early_examples"]
    assert len(lags) >= JOBS * 0.9
    assert max(lags) <= 5.0, sorted(lags)[-5:]

    # The skew is measured, from the Date headers, with its sign: upstream minus ours.
    assert status == 200
    gauge = next(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("harvester_upstream_clock_skew_seconds "))
    assert gauge == pytest.approx(skew, abs=1.5)
    said = daemon.events("upstream.clock_skewed")
    if skew:
        assert len(said) == 1 and said[0]["skew_seconds"] == pytest.approx(skew, abs=1.5)
    else:
        assert said == []
