"""The README's consumer (README "Querying the mirror", the asyncpg example) is run as
printed, against a real database: a notification for a row that is not there, one that
is not even a UUID, a connection killed by the server, and rows that land while it is
away. Every landed row reaches the consumer; nothing crashes it."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from harvester.tools.simulator import result_row
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "readme-consumer"


def readme_consumer() -> dict[str, Any]:
    """The python block of README "Querying the mirror" that defines follow()."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Querying the mirror\n"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    (code,) = [b for b in blocks if "async def follow(" in b]
    namespace: dict[str, Any] = {"__name__": "readme_consumer"}
    exec(compile(code, "README.md", "exec"), namespace)  # the README's own code, as printed
    return namespace


async def land(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    """Write a mirror row and notify in one transaction, as the daemon does."""
    row = result_row(job_id)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO harvester.jobs (job_id, state, landed_at, next_poll_at) "
                           "VALUES ($1, 'landed', now(), NULL)", job_id)
        await conn.execute(
            """
            INSERT INTO harvester.extraction_results
                   (job_id, id, org_id, domain, data_type, normalized, quality_completeness,
                    quality_validation, quality_composite, created_at, payload)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11::jsonb)
            """,
            job_id, uuid.UUID(row["id"]), uuid.UUID(row["orgId"]), row["domain"],
            row["dataType"], json.dumps(row["normalized"]), row["qualityCompleteness"],
            row["qualityValidation"], row["qualityComposite"],
            datetime.fromisoformat(row["createdAt"]), json.dumps(row))
        await conn.execute("SELECT pg_notify('harvester_landed', $1)", str(job_id))


async def consumer_backend(pool: asyncpg.Pool) -> int | None:
    pid: int | None = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()", APP)
    return pid


async def test_the_readme_consumer_survives_junk_a_dropped_connection_and_catches_up(
    db_url: str, pool: asyncpg.Pool
) -> None:
    consumer = readme_consumer()
    follow: Callable[..., Any] = consumer["follow"]
    parts = urlsplit(db_url)
    dsn = parts._replace(query="&".join(filter(None, [parts.query,
                                                      f"application_name={APP}"]))).geturl()
    seen: list[uuid.UUID] = []
    task = asyncio.create_task(follow(dsn, lambda row: seen.append(row["job_id"]), retry=0.2))
    try:
        await wait_until(lambda: _true_if(consumer_backend(pool)), 30, "the consumer to connect")
        live = uuid.uuid4()
        await land(pool, live)
        await wait_until(lambda: _done(lambda: live in seen), 30, "a live row")

        # Junk on the channel: a row that is absent, a payload that is not a UUID.
        await pool.execute("SELECT pg_notify('harvester_landed', $1)", str(uuid.uuid4()))
        await pool.execute("SELECT pg_notify('harvester_landed', 'DROP TABLE; --')")
        after_junk = uuid.uuid4()
        await land(pool, after_junk)
        await wait_until(lambda: _done(lambda: after_junk in seen), 30, "a row after junk")
        assert not task.done()

        # The server drops the consumer's connection; rows land while it is away.
        pid = await consumer_backend(pool)
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        missed = [uuid.uuid4() for _ in range(3)]
        for job_id in missed:
            await land(pool, job_id)
        await wait_until(lambda: _done(lambda: all(j in seen for j in missed)), 30,
                         "the rows landed while disconnected")
        reconnected = await consumer_backend(pool)
        assert reconnected is not None and reconnected != pid
        assert not task.done()
        # At least once: only rows of the look-back window may come twice, never junk.
        assert set(seen) == {live, after_junk, *missed}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _true_if(value: Any) -> bool:
    return (await value) is not None


async def _done(check: Callable[[], bool]) -> bool:
    return check()
