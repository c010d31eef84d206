"""Logical replication of the mirror (README "Querying the mirror", "Logical replication
instead"): deploy/mirror-publication.sql on an embedded server started with
``wal_level=logical``, a second database subscribing, and every landed row (and a
change, and a deletion) arriving there as it is in the mirror."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg

from harvester.tools.simulator import result_row
from tests.acceptance.harness import Cluster
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
ROWS = "SELECT * FROM harvester.extraction_results ORDER BY job_id"
LAND = """
INSERT INTO harvester.extraction_results
       (job_id, id, org_id, domain, data_type, normalized, quality_completeness,
        quality_validation, quality_composite, created_at, payload)
SELECT j, (r ->> 'id')::uuid, (r ->> 'orgId')::uuid, r ->> 'domain', r ->> 'dataType',
       r -> 'normalized', (r ->> 'qualityCompleteness')::float8,
       (r ->> 'qualityValidation')::float8, (r ->> 'qualityComposite')::float8,
       (r ->> 'createdAt')::timestamptz, r
  FROM unnest($1::uuid[], $2::jsonb[]) AS t(j, r)
"""


async def land(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> None:
    await conn.execute(LAND, ids, [json.dumps(result_row(j)) for j in ids])


async def test_a_subscriber_receives_every_landed_row(cluster: Cluster) -> None:
    admin = await asyncpg.connect(cluster.uri("postgres"))
    try:
        await admin.execute("ALTER SYSTEM SET wal_level = 'logical'")
    finally:
        await admin.close()
    cluster.stop()
    cluster.start()
    primary_url = await cluster.create_migrated_database("harvester")
    replica_url = await cluster.create_migrated_database("replica")
    primary = await asyncpg.connect(primary_url)
    replica = await asyncpg.connect(replica_url)
    try:
        assert await primary.fetchval("SHOW wal_level") == "logical"
        before = [uuid.uuid4() for _ in range(50)]
        await land(primary, before)
        publication = (ROOT / "deploy" / "mirror-publication.sql").read_text()
        await primary.execute(publication)
        await primary.execute(publication)  # idempotent
        # Same server: the slot first, then a subscription that does not create one.
        await primary.execute(
            "SELECT pg_create_logical_replication_slot('harvester_replica', 'pgoutput')")
        socket_dir = primary_url.split("host=", 1)[1]
        await replica.execute(
            f"CREATE SUBSCRIPTION harvester_replica CONNECTION "
            f"'host={socket_dir} dbname=harvester user=postgres' PUBLICATION harvester_mirror "
            "WITH (create_slot = false, slot_name = 'harvester_replica')")
        after = [uuid.uuid4() for _ in range(200)]
        for start in range(0, len(after), 20):
            await land(primary, after[start:start + 20])
        await primary.execute("UPDATE harvester.extraction_results SET domain = 'moved.example' "
                              "WHERE job_id = $1", after[0])
        await primary.execute("DELETE FROM harvester.extraction_results WHERE job_id = $1",
                              before[0])

        async def same() -> bool:
            return await replica.fetch(ROWS) == await primary.fetch(ROWS)

        await wait_until(same, 60, "the subscriber to hold the mirror's rows")
        rows = await replica.fetch(ROWS)
        assert len(rows) == 249
        assert {r["job_id"] for r in rows} == set(before[1:] + after)
        moved = await replica.fetchval("SELECT domain FROM harvester.extraction_results "
                                       "WHERE job_id = $1", after[0])
        assert moved == "moved.example"
        await replica.execute("DROP SUBSCRIPTION harvester_replica")
    finally:
        await primary.close()
        await replica.close()
