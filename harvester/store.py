"""The PostgreSQL store: the queue, the mirror and the stuck record, through asyncpg.

A thin adapter. It claims due jobs in batches (``FOR UPDATE SKIP LOCKED`` in a
materialized CTE, a lease, a fencing token), writes a batch of outcomes in one
transaction (job states, mirror upserts, stuck records, notifications), and answers the
operational questions (status, stuck list, requeue, one job). asyncpg's errors stop
here: a dropped connection or a restarting server becomes
:class:`~harvester.errors.StoreUnavailable`, anything else :class:`StoreError`.
Every statement is parameterized.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias
from uuid import UUID

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record])
else:
    Connection = asyncpg.Connection

from harvester.dsn import (
    DEFAULT_CONNECT_TIMEOUT,
    address,
    named_files,
    scrub,
    split_client_options,
)
from harvester.errors import DatabaseConfigError, StoreError, StoreUnavailable
from harvester.logs import get_logger
from harvester.policy import Fail, Job, Land, Retry, Stuck
from harvester.ports import Outcome, ReleaseRow, WorkerState, WriteReport

CHANNEL_JOBS: Final = "harvester_jobs"
"""Sent once per INSERT statement into harvester.jobs (a trigger), and by requeue."""
LISTEN_KEEPALIVE: Final = 10.0
LISTEN_RETRY_CAP: Final = 30.0
log = get_logger("harvester.store")

# Errors that mean "the database is away right now", not "the statement is wrong".
_TRANSIENT: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def translate(exc: BaseException) -> StoreError:
    """Map an asyncpg/OS error to the project's own."""
    if isinstance(exc, _TRANSIENT):
        return StoreUnavailable(f"database unavailable: {type(exc).__name__}: {_line(exc)}")
    return StoreError(f"database error: {type(exc).__name__}: {_line(exc)}")


def _line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
            TimeoutError) as exc:
        raise translate(exc) from exc


async def _keep_session(conn: Connection) -> None:
    """Pool reset hook: nothing to undo.

    asyncpg's default reset runs a query (UNLISTEN, RESET ALL, ...) on every release:
    one more round trip per claim and per write. The daemon's pooled connections never
    LISTEN, SET or hold advisory locks beyond a block that releases them, so there is
    no session state to reset; asyncpg still rolls back an open transaction itself.
    """


DURABLE: Final = "SET LOCAL synchronous_commit TO on"
DSN_VARIABLE: Final = "HARVESTER_DATABASE_URL"


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """A DSN made ready for asyncpg: the client-only options taken out, the connect
    timeout apart, and where it points for messages (no credentials)."""

    dsn: str
    timeout: float | None
    where: str

    @classmethod
    def parse(cls, raw: str) -> ConnectTarget:
        """Check the DSN as asyncpg will read it, without a connection: anything it
        refuses here (``sslmode=bogus``, a CA file that is not there or holds no
        certificate) can never work, so it is a :class:`DatabaseConfigError`, not an
        outage to retry."""
        try:
            cleaned, timeout = split_client_options(raw)
        except ValueError as exc:
            raise DatabaseConfigError(f"{DSN_VARIABLE}: {exc}") from None
        target = cls(cleaned, timeout, address(raw))
        try:
            _parse_as_asyncpg(cleaned)
        except TypeError:
            pass  # the parser's signature changed: the checks happen on connect instead
        except Exception as exc:  # whatever the parser refuses is the DSN's fault
            raise target.config_error(exc, raw) from None
        return target

    def config_error(self, exc: BaseException, raw: str) -> DatabaseConfigError:
        detail = scrub(_line(exc), raw)
        files = named_files(raw)
        if isinstance(exc, OSError) and files:
            # ssl's loaders say "No such file or directory" without the file's name.
            unreadable = [f"{key}={path}" for key, path in files.items()
                          if not os.access(path, os.R_OK)]
            named = ", ".join(unreadable or [f"{k}={v}" for k, v in files.items()])
            detail = f"cannot use {scrub(named, raw)}: {detail}"
        return DatabaseConfigError(f"{DSN_VARIABLE}: {detail}")


