"""Fixtures of the acceptance suite: whole daemon processes, real PostgreSQL, the simulated
upstream. Each fixture owns what it starts and ends it whatever the test's outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import pytest

from harvester.tools.simulator import SIM_TOKEN, Mix
from tests.acceptance.harness import Cluster, Fleet, LandedWitness
from tests.helpers import SimulatedUpstream

StartSimulator = Callable[..., Awaitable[SimulatedUpstream]]
MakeFleet = Callable[..., Fleet]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL of this test's own, to stop and start (never the shared server)."""
    own = Cluster()
    try:
        own.start_first()
        yield own
    finally:
        own.destroy()


@pytest.fixture
async def simulators() -> AsyncIterator[StartSimulator]:
    started: list[SimulatedUpstream] = []

    async def start(mix: Mix | None = None, token: str | None = SIM_TOKEN) -> SimulatedUpstream:
        sim = await SimulatedUpstream(mix, token=token).start()
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            await sim.stop()


@pytest.fixture
async def fleets(tmp_path: Path) -> AsyncIterator[MakeFleet]:
    made: list[Fleet] = []

    def make(db_url: str, api_url: str, env: Mapping[str, str] | None = None) -> Fleet:
        fleet = Fleet(db_url, api_url, tmp_path, env)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            await fleet.close()


@pytest.fixture
async def witness(db_url: str) -> AsyncIterator[LandedWitness]:
    seen = await LandedWitness().start(db_url)
    try:
        yield seen
    finally:
        await seen.close()
