"""The peer that scripts/peer-bench measures harvester against: a PgQueuer-based harvester.

It is what a competent engineer would write with PgQueuer (https://github.com/janbjorge/pgqueuer)
to mirror extraction results: one PgQueuer job per upstream job ID (payload = the ID), an
entrypoint that GETs ``{api}/api/v1/extraction/results/{id}`` through one shared aiohttp
session with the bearer token, parses the body, checks its ``jobId``, and upserts the row
into a mirror table of the same shape as harvester.extraction_results (one
``INSERT ... ON CONFLICT`` per job through an asyncpg pool). PgQueuer acknowledges the job
itself when the entrypoint returns. Configured as PgQueuer's docs recommend for throughput
(docs/guides/performance-tuning.md): the QueueManager on a direct asyncpg connection of its
own (LISTEN), the pool for the task's writes, ``pgq autovac`` applied, ``batch_size`` swept by
the caller. No sleeps and no handicaps; it checks less than harvester does (no pydantic model,
no body size limit, no status following), which is the peer's advantage, not ours.

This file runs in the peer's own virtualenv (PgQueuer from PyPI), never in harvester's:

    python pgqueuer_harvester.py consume --batch-size 50 --max-concurrent-tasks 100
    python pgqueuer_harvester.py feed --jobs 20000 --batch 1000    # then "go" on stdin

``consume`` is ``pgq run pgqueuer_harvester:create_pgqueuer --batch-size ...`` without the
CLI (``pgqueuer.run``, on uvloop as ``pgq run`` does): in PgQueuer 1.6.0 with typer 0.29
``pgq run`` stops at start (its --log-level option hands the logger a str, not its enum).

Configuration comes from the environment: PEER_DATABASE_URL, PEER_API_BASE_URL,
PEER_API_TOKEN, PEER_CONCURRENCY (requests in flight, the HTTP connection limit),
PEER_POOL_SIZE (the writers' asyncpg pool) and PEER_SYNCHRONOUS_COMMIT (``synchronous_commit``
of the consumer's connections, as harvester's daemon claims and lands with ``off``; the
feeder commits durably, as harvester's feed does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

ENTRYPOINT = "harvest"
RESULTS_PREFIX = "/api/v1/extraction/results/"
MIRROR_TABLE = "peer.extraction_results"

# The same upsert harvester's batch write does for the mirror (harvester/store.py), one
# row at a time: the body is parsed once into jsonb, `normalized` taken from it, and an
# identical row landing again changes nothing.
UPSERT = f"""
INSERT INTO {MIRROR_TABLE} AS e
       (job_id, id, org_id, domain, schema_id, data_type, normalized, raw_blob_key,
        quality_completeness, quality_validation, quality_composite, latency_ms,
        delivered_at, created_at, payload)
SELECT $1, $2, $3, $4, $5, $6, body.p -> 'normalized', $7, $8, $9, $10, $11, $12, $13, body.p
  FROM (SELECT $14::jsonb AS p) AS body
ON CONFLICT (job_id) DO UPDATE
   SET id = excluded.id, org_id = excluded.org_id, domain = excluded.domain,
       schema_id = excluded.schema_id, data_type = excluded.data_type,
       normalized = excluded.normalized, raw_blob_key = excluded.raw_blob_key,
       quality_completeness = excluded.quality_completeness,
       quality_validation = excluded.quality_validation,
       quality_composite = excluded.quality_composite,
       latency_ms = excluded.latency_ms, delivered_at = excluded.delivered_at,
       created_at = excluded.created_at, payload = excluded.payload,
       harvested_at = now()
 WHERE e.payload IS DISTINCT FROM excluded.payload
"""  # noqa: S608 - a fixed table name


class BadResult(ValueError):
    """An answer that is not the row asked for: PgQueuer records the job as failed."""


def _timestamp(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def row_from_body(job_id: str, body: bytes) -> tuple[Any, ...]:
    """The upsert's arguments for one 200 body: parsed, its jobId checked, fields picked.

    The minimal validation any real harvester does: the body is JSON, it is the row of
    the job asked for, and the columns the mirror types (UUIDs, numbers, timestamps) are
    converted; a missing field raises. The body itself is stored whole, as jsonb."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or doc.get("jobId") != job_id:
        raise BadResult(f"the body is not the result of job {job_id}")
    return (uuid.UUID(job_id), uuid.UUID(doc["id"]), uuid.UUID(doc["orgId"]), doc["domain"],
            doc.get("schemaId"), doc["dataType"], doc.get("rawBlobKey"),
            float(doc["qualityCompleteness"]), float(doc["qualityValidation"]),
            float(doc["qualityComposite"]), doc.get("latencyMs"),
            _timestamp(doc.get("deliveredAt")), _timestamp(doc["createdAt"]), body.decode())