def _parse_as_asyncpg(cleaned: str) -> None:
    """asyncpg's own DSN parsing, which every connection runs first (no network).

    It is not public API, so its parameters are read from its signature; should a
    future asyncpg rename it, the check is skipped and the same errors surface on
    connect, where :func:`create_pool` classifies them."""
    parse = getattr(asyncpg.connect_utils, "_parse_connect_arguments", None)
    if parse is None:
        return
    try:
        parameters = inspect.signature(parse).parameters
    except (TypeError, ValueError):
        return
    known: dict[str, Any] = {"dsn": cleaned, "statement_cache_size": 100,
                             "max_cached_statement_lifetime": 300,
                             "max_cacheable_statement_size": 15 * 1024}
    parse(**{name: known.get(name) for name in parameters})


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8,
                      application_name: str = "harvester", wait_for_flush: bool = True
                      ) -> asyncpg.Pool:
    """A pool with settings fit for short OLTP statements.

    ``wait_for_flush=False`` is for the daemon's claims and outcomes: their commits do
    not wait for the WAL to reach disk (``synchronous_commit = off``). Everything they
    record can be recomputed from upstream: if PostgreSQL itself crashes, the last few
    hundred milliseconds of claims and outcomes may be lost, their jobs simply come due
    again and are polled again (a lost claim's late write is fenced off; re-landing a
    row is idempotent). Commit latency is otherwise the claim loop's bottleneck (a
    disk flush per claim). Feeding is different: a fed job must never be lost, so
    enqueue and requeue force ``synchronous_commit = on`` for their own transactions.

    Connecting waits at most the DSN's ``connect_timeout`` (default 10 s) per attempt:
    a server that accepts connections and never answers is reported, naming where and
    how long, instead of hanging the command.
    """
    target = ConnectTarget.parse(dsn)
    settings = {"application_name": application_name, "jit": "off"}
    if not wait_for_flush:
        settings["synchronous_commit"] = "off"
    try:
        return await asyncpg.create_pool(
            target.dsn,
            min_size=min_size,
            max_size=max_size,
            reset=_keep_session,
            command_timeout=60,
            max_inactive_connection_lifetime=300,
            server_settings=settings,
            # connect_timeout=0 asks to wait for ever (libpq); a year is as good.
            timeout=target.timeout if target.timeout is not None else 365 * 86400.0,
        )
    except TimeoutError as exc:
        waited = "" if target.timeout is None else f" within {target.timeout:g} s"
        raise StoreUnavailable(
            f"database unavailable: no answer from {target.where}{waited} "
            f"(connect_timeout in {DSN_VARIABLE}; default {DEFAULT_CONNECT_TIMEOUT:g} s)"
        ) from exc
    except (asyncpg.ClientConfigurationError, ssl.SSLCertVerificationError) as exc:
        # A certificate the CA file does not vouch for, or a host name it does not
        # name, fails the same way on every attempt.
        raise target.config_error(exc, dsn) from exc
    except asyncpg.PostgresError as exc:
        if isinstance(exc, _TRANSIENT):  # starting up, shutting down, too many clients
            raise translate(exc) from exc
        # The server answered and refused: a wrong password or user, a database that
        # does not exist, no CONNECT privilege, a DSN parameter it does not know.
        raise DatabaseConfigError(
            f"{DSN_VARIABLE}: {type(exc).__name__}: {scrub(_line(exc), dsn)}") from exc
    except (asyncpg.InterfaceError, OSError) as exc:
        raise translate(exc) from exc


# ---------------------------------------------------------------- batch columns


