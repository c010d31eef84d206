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

import inspect
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar
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
from harvester.policy import Fail, Hold, Job, Land, Retry, Stuck

CHANNEL_JOBS: Final = "harvester_jobs"
CHANNEL_LANDED: Final = "harvester_landed"
CHANNEL_STUCK: Final = "harvester_stuck"
OPEN_STATES: Final = ("pending", "stuck")
T = TypeVar("T")

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
          j.polls, j.attempt, j.consecutive_500s, j.lease_seq
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
# row is only rewritten (and downstream notified) when the body differs.
WRITE_SQL: Final = """
WITH u AS (
    SELECT *
      FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::float8[], $5::int[], $6::text[],
                  $7::int[], $8::int[], $9::text[], $10::text[], $11::int[])
           AS u(job_id, lease_seq, state, delay, status, error, attempt, c500, failed_reason,
                upstream_status, polled)
), fenced AS (
    UPDATE harvester.jobs AS j
       SET state            = u.state,
           next_poll_at     = CASE WHEN u.state IN ('landed', 'failed') THEN NULL
                                   ELSE now() + make_interval(secs => u.delay) END,
           polls            = j.polls + u.polled,
           last_status      = u.status,
           last_error       = u.error,
           attempt          = u.attempt,
           consecutive_500s = u.c500,
           failed_reason    = u.failed_reason,
           upstream_status  = coalesce(u.upstream_status, j.upstream_status),
           landed_at        = CASE WHEN u.state = 'landed' THEN now() ELSE j.landed_at END,
           updated_at       = now(),
           leased_until     = NULL,
           leased_by        = NULL
      FROM u
     WHERE j.job_id = u.job_id
       AND j.lease_seq = u.lease_seq
    RETURNING j.job_id, j.state
), r AS (
    SELECT r.*, r.payload_text::jsonb AS payload
      FROM unnest($12::uuid[], $13::uuid[], $14::uuid[], $15::text[], $16::text[], $17::text[],
                  $18::text[], $19::float8[], $20::float8[], $21::float8[], $22::int[],
                  $23::timestamptz[], $24::timestamptz[], $25::text[])
           AS r(job_id, id, org_id, domain, schema_id, data_type, raw_blob_key,
                quality_completeness, quality_validation, quality_composite, latency_ms,
                delivered_at, created_at, payload_text)
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
       SET resolved_at = now()
      FROM fenced f
     WHERE s.job_id = f.job_id
       AND f.state = 'landed'
       AND s.resolved_at IS NULL
    RETURNING s.job_id
), st AS (
    SELECT st.*
      FROM unnest($26::uuid[], $27::int[], $28::text[], $29::bool[])
           AS st(job_id, status, body, newly)
      JOIN fenced USING (job_id)
), stuck AS (
    INSERT INTO harvester.stuck_jobs AS s (job_id, last_status, last_body)
    SELECT job_id, status, body FROM st
    ON CONFLICT (job_id) DO UPDATE
       SET last_seen_at  = now(),
           times_seen    = s.times_seen + 1,
           last_status   = excluded.last_status,
           last_body     = excluded.last_body,
           first_seen_at = CASE WHEN s.resolved_at IS NULL THEN s.first_seen_at ELSE now() END,
           resolved_at   = NULL
    RETURNING job_id
), notified AS (
    SELECT pg_notify('harvester_landed', job_id::text) FROM mirrored
    UNION ALL
    SELECT pg_notify('harvester_stuck', stuck.job_id::text)
      FROM stuck JOIN st USING (job_id)
     WHERE st.newly
)
SELECT coalesce((SELECT array_agg(job_id) FROM fenced), '{}') AS written,
       (SELECT count(*) FROM notified) AS notified,
       (SELECT count(*) FROM resolved) AS resolved
"""

RELEASE_SQL: Final = """
UPDATE harvester.jobs AS j
   SET next_poll_at = now() + make_interval(secs => u.delay),
       polls        = j.polls + u.polled,
       last_status  = coalesce(u.status, j.last_status),
       last_error   = coalesce(u.error, j.last_error),
       leased_until = NULL,
       leased_by    = NULL
  FROM unnest($1::uuid[], $2::bigint[], $3::float8[], $4::int[], $5::int[], $6::text[])
       AS u(job_id, lease_seq, delay, polled, status, error)
 WHERE j.job_id = u.job_id
   AND j.lease_seq = u.lease_seq
RETURNING j.job_id
"""

