"""One parser for job queries, two wordings: `harvester jobs` and ``GET /v1/jobs`` hold a
page of jobs to the same rules (harvester.jobquery) and each says a mistake its own way."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from harvester.admin import JOB_QUERY_MISTAKES
from harvester.commands.options import check_reasons, job_query_mistake
from harvester.errors import UserError
from harvester.jobquery import BadJobQuery, JobQuery, Rule, is_failed_reason
from harvester.ports import JobCursor

CURSOR = JobCursor(datetime(2026, 12, 1, 12, 0, tzinfo=UTC), uuid.UUID(int=7))


@pytest.mark.parametrize(("state", "reasons", "limit", "after", "expected"), [
    ("pending", [], 100, None, JobQuery("pending")),
    (None, ["not_found"], 100, None, JobQuery("failed", ("not_found",))),
    ("failed", ["http_410", "http_410", "expired"], "5", str(CURSOR),
     JobQuery("failed", ("http_410", "expired"), 5, CURSOR)),
    ("landed", [], " 7 ", None, JobQuery("landed", (), 7)),
    ("stuck", [], 1000, None, JobQuery("stuck", (), 1000)),
])
def test_a_good_query_parses_to_its_page(state: str | None, reasons: list[str],
                                         limit: int | str, after: str | None,
                                         expected: JobQuery) -> None:
    assert JobQuery.parse(state, reasons, limit, after) == expected


@pytest.mark.parametrize(("state", "reasons", "limit", "after", "rule"), [
    ("failed", ["not_a_reason"], 100, None, "reason"),
    ("pending", ["http_999"], 100, None, "reason"),
    (None, [], 100, None, "state"),
    ("", [], 100, None, "state"),
    ("leased", [], 100, None, "state"),
    ("pending", ["not_found"], 100, None, "reason_state"),
    ("landed", [], 0, None, "limit"),
    ("landed", [], 1001, None, "limit"),
    ("landed", [], "1.5", None, "limit"),
    ("landed", [], "many", None, "limit"),
    ("landed", [], 100, "not-a-cursor", "after"),
    ("landed", [], 100, "", "after"),
    # The first rule broken is the one reported: reasons, state, both, limit, cursor.
    ("leased", ["nope"], 0, "x", "reason"),
    ("leased", [], 0, "x", "state"),
    ("stuck", ["expired"], 0, "x", "reason_state"),
    ("failed", [], 0, "x", "limit"),
])
def test_a_broken_rule_is_named(state: str | None, reasons: list[str], limit: int | str,
                                after: str | None, rule: str) -> None:
    with pytest.raises(BadJobQuery) as raised:
        JobQuery.parse(state, reasons, limit, after)
    assert raised.value.rule == rule


def test_each_surface_words_every_rule_as_it_always_has() -> None:
    given: tuple[tuple[Rule, str], ...] = (("reason", "bogus"), ("state", ""),
                                           ("reason_state", ""), ("limit", "0"),
                                           ("after", "x"))
    cli = {rule: str(job_query_mistake(BadJobQuery(rule, value))) for rule, value in given}
    assert cli == {
        "reason": "--reason: 'bogus' is not a failure reason (one of forbidden, "
                  "upstream_failed, not_found, expired, or http_<status> such as http_410)",
        "state": "--state: one of pending, stuck, landed, failed",
        "reason_state": "--reason applies to failed jobs only",
        "limit": "--limit: 1 to 1000 jobs per page (got 0)",
        "after": "--after: not a cursor from a previous page",
    }
    assert JOB_QUERY_MISTAKES == {
        "reason": "reason must be one of forbidden, upstream_failed, not_found, expired or "
                  "http_<status>",
        "state": "state must be one of pending, stuck, landed, failed",
        "reason_state": "reason applies to state=failed only",
        "limit": "limit must be a whole number from 1 to 1000",
        "after": 'after must be the cursor of a previous page (its "next")',
    }


def test_requeue_checks_reasons_with_the_same_rule_and_words() -> None:
    assert check_reasons(["expired", "http_503", "expired"]) == ("expired", "http_503")
    with pytest.raises(UserError, match=r"^--reason: 'x{40}' is not a failure reason"):
        check_reasons(["x" * 100])
    assert is_failed_reason("http_404") and not is_failed_reason("http_600")
