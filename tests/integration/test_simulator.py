"""The simulator's own honesty: what it counts as an early poll is what a polite client
could have known. A Retry-After HTTP-date names a moment, so a client back at that
moment is on time however long the 202 took to leave the simulator."""

from __future__ import annotations

import asyncio
import email.utils
import time
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harvester.api import RESULTS_PREFIX
from harvester.tools import simulator
from harvester.tools.simulator import SIM_TOKEN
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
