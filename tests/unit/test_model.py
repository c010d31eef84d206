"""What a 200 must look like to land, and how the batch-status answer is read."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harvester.model import INT32_MAX, ExtractionResult
from harvester.status_policy import _parse_element_by_element, parse_batch_status
from harvester.tools.simulator import ORG_ID, result_row

JOB_ID = UUID("5d2b8c1e-4f7a-4c3b-9e21-7a6f0d3c8b45")


def parse(document: dict[str, Any]) -> ExtractionResult:
    """As the policy does: from the JSON text of the body."""
    return ExtractionResult.model_validate_json(json.dumps(document))


def changed(**changes: Any) -> dict[str, Any]:
    document = result_row(JOB_ID)
    document.update(changes)
    return document


def error_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {str(error["loc"][0]) for error in exc.value.errors()}


@given(st.uuids(), st.integers(min_value=0, max_value=2**32))
def test_accepts_every_simulator_row(job_id: UUID, seed: int) -> None:
    document = result_row(job_id, seed)
    result = parse(document)
    assert result.job_id == job_id
    assert result.org_id == ORG_ID
    assert result.id == UUID(document["id"])
    assert result.domain == document["domain"]
    assert result.schema_id == document["schemaId"]
    assert result.data_type == document["dataType"]
    assert result.normalized == document["normalized"]
    assert result.raw_blob_key == document["rawBlobKey"]
    assert result.quality_completeness == document["qualityCompleteness"]
    assert result.quality_validation == document["qualityValidation"]
    assert result.quality_composite == document["qualityComposite"]
    assert result.latency_ms == document["latencyMs"]
    assert result.created_at == datetime.fromisoformat(document["createdAt"])
    delivered = document["deliveredAt"]
    assert result.delivered_at == (None if delivered is None else datetime.fromisoformat(delivered))


def test_unknown_fields_are_kept() -> None:
    result = parse(changed(brandNew=[1, {"x": None}], simulatorExtra="still here"))
    assert result.model_extra == {"brandNew": [1, {"x": None}], "simulatorExtra": "still here"}


def test_whole_numbers_are_numbers() -> None:
    """JSON has one number type: 1 is a fine quality score."""
    result = parse(changed(qualityComposite=1, qualityValidation=0))
    assert result.quality_composite == 1.0
    assert result.quality_validation == 0.0


def test_nullable_fields_may_be_null() -> None:
    result = parse(changed(schemaId=None, rawBlobKey=None, latencyMs=None, deliveredAt=None))
    assert (result.schema_id, result.raw_blob_key, result.latency_ms, result.delivered_at) == (
        None, None, None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("createdAt", 12345, id="number-for-a-date"),
        pytest.param("createdAt", 1.7e9, id="float-for-a-date"),
        pytest.param("deliveredAt", 0, id="zero-for-a-date"),
        pytest.param("createdAt", "yesterday", id="words-for-a-date"),
        pytest.param("createdAt", None, id="null-for-a-required-date"),
        pytest.param("qualityComposite", "0.5", id="string-for-a-float"),
        pytest.param("qualityValidation", True, id="bool-for-a-float"),
        pytest.param("qualityCompleteness", None, id="null-for-a-float"),
        pytest.param("latencyMs", 1.5, id="fraction-for-an-int"),
        pytest.param("latencyMs", "12", id="string-for-an-int"),
        pytest.param("latencyMs", True, id="bool-for-an-int"),
        pytest.param("id", "not-a-uuid", id="bad-uuid"),
        pytest.param("jobId", 5, id="number-for-a-uuid"),
        pytest.param("orgId", None, id="null-for-a-uuid"),
        pytest.param("domain", 5, id="number-for-a-string"),
        pytest.param("dataType", None, id="null-for-a-string"),
        pytest.param("schemaId", 7, id="number-for-a-nullable-string"),
        pytest.param("normalized", [1, 2], id="array-for-an-object"),
        pytest.param("normalized", "{}", id="string-for-an-object"),
    ],
)
def test_wrong_types_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        parse(changed(**{field: value}))
    assert error_fields(exc) == {field}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["qualityCompleteness", "qualityValidation", "qualityComposite"])
def test_non_finite_quality_is_refused(field: str, value: float) -> None:
    # json.dumps writes NaN / Infinity, which the JSON parser reads as floats.
    with pytest.raises(ValidationError) as exc:
        parse(changed(**{field: value}))
    assert error_fields(exc) == {field}
    with pytest.raises(ValidationError):
        ExtractionResult.model_validate(changed(**{field: value}))


@pytest.mark.parametrize("field", ["id", "orgId", "jobId", "domain", "dataType", "normalized",
                                   "qualityCompleteness", "qualityValidation", "qualityComposite",
                                   "createdAt"])
def test_required_fields(field: str) -> None:
    document = result_row(JOB_ID)
    del document[field]
    with pytest.raises(ValidationError) as exc:
        parse(document)
    assert error_fields(exc) == {field}


@pytest.mark.parametrize("field", ["createdAt", "deliveredAt"])
def test_naive_timestamps_are_utc(field: str) -> None:
    result = parse(changed(**{field: "2026-02-03T04:05:06.250"}))
    value = result.created_at if field == "createdAt" else result.delivered_at
    assert value == datetime(2026, 2, 3, 4, 5, 6, 250_000, tzinfo=UTC)
    assert value is not None
    assert value.utcoffset() == timedelta(0)


def test_timestamps_with_an_offset_keep_their_instant() -> None:
    result = parse(changed(createdAt="2026-02-03T06:05:06+02:00", deliveredAt="2026-02-03T04:05:06Z"))
    assert result.created_at.utcoffset() == timedelta(hours=2)
    assert result.created_at == datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert result.delivered_at == datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)


@pytest.mark.parametrize("value", [0, 1, -1, INT32_MAX, -INT32_MAX])
def test_latency_within_int4(value: int) -> None:
    assert parse(changed(latencyMs=value)).latency_ms == value


@pytest.mark.parametrize("value", [INT32_MAX + 1, -INT32_MAX - 2, 10**30])
def test_latency_beyond_int4_is_refused(value: int) -> None:
    """PostgreSQL's int column would refuse it in the write; refuse it at the door."""
    with pytest.raises(ValidationError) as exc:
        parse(changed(latencyMs=value))
    assert error_fields(exc) == {"latencyMs"}