@dataclass(frozen=True)
class Config:
    dsn: str
    api_base_url: str
    token: str
    concurrency: int
    pool_size: int
    synchronous_commit: str

    @classmethod
    def from_environ(cls) -> Config:
        env = os.environ
        return cls(dsn=env["PEER_DATABASE_URL"], api_base_url=env["PEER_API_BASE_URL"].rstrip("/"),
                   token=env["PEER_API_TOKEN"], concurrency=int(env.get("PEER_CONCURRENCY", "64")),
                   pool_size=int(env.get("PEER_POOL_SIZE", "8")),
                   synchronous_commit=env.get("PEER_SYNCHRONOUS_COMMIT", "on"))


@dataclass
class Tally:
    """What the harness reads when the consumer stops (one JSON line on stdout)."""

    landed: int = 0
    last_landed: float = 0.0


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[Any]:
    """The factory ``pgq run`` enters: a PgQueuer with the harvesting entrypoint."""
    import aiohttp  # noqa: PLC0415 - the peer's venv has these; harvester's tests import this file
    import asyncpg  # noqa: PLC0415
    from pgqueuer import PgQueuer  # noqa: PLC0415
    from pgqueuer.models import Job  # noqa: PLC0415

    config = Config.from_environ()
    tally = Tally()
    # PgQueuer's performance guide: a direct connection (not a pool) for the QueueManager's
    # LISTEN and dequeues; the pool is for the work the jobs do.
    connection = await asyncpg.connect(config.dsn, server_settings={
        "application_name": "peer-pgqueuer", "synchronous_commit": config.synchronous_commit})
    pool = await asyncpg.create_pool(config.dsn, min_size=config.pool_size,
                                     max_size=config.pool_size, server_settings={
                                         "application_name": "peer-writer",
                                         "synchronous_commit": config.synchronous_commit})
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.concurrency),
        headers={"Authorization": f"Bearer {config.token}"})
    results_url = config.api_base_url + RESULTS_PREFIX
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint(ENTRYPOINT)
    async def harvest(job: Job) -> None:
        assert job.payload is not None
        job_id = job.payload.decode()
        async with session.get(results_url + job_id) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise BadResult(f"job {job_id}: HTTP {resp.status}")
        await pool.execute(UPSERT, *row_from_body(job_id, body))
        tally.landed += 1
        tally.last_landed = time.time()

    try:
        yield pgq
    finally:
        await session.close()
        await pool.close()
        await connection.close()
        sys.stdout.write(json.dumps({"landed": tally.landed,
                                     "last_landed": tally.last_landed}) + "\n")
        sys.stdout.flush()


async def feed(jobs: int, batch: int) -> None:
    """Enqueue ``jobs`` fresh job IDs through PgQueuer's own ``Queries.enqueue``, ``batch``
    per statement, once the harness says "go" (so that connecting is not timed); prints
    the wall time of the first enqueue and the CPU seconds spent from then on."""
    import asyncpg  # noqa: PLC0415
    from pgqueuer.db import AsyncpgDriver  # noqa: PLC0415
    from pgqueuer.queries import Queries  # noqa: PLC0415

    ids = [str(uuid.uuid4()).encode() for _ in range(jobs)]
    connection = await asyncpg.connect(os.environ["PEER_DATABASE_URL"])
    try:
        queries = Queries(AsyncpgDriver(connection))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.to_thread(sys.stdin.readline)
        started, cpu = time.time(), time.process_time()
        for at in range(0, jobs, batch):
            chunk = ids[at:at + batch]
            await queries.enqueue([ENTRYPOINT] * len(chunk), list(chunk), [0] * len(chunk))
        sys.stdout.write(json.dumps({"started": started, "fed": time.time() - started,
                                     "cpu": time.process_time() - cpu}) + "\n")
        sys.stdout.flush()
    finally:
        await connection.close()


def consume(batch_size: int, max_concurrent_tasks: int) -> None:
    """Run the consumer until SIGTERM, as ``pgq run`` would."""
    import pgqueuer  # noqa: PLC0415

    worker = pgqueuer.run(create_pgqueuer, batch_size=batch_size,
                          max_concurrent_tasks=max_concurrent_tasks)
    try:
        import uvloop  # noqa: PLC0415 - a PgQueuer dependency; `pgq run` uses it when present
    except ImportError:
        asyncio.run(worker)
    else:
        uvloop.run(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description="the PgQueuer peer: consumer and feeder")
    sub = parser.add_subparsers(dest="command", required=True)
    consuming = sub.add_parser("consume", help="harvest until SIGTERM")
    consuming.add_argument("--batch-size", type=int, required=True)
    consuming.add_argument("--max-concurrent-tasks", type=int, required=True)
    feeding = sub.add_parser("feed", help="enqueue fresh job IDs through Queries.enqueue")
    feeding.add_argument("--jobs", type=int, required=True)
    feeding.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    if args.command == "consume":
        consume(args.batch_size, args.max_concurrent_tasks)
    else:
        asyncio.run(feed(args.jobs, args.batch))


if __name__ == "__main__":
    main()
