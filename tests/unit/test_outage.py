"""One outage, however many loops meet it: one line when it begins, one when the last
loop is through, an error line more only when a cause no wait cures shows up, and the
backoff of each loop its own (README "The database's faults")."""

from __future__ import annotations

from structlog.testing import capture_logs

from harvester.errors import DatabaseConfigError, StoreConflict, StoreUnavailable
from harvester.metrics import Metrics
from harvester.outage import OUTAGE_CAP, Outage, Retrying

READ_ONLY = StoreUnavailable("database unavailable: a read-only node", code="25006")
LOST = StoreUnavailable("database unavailable: connection lost", code="08006")
REVOKED = DatabaseConfigError("HARVESTER_DATABASE_URL: the role lacks a privilege",
                              code="42501")


def test_loops_sharing_an_outage_say_it_once_and_end_it_together() -> None:
    clock = iter(range(100)).__next__
    outage = Outage(clock=lambda: float(clock()))
    metrics = Metrics()
    claim, write = (Retrying(what, metrics, lambda: 0.5, outage) for what in ("claim", "write"))
    with capture_logs() as logs:
        for _ in range(3):
            claim.failed(LOST)
            write.failed(READ_ONLY)
        claim.succeeded()
        assert outage.active  # the writes still wait
        write.failed(REVOKED)  # a cause no wait cures: said, at error level
        write.failed(REVOKED)  # ... once
        write.succeeded()
        assert not outage.active
    said = [(e["event"], e["log_level"], e.get("cause")) for e in logs
            if e["event"] != "store.still_unavailable"]
    assert said == [("store.unavailable", "warning", "08006"),
                    ("store.unavailable", "error", "42501"),
                    ("store.recovered", "info", None)]
    assert logs[-1]["causes"] == ["08006", "25006", "42501"]
    assert logs[-1]["after_failures"] == 8


def test_each_loop_backs_off_on_its_own_up_to_the_cap() -> None:
    retry = Retrying("claim", Metrics(), lambda: 1.0)
    waits = [retry.failed(LOST) for _ in range(12)]
    assert waits == sorted(waits) and waits[-1] == OUTAGE_CAP


def test_a_conflict_is_tried_again_at_once_then_like_an_outage() -> None:
    retry = Retrying("write", Metrics(), lambda: 1.0)
    conflict = StoreConflict("database unavailable: deadlock", code="40P01")
    with capture_logs() as logs:
        assert retry.failed(conflict) == 0.0
        assert not retry.outage.active
        assert retry.failed(conflict) > 0.0
        assert retry.outage.active
    assert [e["event"] for e in logs] == ["store.conflict_retried", "store.unavailable"]
