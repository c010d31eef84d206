"""The operators' reads and writes: feeding, requeue, stuck records, pages of jobs.

Beside the road, for people and their tools: ``harvester enqueue``/``requeue``/``stuck``/
``jobs``, the admin API's job endpoints, readiness and the queue figures of ``status`` and
/metrics (:mod:`harvester.store.figures`). Nothing here is on the engine's path, and the
engine's adapter (:mod:`harvester.store.queue`) never loads these statements (the blocks
of ``queries/operators.sql``). The only SQL built here are a requeue's selection and a
page's ``where`` and ``order``, from fixed texts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal
from uuid import UUID

import asyncpg

from harvester.ports import AckReport, JobCursor, RequeueReport, Selection
from harvester.store import figures, queries
from harvester.store.connect import Connection, translated
from harvester.store.listen import CHANNEL_JOBS

# Each listable state (harvester.jobquery.LISTABLE_STATES) in the order of its own index
# (see sql/001_initial.sql).
_LIST_ORDER: Final[dict[str, tuple[str, bool]]] = {
    "pending": ("next_poll_at", False),
    "stuck": ("next_poll_at", False),
    "landed": ("landed_at", True),
    "failed": ("updated_at", True),
}


JOB_COLUMNS: Final = (
    "job_id", "state", "enqueued_at", "requeued_at", "updated_at", "next_poll_at", "polls",
    "last_status", "last_error", "failed_reason", "upstream_status", "status_checked_at",
    "status_since", "finished_seen_at", "next_step", "status_checks", "landed_at",
    "leased_until", "leased_by")
"""What :meth:`OperatorStore.job` shows of a queue row."""
SQL: Final = queries.load("operators", job_columns=", ".join(JOB_COLUMNS))
DURABLE: Final = SQL["durable"]
OPEN_STUCK: Final = queries.fragment("open_stuck")
STUCK_SINCE: Final = queries.fragment("stuck_since")
STUCK_LISTS: Final = {
    "open": (OPEN_STUCK, "s.first_seen_at, s.job_id"),
    "resolved": (f"NOT ({OPEN_STUCK})", "s.resolved_at DESC, s.job_id"),
    "all": ("true", "s.first_seen_at, s.job_id"),
}
"""The ``where`` and ``order`` of each list of stuck records (operators.sql)."""
BY_IDS: Final = "j.job_id = ANY($1::uuid[])"
"""A requeue's ``where`` when job IDs are given."""


