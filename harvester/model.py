"""The payload model: what a 200 from upstream must look like to land.

Validation is strict on purpose (a number is not a date, a string is not a float): a
body that does not match is not a result, and the job keeps polling with a clear
``last_error`` rather than writing a half-understood row. Unknown fields are allowed;
the mirror keeps the whole body in ``payload`` anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

INT32_MAX = 2**31 - 1


def _assume_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Timestamp = Annotated[datetime, AfterValidator(_assume_utc)]


class ExtractionResult(BaseModel):
    """One upstream extraction_results row (camelCase on the wire, snake_case here)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        strict=True,
        frozen=True,
    )

    id: UUID
    org_id: UUID
    job_id: UUID
    domain: str
    schema_id: str | None = None
    data_type: str
    normalized: dict[str, Any]
    raw_blob_key: str | None = None
    quality_completeness: float = Field(allow_inf_nan=False)
    quality_validation: float = Field(allow_inf_nan=False)
    quality_composite: float = Field(allow_inf_nan=False)
    latency_ms: int | None = Field(default=None, ge=-INT32_MAX, le=INT32_MAX)
    delivered_at: Timestamp | None = None
    created_at: Timestamp


class BatchStatusEntry(BaseModel):
    """One element of the batch-status answer; unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    id: UUID
    status: str
    current_node_id: str | None = None
    updated_at: str | None = None
