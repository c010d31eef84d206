"""Each result stored once, nothing lost (README "Querying the mirror", "Upgrades").

The mirror's payload keeps only what the typed columns do not hold; the view
harvester.result_bodies gives the whole body back. Every body here goes through the
daemon's own write statement (or the migration's two functions, for hypothesis' many
shapes) against a real PostgreSQL, and is read back equal, as jsonb and as jsonb's text,
to the body received.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester.commands.mirror import cmd_mirror_compact
from harvester.migrations import migrations_dir
from harvester.model import ExtractionResult
from harvester.policy import Land
from harvester.ports import Outcome
from harvester.settings import load_settings
from harvester.store.changes import read_changes
from harvester.tools.simulator import result_row
from tests.helpers import enqueue
from tests.stores import Store

TYPED_KEYS = ("normalized", "id", "orgId", "jobId", "domain", "schemaId", "dataType",
              "rawBlobKey", "latencyMs")
"""The keys whose typed column gives their JSON text back (sql/005)."""

COLUMNS = ("job_id", "id", "org_id", "domain", "schema_id", "data_type", "normalized",
           "raw_blob_key", "latency_ms")


def shapes(job_id: uuid.UUID) -> list[dict[str, Any]]:
    """Bodies of every shape upstream (and the simulator) sends for ``job_id``."""
    row = result_row(job_id)
    nested = {"a": [1, 2.5, None, True, {"b": [[], {}, ""]}], "deep": {"x": {"y": {"z": [0]}}}}
    snake = {k: v for k, v in row.items() if k not in ("orgId", "schemaId", "rawBlobKey")}
    absent = {k: v for k, v in row.items()
              if k not in ("schemaId", "rawBlobKey", "latencyMs", "deliveredAt")}
    return [
        row,
        {**row, "schemaId": None, "rawBlobKey": None, "latencyMs": None, "deliveredAt": None},
        absent,
        {**row, "extra": nested, "normalized": {**row["normalized"], "nested": nested,
                                                 "nothing": None}},
        {**row, "domain": "bücher.例え.example", "dataType": "αβγ",
         "normalized": {"title": "Grüße 👋 — שלום", "quote": "\"\\/\b\f\n\r\t", "e": "\u00e9"}},
        {**row, "normalized": {"blob": "x" * 1_000_000, "many": list(range(20_000))}},
        {**row, "normalized": {}},
        # The model accepts snake_case names: they stay in payload as received.
        {**snake, "org_id": row["orgId"], "schema_id": "s-1", "raw_blob_key": "k"},
        {**row, "org_id": row["orgId"]},
        # Texts the typed value would not give back stay in payload.
        {**row, "id": row["id"].upper(), "jobId": str(job_id).upper()},
        {**row, "qualityComposite": 1, "qualityValidation": 0.50, "latencyMs": 0,
         "createdAt": "2026-01-02T03:04:05.678Z", "deliveredAt": "2026-01-02T03:04:05Z"},
        {**row, "schemaId": "", "rawBlobKey": "", "latencyMs": -5},
    ]


def land(body: dict[str, Any]) -> Land:
    text = json.dumps(body, ensure_ascii=False)
    return Land(ExtractionResult.model_validate_json(text), text)


async def land_bodies(store: Store, pool: asyncpg.Pool, bodies: list[dict[str, Any]]
                      ) -> list[uuid.UUID]:
    ids = [uuid.UUID(b.get("jobId") or b["job_id"]) for b in bodies]
    await enqueue(pool, ids)
    jobs = {j.job_id: j for j in await store.claim(len(ids), 60, "w")}
    report = await store.write([Outcome(jobs[i], land(b)) for i, b in zip(ids, bodies,
                                                                          strict=True)])
    assert report.written == set(ids) and not report.rejected
    return ids


async def test_every_shape_reads_back_as_received(store: Store, pool: asyncpg.Pool) -> None:
    bodies = [body for _ in range(3) for body in shapes(uuid.uuid4())]
    for n, body in enumerate(bodies):  # one job each
        job_id = uuid.uuid4()
        body["jobId" if "jobId" in body else "job_id"] = (
            str(job_id).upper() if n % 12 == 9 else str(job_id))
    ids = await land_bodies(store, pool, bodies)
    for job_id, body in zip(ids, bodies, strict=True):
        row = await pool.fetchrow(
            "SELECT b.body = $2::jsonb AS same, b.body::text = $2::jsonb::text AS same_text, "
            "       e.payload::text AS payload "
            "  FROM harvester.result_bodies AS b JOIN harvester.extraction_results AS e "
            "       USING (job_id) WHERE job_id = $1", job_id, json.dumps(body))
        assert row is not None
        assert row["same"] and row["same_text"], (body, row["payload"][:300])
        assert "normalized" not in json.loads(row["payload"])  # stored once


async def test_the_typed_keys_are_left_out_of_payload(store: Store, pool: asyncpg.Pool) -> None:
    """The simulator's row: every typed key that its column gives back is stored once;
    what no column holds exactly (timestamps, floats, unknown fields) stays."""
    body = result_row(uuid.uuid4())
    body.update(schemaId="s", rawBlobKey="k", latencyMs=7)
    (job_id,) = await land_bodies(store, pool, [body])
    payload = json.loads(await pool.fetchval(
        "SELECT payload FROM harvester.extraction_results WHERE job_id = $1", job_id))
    assert sorted(payload) == sorted(set(body) - set(TYPED_KEYS))
    small = await pool.fetchval("SELECT octet_length(payload::text) FROM "
                                "harvester.extraction_results WHERE job_id = $1", job_id)
    assert small < len(json.dumps(body)) / 2


async def test_a_row_written_whole_reads_back_and_is_compacted(
        db_url: str, store: Store, pool: asyncpg.Pool) -> None:
    """Rows written before schema version 5 hold the whole body: read back the same,
    landed again unchanged they stay as they are, and `harvester mirror compact`
    rewrites them without moving harvested_at (README "Upgrades")."""
    bodies = shapes(uuid.uuid4())
    for body in bodies:
        body["jobId" if "jobId" in body else "job_id"] = str(uuid.uuid4())
    ids = [uuid.UUID(b.get("jobId") or b["job_id"]) for b in bodies]
    for job_id, body in zip(ids, bodies, strict=True):
        r = ExtractionResult.model_validate_json(json.dumps(body))
        await pool.execute(
            "INSERT INTO harvester.extraction_results (job_id, id, org_id, domain, schema_id,"
            " data_type, normalized, raw_blob_key, quality_completeness, quality_validation,"
            " quality_composite, latency_ms, delivered_at, created_at, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb -> 'normalized', $8, $9, $10, $11,"
            " $12, $13, $14, $7::jsonb)",
            job_id, r.id, r.org_id, r.domain, r.schema_id, r.data_type, json.dumps(body),
            r.raw_blob_key, r.quality_completeness, r.quality_validation,
            r.quality_composite, r.latency_ms, r.delivered_at, r.created_at)
    before = {r["job_id"]: r["harvested_at"] for r in await pool.fetch(
        "SELECT job_id, harvested_at FROM harvester.extraction_results")}

    async def bodies_read() -> list[bool]:
        return [await pool.fetchval("SELECT body::text = $2::jsonb::text FROM "
                                    "harvester.result_bodies WHERE job_id = $1",
                                    job_id, json.dumps(body))
                for job_id, body in zip(ids, bodies, strict=True)]

    assert all(await bodies_read())
    # Landed again unchanged: the old row is not rewritten (no notification either).
    await enqueue(pool, ids[:1])
    await pool.execute("UPDATE harvester.jobs SET requeued_at = now()")
    (job,) = await store.claim(1, 60, "w")
    await store.write([Outcome(job, land(bodies[0]))])
    assert await pool.fetchval("SELECT payload ? 'normalized' FROM "
                               "harvester.extraction_results WHERE job_id = $1", ids[0])

    xids = await pool.fetch("SELECT job_id, changed_xid::text FROM "
                            "harvester.extraction_results ORDER BY job_id")
    out = io.StringIO()
    config = load_settings({"database_url": db_url}, env_file=None)
    assert await cmd_mirror_compact(config, 5, 0.0, True, out) == 0
    assert json.loads(out.getvalue())["rewritten"] == len(ids)
    assert all(await bodies_read())
    after = {r["job_id"]: r["harvested_at"] for r in await pool.fetch(
        "SELECT job_id, harvested_at FROM harvester.extraction_results")}
    assert after == before
    # Compacting changes how a row is stored, not what it says: the change feed does not
    # hand it out again (README "Querying the mirror"), and it gives the whole body.
    assert await pool.fetch("SELECT job_id, changed_xid::text FROM "
                            "harvester.extraction_results ORDER BY job_id") == xids
    async with pool.acquire() as conn:
        fed = {c.job_id: json.loads(c.body or "null") for c in await read_changes(conn, None, 100)}
    for job_id, body in zip(ids, bodies, strict=True):
        assert fed[job_id]["payload"] == body
    assert not await pool.fetchval(
        "SELECT count(*) FROM harvester.extraction_results WHERE payload ? 'normalized'")
    # A second pass finds nothing to do.
    out = io.StringIO()
    assert await cmd_mirror_compact(config, 1000, 0.0, True, out) == 0
    assert json.loads(out.getvalue())["rewritten"] == 0


# ---------------------------------------------------------------- any shape

JSON_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                    max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=12)
UUID_TEXT = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
MAYBE = st.sampled_from(["camel", "snake", "both", "null", "absent"])


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = draw(st.dictionaries(JSON_TEXT.filter(lambda k: k not in (
        *TYPED_KEYS, "org_id", "job_id", "schema_id", "data_type", "raw_blob_key",
        "latency_ms", "qualityCompleteness", "qualityValidation", "qualityComposite",
        "deliveredAt", "createdAt", "delivered_at", "created_at", "quality_completeness",
        "quality_validation", "quality_composite")), JSON, max_size=3))
    body.update(id=draw(UUID_TEXT), domain=draw(JSON_TEXT),
                normalized=draw(st.dictionaries(JSON_TEXT, JSON, max_size=4)),
                qualityCompleteness=0.5, qualityValidation=1, qualityComposite=0.75,
                createdAt="2026-01-01T00:00:00Z")
    for camel, snake, values, required in (
            ("orgId", "org_id", UUID_TEXT, True), ("jobId", "job_id", UUID_TEXT, True),
            ("dataType", "data_type", JSON_TEXT, True),
            ("schemaId", "schema_id", JSON_TEXT, False),
            ("rawBlobKey", "raw_blob_key", JSON_TEXT, False),
            ("latencyMs", "latency_ms", st.integers(-2**31 + 1, 2**31 - 1), False)):
        how = draw(MAYBE)
        if required and how in ("null", "absent"):
            how = "camel"
        if how in ("camel", "both"):
            body[camel] = draw(values)
        if how in ("snake", "both"):
            body[snake] = draw(values)
        if how == "null":
            body[camel] = None
    return body


COLUMN_PARAMETERS = ", ".join(f"${n + 2}" for n in range(len(COLUMNS)))
"""$2.. in a statement that takes a body's text as $1 and its typed values after it."""


