"""The store's three adapters over one pool, as the daemon holds them.

Tests often claim, requeue, read a job and purge in one scenario; :class:`Store` lets
them do it through one object. Each adapter keeps its own statements and is also tested
alone; the engine only ever sees :class:`~harvester.store.queue.QueueStore`.
"""

from __future__ import annotations

import asyncpg

from harvester.store.operators import OperatorStore
from harvester.store.purge import PurgeStore
from harvester.store.queue import QueueStore


class Store(QueueStore, OperatorStore, PurgeStore):
    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None) -> None:
        QueueStore.__init__(self, pool, dsn)