Decided = Land | Retry | Stuck | Fail | Hold


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision for one claimed job, ready to be written under its fence."""

    job: Job
    decision: Decided


@dataclass(slots=True)
class WriteReport:
    """What a batch write did: which jobs were written, which were fenced off."""

    written: set[UUID] = field(default_factory=set)
    fenced: set[UUID] = field(default_factory=set)
    rejected: dict[UUID, str] = field(default_factory=dict)
    landed: int = 0


def _job_row(outcome: Outcome) -> tuple[Any, ...]:
    job, d = outcome.job, outcome.decision
    if isinstance(d, Land):
        return (job.job_id, job.lease_seq, "landed", 0.0, d.status, None, 0, 0, None, None, 1)
    if isinstance(d, Retry):
        return (job.job_id, job.lease_seq, d.state, d.delay, d.status, d.error, d.attempt,
                d.consecutive_500s, None, d.upstream_status, 1)
    if isinstance(d, Stuck):
        return (job.job_id, job.lease_seq, "stuck", d.delay, d.status,
                f"stuck: {d.consecutive_500s} consecutive 500s", d.attempt,
                d.consecutive_500s, None, None, 1)
    if isinstance(d, Fail):
        return (job.job_id, job.lease_seq, "failed", 0.0, d.status, d.error, job.attempt,
                job.consecutive_500s, d.reason, d.upstream_status, 1)
    # Hold: no attempt charged, state unchanged; the request still counts as a poll.
    return (job.job_id, job.lease_seq, job.state, d.delay, d.status, d.error, job.attempt,
            job.consecutive_500s, None, None, 1)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def _result_row(job_id: UUID, land: Land) -> tuple[Any, ...]:
    r = land.result
    return (job_id, r.id, r.org_id, r.domain, r.schema_id, r.data_type, r.raw_blob_key,
            r.quality_completeness, r.quality_validation, r.quality_composite, r.latency_ms,
            r.delivered_at, r.created_at, land.payload)


@dataclass(slots=True)
class RequeueReport:
    """What a requeue did; ``landed`` and ``unknown`` are filled when IDs were given."""

    requeued: int = 0
    landed: list[UUID] = field(default_factory=list)
    unknown: list[UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    job: Job
    delay: float
    polled: bool = False
    status: int | None = None
    error: str | None = None


class Store:
    """The database as the engine and the CLI see it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ------------------------------------------------------------ claim path

    async def claim(self, limit: int, lease_seconds: float, worker_id: str) -> list[Job]:
        async with translated():
            rows = await self.pool.fetch(CLAIM_SQL, limit, lease_seconds, worker_id)
        return [
            Job(job_id=r["job_id"], state=r["state"], age_origin=r["age_origin"],
                polls=r["polls"], attempt=r["attempt"], consecutive_500s=r["consecutive_500s"],
                lease_seq=r["lease_seq"])
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
        rows = [_job_row(o) for o in outcomes]
        lands = [(o.job.job_id, o.decision) for o in outcomes if isinstance(o.decision, Land)]
        stucks = [(o.job.job_id, o.decision) for o in outcomes if isinstance(o.decision, Stuck)]
        result_rows = [_result_row(job_id, d) for job_id, d in lands]
        stuck_rows = [(job_id, d.status, d.body, d.newly) for job_id, d in stucks]
        row = await conn.fetchrow(WRITE_SQL, *_columns(rows, 11), *_columns(result_rows, 14),
                                  *_columns(stuck_rows, 4))
        assert row is not None
        written = set(row["written"])
        report.written |= written
        report.fenced |= {o.job.job_id for o in outcomes} - written
        report.landed += sum(1 for job_id, _ in lands if job_id in written)

    async def release(self, rows: Sequence[ReleaseRow]) -> set[UUID]:
        """Give jobs back without charging an attempt (shutdown, auth circuit, pause)."""
        if not rows:
            return set()
        async with translated():
            result = await self.pool.fetch(
                RELEASE_SQL,
                [r.job.job_id for r in rows], [r.job.lease_seq for r in rows],
                [r.delay for r in rows], [1 if r.polled else 0 for r in rows],
                [r.status for r in rows], [r.error for r in rows],
            )
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

    async def heartbeat(self, worker_id: str, hostname: str, pid: int, version: str,
                        auth_circuit: str, paused_until: datetime | None, in_flight: int
                        ) -> None:
        async with translated():
            await self.pool.execute(
                """
                INSERT INTO harvester.workers AS w
                       (worker_id, hostname, pid, version, auth_circuit, paused_until, in_flight)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (worker_id) DO UPDATE
                   SET heartbeat_at = now(), auth_circuit = excluded.auth_circuit,
                       paused_until = excluded.paused_until, in_flight = excluded.in_flight
                """,
                worker_id, hostname, pid, version, auth_circuit, paused_until, in_flight,
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


async def _one(conn: Connection, sql: str, *args: Any) -> asyncpg.Record:
    """fetchrow for statements that always return exactly one row (aggregates)."""
    row = await conn.fetchrow(sql, *args)
    if row is None:  # pragma: no cover - an aggregate always returns a row
        raise StoreError("expected one row")
    return row


async def listen(dsn: str, channels: Iterable[str],
                 on_notify: Callable[[str, str], None],
                 on_lost: Callable[[], None]) -> asyncpg.Connection:
    """A dedicated connection LISTENing on ``channels``; ``on_lost`` fires if it drops."""
    async with translated():
        target = ConnectTarget.parse(dsn)  # connect_timeout is the client's, not the server's
        conn = await asyncpg.connect(target.dsn, timeout=target.timeout or 365 * 86400.0,
                                     server_settings={"application_name": "harvester-listen"})
        for channel in channels:
            await conn.add_listener(
                channel, lambda _c, _pid, ch, payload: on_notify(ch, payload))
        conn.add_termination_listener(lambda _c: on_lost())
    return conn
