"""The simulated upstream's answers as data (harvester/tools/simulator/answers.py): every
kind a plan may name has one place, and the Retry-After headers say what they mean."""

from __future__ import annotations

import email.utils
import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from harvester.tools.simulator.answers import (
    FIXED,
    PAUSES,
    ROWS,
    STREAMED,
    WAITS,
    named_moment,
    pause_header,
    retry_after,
    simulated,
)
from harvester.tools.simulator.plans import Mix, plan_for, result_row

TABLES = (set(FIXED), set(ROWS), set(WAITS), set(PAUSES), set(STREAMED))


def test_each_kind_has_one_place() -> None:
    kinds = [kind for table in TABLES for kind in table]
    assert len(kinds) == len(set(kinds))


def test_every_kind_the_mixes_draw_is_in_the_table() -> None:
    """The chaos mix draws every fate; each step it plans is answered from the table."""
    mix = Mix.preset("chaos", pending_max=2)
    known = set().union(*TABLES)
    for n in range(3000):
        for step in plan_for(uuid.UUID(int=n, version=4), mix).steps:
            assert step.kind in known or step.kind.isdigit(), step


@given(st.one_of(st.text(max_size=8), st.sampled_from(["¹", "٣", "410", "x410"])))
def test_any_other_kind_is_a_bare_status_or_a_500(kind: str) -> None:
    answer = simulated(kind)
    if kind.isascii() and kind.isdigit():
        assert answer.status == int(kind)
        assert answer.data == {"error": f"simulated {kind}"}
    else:
        assert answer.status == 500
        assert kind in answer.data["error"]


def test_the_rows_are_the_jobs_own_or_plainly_wrong() -> None:
    job = uuid.uuid4()
    assert ROWS["200"](job, 3) == ROWS["slow"](job, 3) == result_row(job, 3)
    assert ROWS["mismatch"](job, 3)["jobId"] != str(job)
    bad = ROWS["badfield"](job, 3)
    assert (bad["createdAt"], bad["qualityComposite"]) == (12345, "high")


@given(st.floats(min_value=0, max_value=3600), st.floats(min_value=-60, max_value=60))
def test_a_pause_names_a_whole_wait_or_the_next_whole_second(seconds: float,
                                                             skew: float) -> None:
    headers, wait = pause_header(seconds, "header", skew)
    assert float(headers["Retry-After"]) == wait >= seconds
    assert wait - seconds <= 1
    headers, wait = pause_header(seconds, "date", skew)
    moment = named_moment(headers["Retry-After"], skew)
    assert moment is not None
    assert abs(moment - (time.time() + wait)) < 1.0
    assert wait >= seconds - 0.011
    assert email.utils.parsedate_to_datetime(headers["Retry-After"]).microsecond == 0


def test_a_202_without_a_header_means_its_body_or_the_default() -> None:
    assert retry_after(3.0, "body", 5.0) == ({}, 3.0)
    assert retry_after(3.0, "none", 5.0) == ({}, 5.0)
    assert named_moment("7") is None
    assert named_moment(None) is None
