"""The queue's figures: what `harvester status` prints and what /metrics exports.

Beside the road, for people: counts by state and upstream status, the due backlog,
open stuck records, live daemons, and what retention has left to do. Nothing the engine
decides reads them. The statements are the blocks of ``queries/figures.sql``; each
walks a partial index, the first entries of an index, or the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from harvester.errors import StoreError
from harvester.metrics import upstream_status_label
from harvester.store import queries
from harvester.store.connect import Connection

SQL: Final = queries.load("figures")
COUNTED_BELOW: Final = 8 * 1024 * 1024
"""A table whose heap is at most this many bytes has its rows counted exactly (about
30,000 queue rows: a count took 9-16 ms on the 2-core development machine at load 9);
a larger one reports the statistics' live-row count (README "Retention")."""


@dataclass(frozen=True, slots=True)
class OpenWork:
    """What both `harvester status` and /metrics show of the open work: jobs by state
    and upstream status, the due backlog, open stuck records (ages None: none)."""

    by_upstream: list[asyncpg.Record]
    due: int
    oldest_due_age: float | None
    stuck_open: int
    oldest_stuck_age: float | None
    tables: dict[str, dict[str, Any]]
    oldest_finished_age: float | None


async def open_work(conn: Connection) -> OpenWork:
    """The statements status and the gauges share, read once per call."""
    by_upstream = await conn.fetch(SQL["open_jobs"])
    due = await _one(conn, SQL["due_backlog"])
    stuck = await _one(conn, SQL["stuck_open"])
    tables, oldest_finished = await _retention_figures(conn)
    return OpenWork(by_upstream, int(due["due"]), due["age"], int(stuck["open"]),
                    stuck["age"], tables, oldest_finished)


async def status(conn: Connection) -> dict[str, Any]:
    """The numbers `harvester status` prints."""
    work = await open_work(conn)
    closed_counts = await conn.fetch(SQL["closed_jobs"])
    leased = await conn.fetchval(SQL["leased"])
    landed = await _one(conn, SQL["landed_recently"])
    failed = await conn.fetch(SQL["failed_by_reason"])
    autovacuum = await conn.fetchval(SQL["autovacuum"])
    workers = await conn.fetch(SQL["live_workers"])
    states = {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
    by_upstream: dict[str, int] = {}
    for row in work.by_upstream:
        states[row["state"]] += row["n"]
        label = "not_asked" if row["upstream_status"] is None else row["upstream_status"]
        by_upstream[label] = by_upstream.get(label, 0) + row["n"]
    for row in closed_counts:
        states[row["state"]] = row["n"]
    live = [dict(w) for w in workers]
    return {
        "jobs": states,
        "total": sum(states.values()),
        "open_by_upstream_status": dict(sorted(by_upstream.items(),
                                               key=lambda kv: (-kv[1], kv[0]))),
        "due_now": work.due,
        "oldest_due_age_seconds": work.oldest_due_age,
        "leased": leased,
        # The same number under its first name; "leased" says what it counts.
        "in_flight": leased,
        "stuck_open": work.stuck_open,
        "landed_last_minute": landed["last_minute"],
        "landed_last_hour": landed["last_hour"],
        "failed_by_reason": {r["failed_reason"]: r["n"] for r in failed},
        "auth_circuit_open": any(w["auth_circuit"] == "open" for w in live),
        "permission_circuit_open": any(w["permission_circuit"] == "open" for w in live),
        "upstream_alarms": sorted({w["upstream_alarm"] for w in live
                                   if w["upstream_alarm"] is not None}),
        "workers": live,
        # "rows_estimate" is the first name of "rows", kept for scripts that read it.
        "tables": {name: {"rows": int(t["rows"]), "rows_counted": t["counted"],
                          "rows_estimate": int(t["rows"]), "bytes": int(t["bytes"])}
                   for name, t in work.tables.items()},
        "oldest_finished_age_seconds": work.oldest_finished_age,
        # Without autovacuum the space retention frees is never reused.
        "autovacuum": bool(autovacuum),
    }


async def queue_gauges(conn: Connection) -> dict[str, float]:
    """Cheap numbers for /metrics: open jobs by state and upstream status, due
    backlog, oldest due age, open stuck records, table sizes and the oldest finished
    row.

    The queries walk only the partial indexes of open jobs and open stuck records,
    the first entry of the finished jobs' indexes, and the catalog."""
    work = await open_work(conn)
    gauges = {"pending": 0.0, "stuck": 0.0}
    for row in work.by_upstream:
        gauges[row["state"]] += float(row["n"])
        key = f"upstream:{row['state']}:{upstream_status_label(row['upstream_status'])}"
        gauges[key] = gauges.get(key, 0.0) + float(row["n"])
    gauges["due"] = float(work.due)
    gauges["oldest_due_age"] = work.oldest_due_age or 0.0
    gauges["stuck_open"] = float(work.stuck_open)
    gauges["oldest_stuck_age"] = work.oldest_stuck_age or 0.0
    gauges["oldest_finished_age"] = work.oldest_finished_age or 0.0
    for name, size in work.tables.items():
        gauges[f"table_rows:{name}"] = size["rows"]
        gauges[f"table_bytes:{name}"] = size["bytes"]
    return gauges


async def _retention_figures(conn: Connection) -> tuple[dict[str, dict[str, Any]],
                                                         float | None]:
    """Each table's size (``rows``: counted, or the statistics' live rows above
    :data:`COUNTED_BELOW`, ``counted`` says which; ``bytes``: with its indexes and TOAST)
    and the age of the oldest finished queue row the purge may delete (None: none)."""
    sizes = {row["name"]: {"rows": row["rows"], "counted": row["counted"],
                           "bytes": row["bytes"]}
             for row in await conn.fetch(SQL["table_sizes"], COUNTED_BELOW)}
    oldest: float | None = await conn.fetchval(SQL["oldest_finished"])
    return sizes, oldest


async def _one(conn: Connection, sql: str, *args: Any) -> asyncpg.Record:
    """fetchrow for statements that always return exactly one row (aggregates)."""
    row = await conn.fetchrow(sql, *args)
    if row is None:  # pragma: no cover - an aggregate always returns a row
        raise StoreError("expected one row")
    return row
