"""The change feed under load (README "Querying the mirror"): three daemons land 50,000
rows while a writer holds long transactions open among their short ones, and a
``harvester changes --follow`` consumer is killed (SIGKILL, mid-page) and restarted ten
times from the last cursor it handled. Every row reaches it exactly once, in cursor
order."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path

import asyncpg

from harvester.store.changes import Cursor
from harvester.tools.simulator import Mix
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import new_ids
from tests.helpers import enqueue, wait_for_states, wait_until

JOBS = 50_000
REPLICAS = 3
RESTARTS = 10
LONG_TRANSACTIONS = 12
ROWS_PER_LONG = 25


class FeedConsumer:
    """``harvester changes --follow`` as a consumer would run it: it handles each line
    and stores that line's cursor in the same step; killed, it starts again from the
    stored cursor. A line cut by the kill was never handled."""

    def __init__(self, db_url: str, log_dir: Path) -> None:
        self.db_url = db_url
        self.log_path = log_dir / "changes.log"
        self.cursor: str | None = None
        self.handled: list[tuple[Cursor, uuid.UUID, bool]] = []
        self.starts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HOME": os.environ.get("HOME", "/tmp"),
               "HARVESTER_DATABASE_URL": self.db_url, "HARVESTER_LOG_FORMAT": "json"}
        after = ["--after", self.cursor] if self.cursor else []
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "harvester", "changes", "--follow", "--limit", "500",
                *after, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=1 << 20)
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if not line.endswith(b"\n"):
                return  # cut by the kill: not handled, its cursor not stored
            change = json.loads(line)
            self.handled.append((Cursor.parse(change["cursor"]), uuid.UUID(change["job_id"]),
                                 change["deleted"]))
            self.cursor = change["cursor"]

    async def kill(self) -> None:
        assert self.proc is not None and self._reader is not None
        assert self.proc.returncode is None, "the consumer died by itself"
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader

    @property
    def jobs(self) -> set[uuid.UUID]:
        return {job for _, job, _ in self.handled}


async def hold_long_transactions(pool: asyncpg.Pool, rng: random.Random) -> list[uuid.UUID]:
    """Transactions that take their id, then stay open for seconds while the daemons'
    short ones commit rows after them, then commit their own rows."""
    written: list[uuid.UUID] = []
    for _ in range(LONG_TRANSACTIONS):
        ids = new_ids(ROWS_PER_LONG)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO harvester.extraction_results
                       (job_id, id, org_id, domain, data_type, normalized,
                        quality_completeness, quality_validation, quality_composite,
                        created_at, payload)
                SELECT j, gen_random_uuid(), gen_random_uuid(), 'long.example', 'product',
                       '{}', 1, 1, 1, now(), jsonb_build_object('jobId', j)
                  FROM unnest($1::uuid[]) AS j
                """, ids)
            await asyncio.sleep(rng.uniform(0.5, 3.0))
        written += ids
        await asyncio.sleep(rng.uniform(0.0, 1.0))
    return written


async def test_ten_consumer_restarts_while_three_daemons_land_50000_rows_miss_and_repeat_none(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
    tmp_path: Path,
) -> None:
    rng = random.Random(25)
    sim = await simulators(Mix.preset("first-poll", seed=25))
    sim.simulator.apply_control({"record": False})
    consumer = FeedConsumer(db_url, tmp_path)
    await consumer.start()
    ids = new_ids(JOBS)
    await enqueue(pool, ids)
    fleet = fleets(db_url, sim.url, {"HARVESTER_LOG_LEVEL": "warning"})
    for i in range(REPLICAS):
        fleet.spawn(f"replica-{i + 1}")
    long_writer = asyncio.create_task(hold_long_transactions(pool, rng))
    try:
        # Restarts spread over the stream: the next at every eleventh of it handled.
        total = JOBS + LONG_TRANSACTIONS * ROWS_PER_LONG
        for restart in range(1, RESTARTS + 1):
            threshold = total * restart // (RESTARTS + 1)

            async def reached(threshold: int = threshold) -> bool:
                return len(consumer.handled) >= threshold

            await wait_until(reached, 300, f"{threshold} rows handled")
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a page
            await consumer.kill()
            await consumer.start()
        long_rows = await long_writer
        await wait_for_states(pool, 300, landed=JOBS)

        async def everything() -> bool:
            return len(consumer.jobs) >= total

        await wait_until(everything, 300, "every row handled")
        await asyncio.sleep(1.0)  # anything more would be a duplicate
        await consumer.kill()
    finally:
        long_writer.cancel()
        await asyncio.gather(long_writer, return_exceptions=True)
        await fleet.close()
        if consumer.proc is not None and consumer.proc.returncode is None:
            consumer.proc.kill()
            await consumer.proc.wait()

    assert consumer.starts == RESTARTS + 1
    counts = Counter(job for _, job, _ in consumer.handled)
    assert [job for job, n in counts.items() if n > 1] == []
    mirror = {r["job_id"] for r in await pool.fetch(
        "SELECT job_id FROM harvester.extraction_results")}
    assert consumer.jobs == mirror == set(ids) | set(long_rows)
    assert not any(deleted for _, _, deleted in consumer.handled)
    cursors = [cursor for cursor, _, _ in consumer.handled]
    assert cursors == sorted(cursors)
    # The long transactions were interleaved with the daemons' short ones, not after them.
    positions = {job: n for n, (_, job, _) in enumerate(consumer.handled)}
    first_long = min(positions[j] for j in long_rows)
    assert first_long < len(consumer.handled) - len(long_rows)
