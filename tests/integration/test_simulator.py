"""The simulator's own honesty: what it counts as an early poll is what a polite client
could have known. A Retry-After HTTP-date names a moment, so a client back at that
moment is on time however long the 202 took to leave the simulator, and on a simulator
whose clock is not the machine's."""

from __future__ import annotations

import asyncio
import email.utils
import time
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harvester.api import RESULTS_PREFIX
from harvester.tools.simulator import SIM_TOKEN, Mix
from harvester.tools.simulator import app as simulator
from tests.helpers import SimulatedUpstream


async def test_a_client_back_at_the_named_second_is_not_early_after_a_slow_202(
    upstream: SimulatedUpstream, monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = simulator._json

    def slow_to_leave(data: Any, status: int, headers: dict[str, str] | None = None
                      ) -> web.Response:
        if status == 202:
            time.sleep(0.05)  # the process descheduled between naming the date and sending
        return answer(data, status, headers)

    monkeypatch.setattr(simulator, "_json", slow_to_leave)
    job = uuid.uuid4()
    upstream.script({job: ["202:1:date", "200"]})
    url = f"{upstream.url}{RESULTS_PREFIX}{job}"
    auth = {"Authorization": f"Bearer {SIM_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.get(url) as first:
            assert first.status == 202
            named = email.utils.parsedate_to_datetime(first.headers["Retry-After"]).timestamp()
        await asyncio.sleep(max(0.0, named - time.time()) + 0.001)
        async with session.get(url) as second:
            assert second.status == 200
    stats = upstream.state.stats()
    assert stats["early_polls"] == 0, stats["early_examples"]


async def test_a_skewed_simulator_speaks_its_own_clock() -> None:
    """``clock_skew``: the Date header, every HTTP-date and batch-status' ``updatedAt`` are
    on upstream's clock, ``clock_skew`` seconds from the machine's; what the simulator
    counts (early polls, pauses) stays on the machine's. A 202 polled early is answered
    202 again, naming the same moment."""
    skew = -20.0
    mix = Mix(pending_min=1, pending_max=1, retry_after=2.0, retry_after_style="date",
              rate_retry_after_style="date", clock_skew=skew)
    sim = await SimulatedUpstream(mix).start()
    try:
        job = uuid.uuid4()
        url = f"{sim.url}{RESULTS_PREFIX}{job}"
        auth = {"Authorization": f"Bearer {SIM_TOKEN}"}
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.get(url) as first:
                date = _epoch(first.headers["Date"])
                named = _epoch(first.headers["Retry-After"])
            assert first.status == 202
            assert date - time.time() == pytest.approx(skew, abs=1.5)
            assert 2.0 <= named - date <= 3.0  # the wait is read against Date
            # Read against the machine's clock, the date is long past: too early.
            async with session.get(url) as early:
                assert early.status == 202
                assert _epoch(early.headers["Retry-After"]) == named
            await asyncio.sleep(named - date + 0.01)
            async with session.get(url) as second:
                assert second.status == 200
            sim.simulator.apply_control({"rate_limit_for": 5, "retry_after": 2})
            async with session.post(sim.url + "/api/v1/jobs/batch-status",
                                    json={"jobIds": [str(job)]}) as limited:
                assert limited.status == 429
                wait = _epoch(limited.headers["Retry-After"]) - _epoch(limited.headers["Date"])
                assert 2.0 <= wait <= 3.0
            sim.simulator.apply_control({"rate_limit_for": 0})
            async with session.post(sim.url + "/api/v1/jobs/batch-status",
                                    json={"jobIds": [str(job)]}) as status:
                entry = (await status.json())[0]
        updated = datetime.fromisoformat(entry["updatedAt"]).timestamp()
        assert updated - time.time() == pytest.approx(skew, abs=1.5)
        stats = sim.state.stats()
        assert stats["early_polls"] == 1
        assert stats["requests"] == 3  # the early poll cost a request, not a step
        assert stats["statuses"] == {"200": 1, "202": 2}
    finally:
        await sim.stop()


def _epoch(http_date: str) -> float:
    return email.utils.parsedate_to_datetime(http_date).timestamp()
