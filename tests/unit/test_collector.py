"""The daemon tunes CPython's cyclic garbage collector before its loop starts (README
"Performance"): what is loaded is frozen out of the collector's sight and it runs less
often. Its effect on CPU is measured in ``harvester bench``, not here."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from harvester.daemon import GC_THRESHOLDS, collect_less


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_the_daemon_freezes_what_is_loaded_and_collects_less_often() -> None:
    gc.unfreeze()
    collect_less()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default
    assert gc.get_freeze_count() > 10_000  # the modules loaded so far, at least
    assert gc.isenabled()
