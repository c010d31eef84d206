"""The README's consumer (README "Querying the mirror", the asyncpg example over the change
feed) is run as printed, against a real database: a writer transaction held open across
its reads (the row a look-back by time would skip), junk on the channel, a connection
killed by the server, and the consumer itself killed and restarted mid-stream with the
cursor it stored. Every landed row reaches it exactly once; nothing crashes it."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from harvester.store import Connection
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


async def land(conn: asyncpg.Pool | Connection, ids: Sequence[uuid.UUID]) -> None:
    """Write mirror rows and notify, in one transaction as the daemon does (or in the
    caller's, when it holds one open)."""
    for job_id in ids:
        row = result_row(job_id)
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


async def land_each(pool: asyncpg.Pool, ids: Sequence[uuid.UUID]) -> None:
    for job_id in ids:
        async with pool.acquire() as conn, conn.transaction():
            await land(conn, [job_id])


class Consumer:
    """What the README's ``handle`` stands for: the consumer's writes and its cursor,
    stored together (here in one step, as one transaction would)."""

    def __init__(self) -> None:
        self.seen: list[uuid.UUID] = []
        self.cursor: str | None = None

    async def handle(self, changes: Sequence[asyncpg.Record], cursor: str) -> None:
        self.seen.extend(c["job_id"] for c in changes if not c["deleted"])
        self.cursor = cursor


async def consumer_backend(pool: asyncpg.Pool) -> int | None:
    pid: int | None = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()", APP)
    return pid


async def test_the_readme_consumer_gets_every_row_once_through_held_transactions_and_restarts(
    db_url: str, pool: asyncpg.Pool
) -> None:
    follow: Callable[..., Any] = readme_consumer()["follow"]
    parts = urlsplit(db_url)
    dsn = parts._replace(query="&".join(filter(None, [parts.query,
                                                      f"application_name={APP}"]))).geturl()
    consumer = Consumer()
    landed: list[uuid.UUID] = []

    def start() -> asyncio.Task[Any]:
        return asyncio.create_task(follow(dsn, consumer.cursor, consumer.handle, page=7,
                                          poll=0.1, retry=0.2))

    async def has(ids: Sequence[uuid.UUID]) -> bool:
        return set(ids) <= set(consumer.seen)

    task = start()
    try:
        await wait_until(lambda: _true_if(consumer_backend(pool)), 30, "the consumer to connect")
        first = [uuid.uuid4()]
        await land_each(pool, first)
        landed += first
        await wait_until(lambda: has(first), 60, "a live row")

        # A writer that began first and commits last: its row, and every row committed
        # after it began, wait for it; none is skipped.
        slow, fast = uuid.uuid4(), uuid.uuid4()
        async with pool.acquire() as writer:
            tx = writer.transaction()
            await tx.start()
            try:
                await land(writer, [slow])
                await land_each(pool, [fast])
                for _ in range(3):  # the consumer reads, and reads again, meanwhile
                    await _wait_for_a_read(pool)
                assert slow not in consumer.seen and fast not in consumer.seen
            finally:
                await tx.commit()
        landed += [slow, fast]
        await wait_until(lambda: has([slow, fast]), 60, "the held-back rows")
        assert consumer.seen.index(slow) < consumer.seen.index(fast)

        # Junk on the channel wakes it and changes nothing.
        await pool.execute("SELECT pg_notify('harvester_landed', $1)", str(uuid.uuid4()))
        await pool.execute("SELECT pg_notify('harvester_landed', 'DROP TABLE; --')")

        # The server drops its connection; rows land while it is away.
        pid = await consumer_backend(pool)
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        away = [uuid.uuid4() for _ in range(5)]
        await land_each(pool, away)
        landed += away
        await wait_until(lambda: has(away), 60, "the rows landed while disconnected")
        assert await consumer_backend(pool) not in (None, pid)
        assert not task.done()

        # The consumer is killed mid-stream (pages of 7 over 60 rows landing), then
        # started again from the cursor it stored.
        stream = [uuid.uuid4() for _ in range(60)]
        writing = asyncio.create_task(land_each(pool, stream))
        await wait_until(lambda: _done(lambda: bool(set(stream) & set(consumer.seen))), 60,
                         "the stream to start")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writing
        landed += stream
        task = start()
        await wait_until(lambda: has(stream), 60, "the rest of the stream after a restart")
        assert not task.done()
        # Exactly once: nothing twice, nothing missing, junk never.
        assert sorted(consumer.seen) == sorted(landed)
        assert len(consumer.seen) == len(set(consumer.seen))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _wait_for_a_read(pool: asyncpg.Pool) -> None:
    """Until the consumer's connection begins a statement (a read of the feed)."""
    since = await pool.fetchval("SELECT clock_timestamp()")

    async def read() -> bool:
        return bool(await pool.fetchval(
            "SELECT query_start > $2 FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()", APP, since))

    await wait_until(read, 30, "the consumer to read the feed")


async def _true_if(value: Any) -> bool:
    return (await value) is not None


async def _done(check: Callable[[], bool]) -> bool:
    return check()