def test_result_is_immutable() -> None:
    result = parse(result_row(JOB_ID))
    with pytest.raises(ValidationError):
        result.domain = "elsewhere"  # type: ignore[misc]


# ---------------------------------------------------------------- batch-status


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe[]", id="not-utf8"),
        pytest.param(b'{"jobs": []}', id="object"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"pending"', id="string"),
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
        pytest.param(b'[{"id": "', id="truncated"),
    ],
)
def test_batch_status_garbage_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError is the contract
        parse_batch_status(body)


def test_batch_status_skips_odd_elements() -> None:
    running, done, paused = uuid4(), uuid4(), uuid4()
    body = json.dumps([
        {"id": str(running), "status": "running", "currentNodeId": "n1", "updatedAt": "2026-01-01"},
        5,
        "x",
        None,
        [],
        {"id": "not-a-uuid", "status": "failed"},
        {"status": "running"},
        {"id": str(uuid4())},
        {"id": str(uuid4()), "status": 7},
        {"id": str(done), "status": "completed", "currentNodeId": None, "somethingNew": [1]},
        {"id": str(paused).upper(), "status": "paused"},
    ]).encode()
    assert parse_batch_status(body) == {running: "running", done: "completed", paused: "paused"}


def test_batch_status_empty_answer() -> None:
    assert parse_batch_status(b"[]") == {}


@given(st.lists(st.tuples(st.uuids(), st.text(max_size=60),
                          st.sampled_from(["", "currentNodeId", "somethingNew"])), max_size=30))
def test_batch_status_one_pass_reads_what_element_by_element_reads(
        entries: list[tuple[UUID, str, str]]) -> None:
    """The one-pass parse of a well-formed answer is only faster, never different."""
    body = json.dumps([{"id": str(job), "status": status, **({extra: None} if extra else {})}
                       for job, status, extra in entries]).encode()
    assert parse_batch_status(body) == _parse_element_by_element(body)