@dataclass(frozen=True, slots=True)
class Columns:
    """The columns of one ``unnest($n::type[], ...) AS alias(name, ...)`` in a batch
    statement, named once: the SQL and the parameter arrays both come from here, so a
    column can never be sent in the wrong position."""

    alias: str
    columns: tuple[tuple[str, str], ...]
    first: int = 1
    """Number of the first parameter ($n)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def after(self) -> int:
        """The first parameter number after these columns."""
        return self.first + len(self.columns)

    def unnest(self) -> str:
        arrays = ", ".join(f"${self.first + i}::{kind}[]"
                           for i, (_, kind) in enumerate(self.columns))
        return f"unnest({arrays}) AS {self.alias}({', '.join(self.names)})"

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        return [[row[name] for row in rows] for name in self.names]


JOB_COLUMNS: Final = Columns("u", (
    ("job_id", "uuid"), ("lease_seq", "bigint"), ("state", "text"), ("delay", "float8"),
    ("polled", "int"), ("status", "int"), ("error", "text"), ("keep_answer", "bool"),
    ("attempt", "int"), ("c500", "int"), ("c403", "int"), ("failed_reason", "text"),
    ("step", "text"), ("seen", "text"),
))
RESULT_COLUMNS: Final = Columns("r", (
    ("job_id", "uuid"), ("id", "uuid"), ("org_id", "uuid"), ("domain", "text"),
    ("schema_id", "text"), ("data_type", "text"), ("raw_blob_key", "text"),
    ("quality_completeness", "float8"), ("quality_validation", "float8"),
    ("quality_composite", "float8"), ("latency_ms", "int"), ("delivered_at", "timestamptz"),
    ("created_at", "timestamptz"), ("payload_text", "text"),
), first=JOB_COLUMNS.after)
STUCK_COLUMNS: Final = Columns("st", (
    ("job_id", "uuid"), ("status", "int"), ("body", "text"), ("newly", "bool"),
), first=RESULT_COLUMNS.after)
RELEASE_COLUMNS: Final = Columns("u", (
    ("job_id", "uuid"), ("lease_seq", "bigint"), ("delay", "float8"), ("polled", "int"),
    ("status", "int"), ("error", "text"),
))

# ---------------------------------------------------------------- the claim

# The lease lives in its own columns, not in next_poll_at: a claim then changes no
# indexed column, so PostgreSQL updates the row in place (a HOT update) without new
# entries in the due index or the primary key. Jobs in flight stay in the due index
# and the claim steps over them (at most the jobs in flight across all replicas).
CLAIM_SQL: Final = """
WITH due AS MATERIALIZED (
    SELECT job_id
      FROM harvester.jobs
     WHERE state IN ('pending', 'stuck')
       AND next_poll_at <= now()
       AND (leased_until IS NULL OR leased_until <= now())
     ORDER BY next_poll_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE harvester.jobs AS j
   SET leased_until = now() + make_interval(secs => $2),
       leased_by    = $3,
       lease_seq    = j.lease_seq + 1
  FROM due
 WHERE j.job_id = due.job_id
RETURNING j.job_id, j.state, coalesce(j.requeued_at, j.enqueued_at) AS age_origin,
          j.polls, j.attempt, j.consecutive_500s, j.lease_seq, j.next_step,
          j.upstream_status, j.status_since, j.finished_seen_at, j.consecutive_403s
"""

NEXT_DUE_SQL: Final = """
SELECT next_poll_at
  FROM harvester.jobs
 WHERE state IN ('pending', 'stuck')
   AND (leased_until IS NULL OR leased_until <= now())
 ORDER BY next_poll_at
 LIMIT 1
"""

# One statement per batch of outcomes: the fenced job update, the mirror upsert, the
# stuck record and the notifications, atomic and in a single round trip. Only jobs
# whose lease_seq still matches are written; the mirror and stuck CTEs join on what
# the fenced update returned. Landing the same row twice changes nothing: the mirror
# row is only rewritten (and downstream notified) when the body differs. A job that
# ends (landed, failed, expired) closes its open stuck record, saying how.
WRITE_SQL: Final = f"""
WITH u AS (
    SELECT * FROM {JOB_COLUMNS.unnest()}
), fenced AS (
    UPDATE harvester.jobs AS j
       SET state             = u.state,
           next_poll_at      = CASE WHEN u.state IN ('landed', 'failed') THEN NULL
                                    ELSE now() + make_interval(secs => u.delay) END,
           polls             = j.polls + u.polled,
           last_status       = CASE WHEN u.keep_answer THEN j.last_status ELSE u.status END,
           last_error        = CASE WHEN u.keep_answer THEN j.last_error ELSE u.error END,
           attempt           = u.attempt,
           consecutive_500s  = u.c500,
           consecutive_403s  = u.c403,
           failed_reason     = u.failed_reason,
           next_step         = coalesce(u.step, j.next_step),
           upstream_status   = coalesce(u.seen, j.upstream_status),
           status_checks     = j.status_checks + (u.seen IS NOT NULL)::int,
           status_checked_at = CASE WHEN u.seen IS NULL THEN j.status_checked_at ELSE now() END,
           status_since      = CASE WHEN u.seen IS DISTINCT FROM j.upstream_status
                                     AND u.seen IS NOT NULL THEN now()
                                    ELSE j.status_since END,
           finished_seen_at  = coalesce(j.finished_seen_at,
                                        CASE WHEN u.seen IN ('extraction_done', 'completed')
                                             THEN now() END),
           landed_at         = CASE WHEN u.state = 'landed' THEN now() ELSE j.landed_at END,
           updated_at        = now(),
           leased_until      = NULL,
           leased_by         = NULL
      FROM u
     WHERE j.job_id = u.job_id
       AND j.lease_seq = u.lease_seq
    RETURNING j.job_id, j.state, j.failed_reason
), r AS (
    SELECT r.*, r.payload_text::jsonb AS payload
      FROM {RESULT_COLUMNS.unnest()}
      JOIN fenced USING (job_id)
), mirrored AS (
    INSERT INTO harvester.extraction_results AS e
           (job_id, id, org_id, domain, schema_id, data_type, normalized, raw_blob_key,
            quality_completeness, quality_validation, quality_composite, latency_ms,
            delivered_at, created_at, payload)
    SELECT job_id, id, org_id, domain, schema_id, data_type, payload -> 'normalized',
           raw_blob_key, quality_completeness, quality_validation, quality_composite,
           latency_ms, delivered_at, created_at, payload
      FROM r
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
    RETURNING job_id
), resolved AS (
    UPDATE harvester.stuck_jobs AS s
       SET resolved_at = now(),
           resolution  = CASE WHEN f.state = 'landed' THEN 'landed'
                              WHEN f.failed_reason = 'expired' THEN 'expired'
                              ELSE 'failed' END,
           resolved_by = 'harvester'
      FROM fenced f
     WHERE s.job_id = f.job_id
       AND f.state IN ('landed', 'failed')
       AND s.resolved_at IS NULL
    RETURNING s.job_id
), st AS (
    SELECT st.*
      FROM {STUCK_COLUMNS.unnest()}
      JOIN fenced USING (job_id)
), stuck AS (
    INSERT INTO harvester.stuck_jobs AS s (job_id, last_status, last_body)
    SELECT job_id, status, body FROM st
    ON CONFLICT (job_id) DO UPDATE
       SET last_seen_at    = now(),
           times_seen      = s.times_seen + 1,
           last_status     = excluded.last_status,
           last_body       = excluded.last_body,
           first_seen_at   = CASE WHEN s.resolved_at IS NULL THEN s.first_seen_at ELSE now() END,
           resolved_at     = NULL,
           resolution      = NULL,
           resolved_by     = NULL,
           resolution_note = NULL
    RETURNING job_id
), notified AS (
    SELECT pg_notify('harvester_landed', job_id::text) FROM mirrored
    UNION ALL
    SELECT pg_notify('harvester_stuck', stuck.job_id::text)
      FROM stuck JOIN st USING (job_id)
     WHERE st.newly
)
SELECT coalesce((SELECT array_agg(job_id) FROM fenced), '{{}}') AS written,
       (SELECT count(*) FROM notified) AS notified,
       (SELECT count(*) FROM resolved) AS resolved
"""  # noqa: S608 - only the fixed column lists above are interpolated

RELEASE_SQL: Final = f"""
UPDATE harvester.jobs AS j
   SET next_poll_at = now() + make_interval(secs => u.delay),
       polls        = j.polls + u.polled,
       last_status  = coalesce(u.status, j.last_status),
       last_error   = coalesce(u.error, j.last_error),
       leased_until = NULL,
       leased_by    = NULL
  FROM {RELEASE_COLUMNS.unnest()}
 WHERE j.job_id = u.job_id
   AND j.lease_seq = u.lease_seq
RETURNING j.job_id
"""  # noqa: S608 - only the fixed column list above is interpolated


def _job_row(outcome: Outcome) -> dict[str, Any]:
    """The jobs-table columns an outcome writes (README "How upstream answers are handled")."""
    job, d = outcome.job, outcome.decision
    row: dict[str, Any] = {
        "job_id": job.job_id, "lease_seq": job.lease_seq, "polled": int(outcome.polled),
        "seen": outcome.seen, "keep_answer": False, "attempt": job.attempt,
        "c500": job.consecutive_500s, "c403": 0, "failed_reason": None, "step": None,
        "delay": 0.0, "status": None, "error": None,
    }
    if isinstance(d, Land):
        row.update(state="landed", status=d.status, attempt=0, c500=0)
    elif isinstance(d, Retry):
        row.update(state=d.state, delay=d.delay, status=d.status, error=d.error,
                   keep_answer=d.keep_last_answer, attempt=d.attempt, c500=d.consecutive_500s,
                   step=d.step)
    elif isinstance(d, Stuck):
        row.update(state="stuck", delay=d.delay, status=d.status, step="result",
                   error=f"stuck: {d.consecutive_500s} consecutive 500s", attempt=d.attempt,
                   c500=d.consecutive_500s)
    elif isinstance(d, Fail):
        row.update(state="failed", status=d.status, error=d.error, failed_reason=d.reason,
                   c403=job.consecutive_403s)
    else:  # Hold: no attempt charged, state unchanged; the request still counts as a poll.
        row.update(state=job.state, delay=d.delay, status=d.status, error=d.error,
                   c403=d.consecutive_403s)
    return row


def _result_row(job_id: UUID, land: Land) -> dict[str, Any]:
    r = land.result
    return {"job_id": job_id, "id": r.id, "org_id": r.org_id, "domain": r.domain,
            "schema_id": r.schema_id, "data_type": r.data_type, "raw_blob_key": r.raw_blob_key,
            "quality_completeness": r.quality_completeness,
            "quality_validation": r.quality_validation,
            "quality_composite": r.quality_composite, "latency_ms": r.latency_ms,
            "delivered_at": r.delivered_at, "created_at": r.created_at,
            "payload_text": land.payload}


def _stuck_row(job_id: UUID, stuck: Stuck) -> dict[str, Any]:
    return {"job_id": job_id, "status": stuck.status, "body": stuck.body, "newly": stuck.newly}


@dataclass(slots=True)
class RequeueReport:
    """What a requeue did; ``landed`` and ``unknown`` are filled when IDs were given."""

    requeued: int = 0
    landed: list[UUID] = field(default_factory=list)
    unknown: list[UUID] = field(default_factory=list)


class Store:
    """The database as the engine and the CLI see it.

    ``dsn`` is needed only to LISTEN (a dedicated connection outside the pool)."""

    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None) -> None:
        self.pool = pool
        self.dsn = dsn

    # ------------------------------------------------------------ claim path

    async def claim(self, limit: int, lease_seconds: float, worker_id: str) -> list[Job]:
        async with translated():
            rows = await self.pool.fetch(CLAIM_SQL, limit, lease_seconds, worker_id)
        return [
            Job(job_id=r["job_id"], state=r["state"], age_origin=r["age_origin"],
                polls=r["polls"], attempt=r["attempt"], consecutive_500s=r["consecutive_500s"],
                lease_seq=r["lease_seq"], next_step=r["next_step"],
                upstream_status=r["upstream_status"], status_since=r["status_since"],
                finished_seen_at=r["finished_seen_at"], consecutive_403s=r["consecutive_403s"])
            for r in rows
        ]

    async def next_due_at(self) -> datetime | None:
        async with translated():
            value: datetime | None = await self.pool.fetchval(NEXT_DUE_SQL)
        return value

    # ------------------------------------------------------------ write path

    async def write(self, outcomes: Sequence[Outcome]) -> WriteReport:
        """Write a batch in one statement (so one transaction). A row the database
        refuses (say, a string it cannot store) is retried alone so the rest of the batch
        still lands."""
        report = WriteReport()
        if not outcomes:
            return report
        try:
            async with translated(), self.pool.acquire() as conn:
                await self._write(conn, outcomes, report)
            return report
        except StoreUnavailable:
            raise
        except StoreError:
            if len(outcomes) == 1:
                raise
        report = WriteReport()
        for outcome in outcomes:
            try:
                async with translated(), self.pool.acquire() as conn:
                    await self._write(conn, [outcome], report)
            except StoreUnavailable:
                raise
            except StoreError as exc:
                report.rejected[outcome.job.job_id] = str(exc)
        return report

    async def _write(self, conn: Connection, outcomes: Sequence[Outcome],
                     report: WriteReport) -> None:
        results = [_result_row(o.job.job_id, o.decision) for o in outcomes
                   if isinstance(o.decision, Land)]
        stucks = [_stuck_row(o.job.job_id, o.decision) for o in outcomes
                  if isinstance(o.decision, Stuck)]
        row = await conn.fetchrow(WRITE_SQL, *JOB_COLUMNS.arrays([_job_row(o) for o in outcomes]),
                                  *RESULT_COLUMNS.arrays(results), *STUCK_COLUMNS.arrays(stucks))
        assert row is not None
        written = set(row["written"])
        report.written |= written
        report.fenced |= {o.job.job_id for o in outcomes} - written
        report.landed += sum(1 for r in results if r["job_id"] in written)

    async def release(self, rows: Sequence[ReleaseRow]) -> set[UUID]:
        """Give jobs back without charging an attempt (shutdown, auth circuit, pause)."""
        if not rows:
            return set()
        values = [{"job_id": r.job.job_id, "lease_seq": r.job.lease_seq, "delay": r.delay,
                   "polled": int(r.polled), "status": r.status, "error": r.error} for r in rows]
        async with translated():
            result = await self.pool.fetch(RELEASE_SQL, *RELEASE_COLUMNS.arrays(values))
        return {r["job_id"] for r in result}

    # ------------------------------------------------------------ feeding

    async def enqueue(self, job_ids: Sequence[UUID], conn: Connection | None = None
                      ) -> int:
        """Insert new jobs, due now; returns how many were new (the rest were known)."""
        sql = """
            WITH inserted AS (
                INSERT INTO harvester.jobs (job_id)
                SELECT unnest($1::uuid[])
                ON CONFLICT (job_id) DO NOTHING
                RETURNING 1
            )
            SELECT count(*) FROM inserted
        """
        async with translated():
            if conn is not None:
                if conn.is_in_transaction():
                    await conn.execute(DURABLE)
                return int(await conn.fetchval(sql, list(job_ids)))
            async with self.pool.acquire() as own, own.transaction():
                await own.execute(DURABLE)
                return int(await own.fetchval(sql, list(job_ids)))

    async def requeue(self, *, job_ids: Sequence[UUID] | None = None,
                      state: Literal["failed", "stuck"] | None = None) -> RequeueReport:
        """Put jobs back to pending, due now, their age limits counted from now.

        Landed jobs are never touched. The lease token is bumped, so an answer still in
        flight for a requeued job cannot overwrite the reset. An open stuck record stays
        open: it closes when the row lands, not when someone retries."""
        if (job_ids is None) == (state is None):
            raise ValueError("requeue takes job IDs or a state, not both")
        where = "job_id = ANY($1::uuid[])" if job_ids is not None else "state = $1"
        arg: Any = list(job_ids) if job_ids is not None else state
        sql = f"""
            WITH requeued AS (
                UPDATE harvester.jobs
                   SET state = 'pending', next_poll_at = now(), requeued_at = now(),
                       updated_at = now(), attempt = 0, consecutive_500s = 0,
                       failed_reason = NULL, leased_until = NULL, leased_by = NULL,
                       lease_seq = lease_seq + 1
                 WHERE {where} AND state <> 'landed'
                RETURNING 1
            )
            SELECT count(*) FROM requeued
        """  # noqa: S608 - the interpolated part is one of two fixed strings
        report = RequeueReport()
        async with translated(), self.pool.acquire() as conn, conn.transaction():
            await conn.execute(DURABLE)
            report.requeued = int(await conn.fetchval(sql, arg))
            if job_ids is not None:
                rows = await conn.fetch(
                    """
                    SELECT u.job_id, j.state
                      FROM unnest($1::uuid[]) AS u(job_id)
                      LEFT JOIN harvester.jobs j USING (job_id)
                     WHERE j.job_id IS NULL OR j.state = 'landed'
                     ORDER BY u.job_id
                    """, list(dict.fromkeys(job_ids)))
                report.landed = [r["job_id"] for r in rows if r["state"] == "landed"]
                report.unknown = [r["job_id"] for r in rows if r["state"] is None]
            if report.requeued:
                await conn.execute("SELECT pg_notify($1, '')", CHANNEL_JOBS)
        return report

    # ------------------------------------------------------------ daemons

    async def heartbeat(self, state: WorkerState) -> None:
        async with translated():
            await self.pool.execute(
                """
                INSERT INTO harvester.workers AS w
                       (worker_id, hostname, pid, version, auth_circuit, paused_until, in_flight,
                        send_rate, permission_circuit, upstream_alarm)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (worker_id) DO UPDATE
                   SET heartbeat_at = now(), auth_circuit = excluded.auth_circuit,
                       paused_until = excluded.paused_until, in_flight = excluded.in_flight,
                       send_rate = excluded.send_rate,
                       permission_circuit = excluded.permission_circuit,
                       upstream_alarm = excluded.upstream_alarm
                """,
                state.worker_id, state.hostname, state.pid, state.version, state.auth_circuit,
                state.paused_until, state.in_flight, state.send_rate, state.permission_circuit,
                state.upstream_alarm,
            )

    async def forget_worker(self, worker_id: str) -> None:
        async with translated():
            await self.pool.execute("DELETE FROM harvester.workers WHERE worker_id = $1",
                                    worker_id)
            await self.pool.execute(
                "DELETE FROM harvester.workers WHERE heartbeat_at < now() - interval '1 day'")

    # ------------------------------------------------------------ reading

    async def status(self) -> dict[str, Any]:
        """The numbers `harvester status` prints."""
        async with translated(), self.pool.acquire() as conn:
            open_counts = await conn.fetch(
                "SELECT state, count(*) AS n FROM harvester.jobs "
                "WHERE state IN ('pending', 'stuck') GROUP BY state")
            closed_counts = await conn.fetch(
                "SELECT state, count(*) AS n FROM harvester.jobs "
                "WHERE state IN ('landed', 'failed') GROUP BY state")
            due = await _one(conn,
                """
                SELECT count(*) AS due_now,
                       extract(epoch FROM now() - min(next_poll_at))::float8 AS oldest_due_age
                  FROM harvester.jobs
                 WHERE state IN ('pending', 'stuck') AND next_poll_at <= now()
                   AND (leased_until IS NULL OR leased_until <= now())
                """)
            in_flight = await conn.fetchval(
                "SELECT count(*) FROM harvester.jobs WHERE state IN ('pending', 'stuck') "
                "AND leased_until > now()")
            landed = await _one(conn,
                """
                SELECT count(*) FILTER (WHERE landed_at > now() - interval '1 minute') AS last_minute,
                       count(*) AS last_hour
                  FROM harvester.jobs
                 WHERE state = 'landed' AND landed_at > now() - interval '1 hour'
                """)
            failed = await conn.fetch(
                "SELECT failed_reason, count(*) AS n FROM harvester.jobs "
                "WHERE state = 'failed' GROUP BY failed_reason ORDER BY failed_reason")
            stuck_open = await conn.fetchval("SELECT count(*) FROM harvester.open_stuck_jobs")
            workers = await conn.fetch(
                """
                SELECT worker_id, hostname, pid, version, auth_circuit, paused_until, in_flight,
                       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
                  FROM harvester.workers
                 WHERE heartbeat_at > now() - interval '2 minutes'
                 ORDER BY worker_id
                """)
        states = {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
        for row in [*open_counts, *closed_counts]:
            states[row["state"]] = row["n"]
        live = [dict(w) for w in workers]
        return {
            "jobs": states,
            "total": sum(states.values()),
            "due_now": due["due_now"],
            "oldest_due_age_seconds": due["oldest_due_age"],
            "in_flight": in_flight,
            "stuck_open": stuck_open,
            "landed_last_minute": landed["last_minute"],
            "landed_last_hour": landed["last_hour"],
            "failed_by_reason": {r["failed_reason"]: r["n"] for r in failed},
            "auth_circuit_open": any(w["auth_circuit"] == "open" for w in live),
            "workers": live,
        }

    async def queue_gauges(self) -> dict[str, float]:
        """Cheap numbers for /metrics: open jobs by state, due backlog, oldest due age.

        Both queries walk only the partial index of open jobs."""
        async with translated(), self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM harvester.jobs "
                "WHERE state IN ('pending', 'stuck') GROUP BY state")
            due = await _one(conn,
                """
                SELECT count(*) AS due,
                       coalesce(extract(epoch FROM now() - min(next_poll_at)), 0)::float8 AS age
                  FROM harvester.jobs
                 WHERE state IN ('pending', 'stuck') AND next_poll_at <= now()
                   AND (leased_until IS NULL OR leased_until <= now())
                """)
            stuck = await _one(conn,
                """
                SELECT count(*) AS open,
                       coalesce(extract(epoch FROM now() - min(first_seen_at)), 0)::float8 AS age
                  FROM harvester.stuck_jobs
                 WHERE resolved_at IS NULL
                """)
        gauges = {"pending": 0.0, "stuck": 0.0}
        for row in rows:
            gauges[row["state"]] = float(row["n"])
        gauges["due"] = float(due["due"])
        gauges["oldest_due_age"] = float(due["age"])
        gauges["stuck_open"] = float(stuck["open"])
        gauges["oldest_stuck_age"] = float(stuck["age"])
        return gauges

    async def open_stuck(self) -> list[dict[str, Any]]:
        async with translated():
            rows = await self.pool.fetch(
                """
                SELECT job_id, first_seen_at, last_seen_at, times_seen, last_status, last_body,
                       extract(epoch FROM open_for)::float8 AS open_for_seconds, state,
                       next_poll_at
                  FROM harvester.open_stuck_jobs
                 ORDER BY first_seen_at, job_id
                """)
        return [dict(r) for r in rows]

    async def job(self, job_id: UUID) -> dict[str, Any] | None:
        """One job as the admin API shows it: its queue row, its mirror row when landed
        (``result``, JSON columns decoded), and its stuck record if it ever had one."""
        async with translated(), self.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                SELECT job_id, state, enqueued_at, requeued_at, updated_at, next_poll_at, polls,
                       last_status, last_error, failed_reason, upstream_status, landed_at,
                       leased_until, leased_by
                  FROM harvester.jobs WHERE job_id = $1
                """, job_id)
            if row is None:
                return None
            found = dict(row)
            result = await conn.fetchrow(
                """
                SELECT id, org_id, domain, schema_id, data_type, normalized, raw_blob_key,
                       quality_completeness, quality_validation, quality_composite, latency_ms,
                       delivered_at, created_at, payload, harvested_at
                  FROM harvester.extraction_results WHERE job_id = $1
                """, job_id)
            if result is None:
                found["result"] = None
            else:
                mirror = dict(result)
                mirror["normalized"] = json.loads(mirror["normalized"])
                mirror["payload"] = json.loads(mirror["payload"])
                found["result"] = mirror
            stuck = await conn.fetchrow(
                "SELECT first_seen_at, last_seen_at, times_seen, last_status, resolved_at "
                "FROM harvester.stuck_jobs WHERE job_id = $1", job_id)
            found["stuck"] = None if stuck is None else dict(stuck)
        return found

    async def ping(self) -> None:
        async with translated():
            await self.pool.fetchval("SELECT 1")


    # ------------------------------------------------------------ notifications

    async def listen_for_jobs(self, on_fed: Callable[[], None],
                              on_listening: Callable[[bool], None]) -> None:
        """LISTEN for fed jobs until cancelled (README "Feeding jobs": picked up within
        milliseconds). A dedicated connection, checked every 10 s with a query (a silent
        network drop sends no termination), reconnected with backoff when lost; while it
        is away ``on_listening(False)`` tells the engine to poll instead."""
        failures = 0
        while self.dsn is None:  # nothing to listen with: the engine polls
            on_listening(False)
            await asyncio.Event().wait()
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                async with translated():
                    # connect_timeout is the client's, not the server's
                    target = ConnectTarget.parse(self.dsn)
                    conn = await asyncpg.connect(
                        target.dsn, timeout=target.timeout or 365 * 86400.0,
                        server_settings={"application_name": "harvester-listen"})
                    await conn.add_listener(CHANNEL_JOBS, lambda *_args: on_fed())
                    conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                if failures:
                    log.info("listen.reconnected", after_failures=failures)
                else:
                    log.info("listen.started", channel=CHANNEL_JOBS)
                failures = 0
                on_listening(True)
                on_fed()  # anything fed while nobody listened
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_KEEPALIVE)
                    if not lost.is_set():
                        async with translated():
                            await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5.0)
                failures = 1
                log.warning("listen.lost", error="connection closed",
                            fallback="polling every second")
            except StoreError as exc:
                failures += 1
                if failures == 1:
                    log.warning("listen.lost", error=str(exc), fallback="polling every second")
            finally:
                on_listening(False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=2.0)
            await asyncio.sleep(min(LISTEN_RETRY_CAP, 0.5 * 2 ** min(failures, 6)))


async def _one(conn: Connection, sql: str, *args: Any) -> asyncpg.Record:
    """fetchrow for statements that always return exactly one row (aggregates)."""
    row = await conn.fetchrow(sql, *args)
    if row is None:  # pragma: no cover - an aggregate always returns a row
        raise StoreError("expected one row")
    return row
