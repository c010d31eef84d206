"""The upstream adapter hands the policy each answer's Date header, unread: the policy
reads upstream's HTTP-dates against it (README "How upstream answers are handled")."""

from __future__ import annotations

import time
import uuid

import pytest

from harvester.policy import Response
from harvester.settings import load_settings
from harvester.tools.simulator import SIM_TOKEN, Mix
from harvester.upstream import Upstream
from harvester.waits import http_date
from tests.helpers import SimulatedUpstream

SKEW = 3600.0


def _seconds_from_now(date: str | None) -> float:
    parsed = http_date(date)
    assert parsed is not None, date
    return parsed.timestamp() - time.time()


async def test_every_answer_carries_its_date_header() -> None:
    sim = await SimulatedUpstream(Mix(pending_min=1, pending_max=1, retry_after_style="date",
                                      clock_skew=SKEW)).start()
    settings = load_settings({"api_base_url": sim.url, "api_token": SIM_TOKEN}, env_file=None)
    job = uuid.uuid4()
    try:
        async with Upstream(settings) as upstream:
            waiting = await upstream.fetch_result(job)
            ok = await upstream.batch_status([job])
            sim.simulator.apply_control({"rate_limit_for": 5, "retry_after": 2})
            limited = await upstream.batch_status([job])
    finally:
        await sim.stop()
    assert isinstance(waiting, Response) and waiting.status == 202
    assert _seconds_from_now(waiting.date) == pytest.approx(SKEW, abs=2)
    assert _seconds_from_now(waiting.retry_after) == pytest.approx(SKEW + 1, abs=2)
    assert ok.statuses is not None and _seconds_from_now(ok.date) == pytest.approx(SKEW, abs=2)
    assert limited.status == 429 and limited.retry_after == "2"
    assert _seconds_from_now(limited.date) == pytest.approx(SKEW, abs=2)
