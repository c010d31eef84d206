from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import SimulatedUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[SimulatedUpstream]:
    sim = await SimulatedUpstream().start()
    try:
        yield sim
    finally:
        await sim.stop()