def check_bodies(db_url: str, strategy: st.SearchStrategy[dict[str, Any]], sql: str,
                 holds: Callable[[asyncpg.Record, str], bool], examples: int,
                 setup: str | None = None) -> None:
    """``sql`` run on each body ``strategy`` draws ($1 its text, then the typed values
    the model gives it, as the write passes them); ``holds`` judges the row."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(db_url))
    if setup:
        loop.run_until_complete(conn.execute(setup))

    @settings(max_examples=examples, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(strategy)
    def check(body: dict[str, Any]) -> None:
        text = json.dumps(body)
        r = ExtractionResult.model_validate_json(text)
        values = [r.job_id, r.id, r.org_id, r.domain, r.schema_id, r.data_type,
                  json.dumps(body["normalized"]), r.raw_blob_key, r.latency_ms]
        row = loop.run_until_complete(conn.fetchrow(sql, text, *values))
        assert row is not None
        assert holds(row, text), (text, tuple(row))

    try:
        check()
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def test_any_body_reads_back_as_received(db_url: str) -> None:
    """result_body(result_payload(body)) is body, for bodies of any shape the model
    accepts: unknown fields of any JSON, nulls and absent keys, either name of a field,
    texts a typed value would not give back."""
    columns = COLUMN_PARAMETERS
    sql = (f"SELECT harvester.result_body(harvester.result_payload($1::jsonb, {columns}), "
           f"{columns})::text = $1::jsonb::text, "
           f"NOT harvester.result_payload($1::jsonb, {columns}) ? 'normalized'")
    check_bodies(db_url, bodies(), sql, lambda row, _: bool(row[0] and row[1]), 300)


ODD_UUID = st.uuids().flatmap(lambda u: st.sampled_from(
    [str(u), str(u).upper(), u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u)]))


@st.composite
def odd_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Any body of ``bodies``, its UUIDs perhaps in a form the model takes but whose
    JSON text the column would not give back (the model is strict: an integer is only
    ever a JSON integer, a text a JSON string)."""
    body = draw(bodies())
    for key in ("id", "orgId", "jobId", "org_id", "job_id"):
        if key in body and draw(st.booleans()):
            body[key] = draw(ODD_UUID)
    return body


def test_the_payload_leaves_out_what_version_5_left_out(db_url: str) -> None:
    """Schema version 7 wrote harvester.result_payload again so that PostgreSQL inlines
    it (sql/007); for bodies of any shape, and typed values in any form the model takes,
    it gives what version 5's definition gave, as jsonb's text."""
    text = (migrations_dir() / "005_result_stored_once.sql").read_text()
    start = text.index("CREATE FUNCTION harvester.result_payload(")
    version_5 = text[start:text.index("$$;", start) + 3].replace(
        "harvester.result_payload(", "pg_temp.result_payload_5(", 1)
    columns = COLUMN_PARAMETERS
    sql = (f"SELECT harvester.result_payload($1::jsonb, {columns})::text, "
           f"       pg_temp.result_payload_5($1::jsonb, {columns})::text")
    check_bodies(db_url, odd_bodies(), sql, lambda row, _: bool(row[0] == row[1]), 300,
                 setup=version_5)
