"""One owner of what the daemon believes about upstream (README "How a job is followed",
"How upstream answers are handled"): answers go in, transitions come out, and the
beliefs the engine reads back change only here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harvester.alarms import HTML_STREAK_ALARM, NOT_FOUND_STREAK_ALARM
from harvester.pacing import Transition
from harvester.policy import Response, TransportFailure
from harvester.status_policy import StatusCall
from harvester.upstream_view import UpstreamView

PAGE = Response(200, b"<!doctype html><html></html>", "text/html")
ROW = Response(200, b"{}", "application/json")
NOT_FOUND = Response(404, b"", "application/json")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def view() -> UpstreamView:
    return UpstreamView(max_rps=0, probe_interval=30.0, clock=Clock())


def events(changes: list[Transition]) -> list[str]:
    return [c.event for c in changes]


def answer(v: UpstreamView, a: Response | TransportFailure) -> list[str]:
    return events(v.result_answered(a, v.gate.now(), fault=False, pause_for=None))


def test_web_pages_raise_the_base_url_alarm_once_and_a_row_clears_it() -> None:
    v = view()
    said = [e for _ in range(HTML_STREAK_ALARM + 5) for e in answer(v, PAGE)]
    assert said == ["upstream.base_url_suspect"]
    assert v.base_url_suspect and not v.trust_not_found
    assert answer(v, ROW) == ["upstream.base_url_ok"]
    assert not v.base_url_suspect and v.trust_not_found


def test_batch_status_missing_and_404s_raise_it_with_the_hint() -> None:
    v = view()
    missing = StatusCall("missing", "batch-status answered HTTP 404")
    changes = v.status_answered(404, v.gate.now(), missing, jobs=3)
    assert events(changes) == ["upstream.batch_status_failing"]
    assert changes[0].detail == {"error": "batch-status answered HTTP 404", "jobs": 3}
    assert not v.trust_not_found  # missing batch-status alone already withholds not_found
    said = [e for _ in range(NOT_FOUND_STREAK_ALARM) for e in answer(v, NOT_FOUND)]
    assert said == ["upstream.base_url_suspect"]
    suspect = v.result_answered(NOT_FOUND, v.gate.now(), fault=False, pause_for=None)
    assert suspect == []
    assert "host alone" in str(v.base_url.reason)


def test_batch_status_failing_then_recovering_is_two_transitions() -> None:
    v = view()
    failed = StatusCall("failed", "batch-status answered HTTP 500")
    assert events(v.status_answered(500, v.gate.now(), failed, jobs=1)) == [
        "upstream.batch_status_failing"]
    assert not v.status_ok
    assert v.status_usable(v.gate.now()) is False  # the probe waits for its retry time
    assert events(v.status_answered(500, v.gate.now(), failed, jobs=1)) == []
    assert events(v.status_answered(200, v.gate.now(), StatusCall("ok"), jobs=1)) == [
        "upstream.batch_status_recovered"]
    assert v.status_ok and v.status_usable(v.gate.now())


def test_a_refusal_that_cuts_the_rate_is_handed_to_the_constructor_callback() -> None:
    heard: list[float] = []
    v = UpstreamView(max_rps=0, probe_interval=30.0, on_refused=heard.append, clock=Clock())
    v.gate.rate.last_wait = v.gate.now()  # pacing-bound: a 429 cuts the rate
    v.result_answered(Response(429, retry_after="2"), v.gate.now(), fault=False, pause_for=2.0)
    assert heard == [2.0]


@given(st.lists(st.sampled_from([PAGE, ROW, NOT_FOUND, Response(202),
                                 TransportFailure("timeout", "slow")]), max_size=60))
def test_the_alarm_transitions_alternate_and_match_what_it_believes(
        answers: list[Response | TransportFailure]) -> None:
    v = view()
    suspect = False
    for a in answers:
        for event in answer(v, a):
            assert event == ("upstream.base_url_ok" if suspect else "upstream.base_url_suspect")
            suspect = not suspect
        assert v.base_url_suspect == suspect
