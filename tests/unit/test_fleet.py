"""What daemons sharing a database tell each other (README "Pace", several daemons):
announcements are read defensively, since anyone who may NOTIFY on the database can send
one."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from harvester.fleet import PAYLOAD_LIMIT, FleetPace, _parse
from harvester.metrics import Metrics
from harvester.observer import Observer
from harvester.pacing import Gate
from tests.fakes import MemoryStore


@pytest.mark.parametrize(("payload", "parsed"), [
    ('{"worker": "h:1:abc", "resume_in": 0.98}', ("h:1:abc", 0.98)),
    ('{"worker": "h:1:abc", "resume_in": 1}', ("h:1:abc", 1.0)),
    ("", None),
    ("not json", None),
    ('["h:1:abc", 1.0]', None),
    ('{"worker": 7, "resume_in": 1.0}', None),
    ('{"worker": "h:1:abc", "resume_in": true}', None),
    ('{"worker": "h:1:abc", "resume_in": "1"}', None),
    ('{"worker": "h:1:abc", "resume_in": NaN}', None),
    ('{"worker": "h:1:abc"}', None),
    (json.dumps({"worker": "x" * PAYLOAD_LIMIT, "resume_in": 1.0}), None),
])
def test_only_a_well_formed_announcement_is_read(payload: str,
                                                  parsed: tuple[str, float] | None) -> None:
    assert _parse(payload) == parsed


def fleet_of(worker_id: str) -> tuple[FleetPace, Gate]:
    refusals: asyncio.Queue[float] = asyncio.Queue()
    gate = Gate(max_rps=0, probe_interval=30.0, on_refused=refusals.put_nowait)
    observer = Observer(Metrics(), gate, "http://127.0.0.1:9")
    fleet = FleetPace(gate, MemoryStore(), observer, worker_id, refusals)  # as the engine
    return fleet, gate


def test_its_own_announcement_and_garbage_change_nothing() -> None:
    fleet, gate = fleet_of("me")
    gate.rate.last_wait = gate.now()  # pacing-bound: a refusal heard would cut
    for payload in ('{"worker": "me", "resume_in": 1.0}', "garbage", "{}"):
        fleet.heard(payload)
    assert gate.rate.cuts == 0


def test_another_daemons_refusal_cuts_this_rate_without_a_pause() -> None:
    fleet, gate = fleet_of("me")
    gate.rate.last_wait = gate.now()
    fleet.heard('{"worker": "other", "resume_in": 1.0}')
    fleet.heard('{"worker": "third", "resume_in": 1.0}')  # the same event
    assert (gate.rate.cuts, gate.rate.cut_heard) == (1, True)
    assert gate.paused_until == 0.0
    registry = fleet.observer.metrics.registry
    assert registry.get_sample_value("harvester_refusals_heard_total") == 1


async def test_a_refusal_of_its_own_is_announced_and_an_outage_drops_it() -> None:
    """Announced with the seconds until sending resumes; while the database is away the
    announcement is dropped (the others find the limit on their own) and the loop lives."""
    fleet, gate = fleet_of("me")
    store = fleet.store
    assert isinstance(store, MemoryStore)
    task = asyncio.create_task(fleet.run())
    try:
        store.unavailable = True
        gate.observe(429, gate.now(), pause_for=2.0)
        await asyncio.sleep(0.01)
        store.unavailable = False
        gate.paused_until = 0.0
        gate.rate.cut_at = -math.inf  # a later, separate refusal
        gate.observe(429, gate.now(), pause_for=3.0)
        await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert len(store.announced) == 1
    announced = json.loads(store.announced[0])
    assert announced["worker"] == "me"
    assert math.isclose(announced["resume_in"], 3.0, abs_tol=0.1)
