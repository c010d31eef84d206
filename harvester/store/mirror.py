"""The mirror's upkeep: rows written before schema version 5 rewritten to hold each
part of the body once (README "Upgrades", ``harvester mirror compact``).

A batch is one statement (``queries/mirror.sql`` ``compact``): the next rows by primary
key, those still holding the whole body rewritten, in one short transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from uuid import UUID

import asyncpg

from harvester.store import queries
from harvester.store.connect import translated

SQL: Final = queries.load("mirror")
NIL: Final = UUID(int=0)
"""Below every job ID: where a pass starts."""


@dataclass(frozen=True, slots=True)
class CompactBatch:
    last: UUID | None
    """The batch's highest job_id (the next batch starts after it); None: nothing left."""
    scanned: int
    rewritten: int


class MirrorStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def compact(self, after: UUID, limit: int) -> CompactBatch:
        """Rewrite the old-layout rows among the next ``limit`` rows after ``after``."""
        async with translated(self.pool):
            row = await self.pool.fetchrow(SQL["compact"], after, limit)
        assert row is not None
        return CompactBatch(row["last"], row["scanned"], row["rewritten"])