class OperatorStore:
    """The database as operators see it: the CLI's commands, the admin API's job
    endpoints, readiness and the queue gauges of /metrics.

    Methods that change rows take ``conn``, a connection in a transaction, so that a
    command streaming IDs batches many calls into one commit."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ------------------------------------------------------------ feeding

    async def enqueue(self, job_ids: Sequence[UUID], conn: Connection | None = None
                      ) -> int:
        """Insert new jobs, due now; returns how many were new (the rest were known).

        ``ON CONFLICT DO NOTHING`` without a conflict target: naming ``(job_id)`` would
        need SELECT on the column, and feeding needs only USAGE on the schema and INSERT
        on harvester.jobs, whatever the path (README "Feeding jobs")."""
        async with translated():
            if conn is not None:
                if conn.is_in_transaction():
                    await conn.execute(DURABLE)
                return int(await conn.fetchval(SQL["enqueue"], list(job_ids)))
            async with self.pool.acquire() as own, own.transaction():
                await own.execute(DURABLE)
                return int(await own.fetchval(SQL["enqueue"], list(job_ids)))

    async def requeue(self, *, job_ids: Sequence[UUID] | None = None,
                      state: Literal["failed", "stuck"] | None = None,
                      selection: Selection | None = None, dry_run: bool = False,
                      conn: Connection | None = None) -> RequeueReport:
        """Put jobs back to pending, due now, their age limits counted from now.

        Either ``job_ids`` or a ``selection`` (``state`` is the short form of a selection
        without filters). By ID any job is requeued, a landed one included: it is polled
        again on purpose (requeued_at tells the claim not to land it from the mirror), and
        landing it again is the usual idempotent upsert. An ID whose queue row retention
        deleted while the mirror keeps its row is put back in the queue the same way. The
        lease token is bumped, so an answer still in flight for a requeued job cannot
        overwrite the reset. A requeued job starts over as a freshly fed one does:
        followed through batch-status first (``next_step = 'status'``), its landing-lag
        origin and 403 streak cleared; its poll count and last answer are kept as history.
        An open stuck record stays open: it closes when the job ends (lands, fails,
        expires) or when an operator acknowledges it, not when someone retries.

        ``dry_run`` counts what would be requeued and changes nothing. With ``conn`` (a
        connection in a transaction) the caller batches many calls into one commit."""
        if state is not None:
            if selection is not None:
                raise ValueError("requeue takes a state or a selection, not both")
            selection = Selection(state)
        if (job_ids is None) == (selection is None):
            raise ValueError("requeue takes job IDs or a selection, not both")
        report = RequeueReport(dry_run=dry_run)
        if job_ids is not None:
            where, args = BY_IDS, [list(dict.fromkeys(job_ids))]
        else:
            assert selection is not None
            where, args = selection_where(selection)
        async with translated(), self._connection(conn) as c:
            if job_ids is not None:
                # Before the update: which IDs had landed, which are nowhere.
                rows = await c.fetch(SQL["requeue_named"], args[0])
                report.landed = [r["job_id"] for r in rows
                                 if r["state"] == "landed" or r["mirrored"]]
                report.unknown = [r["job_id"] for r in rows
                                  if r["state"] is None and not r["mirrored"]]
            if dry_run:
                report.requeued = int(await c.fetchval(
                    SQL.build("requeue_dry_run", where=where), *args))
                if job_ids is not None:
                    report.requeued += sum(1 for r in rows
                                           if r["state"] is None and r["mirrored"])
            else:
                if not c.is_in_transaction():
                    raise ValueError("requeue needs a connection in a transaction")
                await c.execute(DURABLE)
                report.requeued = int(await c.fetchval(SQL.build("requeue", where=where), *args))
                if job_ids is not None:
                    report.requeued += int(await c.fetchval(SQL["revive"], args[0]))
                if report.requeued:
                    await c.execute(SQL["notify_fed"], CHANNEL_JOBS)
        return report

    @asynccontextmanager
    async def _connection(self, conn: Connection | None) -> AsyncIterator[Connection]:
        """``conn`` as is, or a pooled connection in a transaction of its own."""
        if conn is not None:
            yield conn
            return
        async with self.pool.acquire() as own, own.transaction():
            yield own

    # ------------------------------------------------------------ reading
    #
    # What operators see: `harvester status`, `stuck`, `jobs`, the admin API's job
    # pages and the queue gauges of /metrics. Every list is bounded and walks an index
    # in its order (README "Commands", "Operating").

    async def status(self) -> dict[str, Any]:
        """The numbers `harvester status` prints."""
        async with translated(), self.pool.acquire() as conn:
            return await figures.status(conn)

    async def queue_gauges(self) -> dict[str, float]:
        """The queue's numbers for /metrics (:func:`harvester.store.figures.queue_gauges`)."""
        async with translated(), self.pool.acquire() as conn:
            return await figures.queue_gauges(conn)

    async def stuck_records(self, which: Literal["open", "resolved", "all"] = "open",
                            limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Stuck records and how many there are in all (``limit`` caps the list only).

        Open ones (and ``all``) oldest first; resolved ones most recently closed first."""
        where, order = STUCK_LISTS[which]
        async with translated(), self.pool.acquire() as conn:
            rows = await conn.fetch(SQL.build("stuck_records", where=where, order=order), limit)
            total = await conn.fetchval(SQL.build("stuck_count", where=where))
        return [dict(r) for r in rows], int(total)

    async def open_stuck(self, limit: int | None = None) -> list[dict[str, Any]]:
        rows, _ = await self.stuck_records("open", limit)
        return rows

    async def acknowledge_stuck(self, job_ids: Sequence[UUID], by: str, note: str,
                                conn: Connection | None = None) -> AckReport:
        """Close open stuck records by hand: ``resolution = 'acknowledged'``, who, why.

        Only open records change; the jobs themselves keep their state and their
        recheck, so a row that lands later is still mirrored. The report says what
        happened to every ID: acknowledged now, closed already (and how), never stuck,
        or not in the queue."""
        unique = list(dict.fromkeys(job_ids))
        async with translated(), self._connection(conn) as c:
            rows = await c.fetch(SQL["acknowledge_stuck"], unique, by, note)
        report = AckReport()
        for row in rows:
            if row["acked"]:
                report.acknowledged.append(row["job_id"])
            elif not row["known"]:
                report.unknown.append(row["job_id"])
            elif not row["was_stuck"]:
                report.never_stuck.append(row["job_id"])
            else:
                report.closed_already.append(
                    (row["job_id"], row["resolution"] or "unknown", row["resolved_by"]))
        return report

    async def list_jobs(self, state: str, *, reasons: Sequence[str] = (), limit: int = 100,
                        after: JobCursor | None = None
                        ) -> tuple[list[dict[str, Any]], JobCursor | None]:
        """One page of jobs in ``state`` and the cursor of the next page (None: last).

        Each state is listed in the order of its own index, so a page costs ``limit``
        rows however large the queue: open jobs by next poll time (the most overdue
        first), landed ones by landing time and failed ones by failure time (the most
        recent first). Keyset pagination: a page starts after the (time, job_id) of the
        previous one, so pages do not shift when jobs are added; a live queue moves,
        and a job whose next poll time changes may move to another page."""
        sql, args = list_jobs_sql(state, reasons=reasons, limit=limit, after=after)
        async with translated():
            rows = await self.pool.fetch(sql, *args)
        column = _LIST_ORDER[state][0]
        page = [dict(r) for r in rows[:limit]]
        following = None
        if len(rows) > limit:
            last = page[-1]
            following = JobCursor(last[column], last["job_id"])
        return page, following

    async def job(self, job_id: UUID) -> dict[str, Any] | None:
        """One job as the admin API shows it: its queue row (with what batch-status last
        said of it), its mirror row when landed (``result``, JSON columns decoded), and
        its stuck record if it ever had one (with how, by whom and why it closed).

        A job whose queue row retention deleted is still shown while the mirror keeps
        its row: ``landed`` (at the time the row was harvested), its queue history null."""
        async with translated(), self.pool.acquire() as conn:
            row = await conn.fetchrow(SQL["job"], job_id)
            if row is not None:
                found = dict(row)
            else:
                harvested = await conn.fetchval(SQL["job_harvested"], job_id)
                if harvested is None:
                    return None
                found = {**dict.fromkeys(JOB_COLUMNS), "job_id": job_id, "state": "landed",
                         "landed_at": harvested}
            result = await conn.fetchrow(SQL["job_result"], job_id)
            if result is None:
                found["result"] = None
            else:
                mirror = dict(result)
                mirror["normalized"] = json.loads(mirror["normalized"])
                mirror["payload"] = json.loads(mirror["payload"])
                found["result"] = mirror
            stuck = await conn.fetchrow(SQL["job_stuck"], job_id)
            found["stuck"] = None if stuck is None else dict(stuck)
        return found

    async def ping(self) -> None:
        async with translated():
            await self.pool.fetchval(SQL["ping"])


def selection_where(selection: Selection) -> tuple[str, list[Any]]:
    """A WHERE fragment over ``harvester.jobs AS j`` and its arguments ($1…).

    The state is written into the statement (one of two fixed words) so that the
    planner can use the partial index of failed jobs, also in a generic plan."""
    if selection.state not in ("failed", "stuck"):
        raise ValueError(f"cannot requeue by state {selection.state!r}")
    clauses = [f"j.state = '{selection.state}'"]
    args: list[Any] = []
    if selection.reasons:
        args.append(list(selection.reasons))
        clauses.append(f"j.failed_reason = ANY(${len(args)}::text[])")
    since = "j.updated_at" if selection.state == "failed" else STUCK_SINCE
    if selection.older_than is not None:
        args.append(selection.older_than)
        clauses.append(f"{since} <= now() - make_interval(secs => ${len(args)})")
    if selection.newer_than is not None:
        args.append(selection.newer_than)
        clauses.append(f"{since} > now() - make_interval(secs => ${len(args)})")
    return " AND ".join(clauses), args


def list_jobs_sql(state: str, *, reasons: Sequence[str] = (), limit: int = 100,
                  after: JobCursor | None = None) -> tuple[str, list[Any]]:
    """The statement behind :meth:`OperatorStore.list_jobs` (one more row than ``limit``, to know
    whether a next page exists), apart so that a test can EXPLAIN it."""
    column, descending = _LIST_ORDER[state]  # a KeyError for any other text
    args: list[Any] = [limit + 1]
    # The state is written into the statement, not bound: a partial index is only
    # usable when the planner can see its predicate holds, also in a generic plan.
    where = [f"j.state = '{state}'"]
    if state in ("pending", "stuck"):
        where.append("j.state IN ('pending', 'stuck')")  # the open jobs' index
    if reasons:
        args.append(list(reasons))
        where.append(f"j.failed_reason = ANY(${len(args)}::text[])")
    if after is not None:
        args += [after.at, after.job_id]
        compare = "<" if descending else ">"
        where.append(f"(j.{column}, j.job_id) {compare} (${len(args) - 1}, ${len(args)})")
    direction = "DESC" if descending else "ASC"
    sql = SQL.build("list_jobs", where=" AND ".join(where),
                    order=f"j.{column} {direction}, j.job_id {direction}")
    return sql, args
