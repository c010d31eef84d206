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
import base64
import contextlib
import inspect
import json
import os
import re
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
from harvester.metrics import FAILED_REASONS, upstream_status_label
from harvester.policy import Fail, Job, Land, Retry, Stuck, backoff
from harvester.ports import Outcome, ReleaseRow, WorkerState, WriteReport

CHANNEL_JOBS: Final = "harvester_jobs"
"""Sent once per INSERT statement into harvester.jobs (a trigger), and by requeue."""
CHANNEL_PACE: Final = "harvester_pace"
"""Refusals of one daemon, heard by the others (:mod:`harvester.fleet`)."""
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
                      application_name: str = "harvester", wait_for_flush: bool = True,
                      queue_plans: bool = False) -> asyncpg.Pool:
    """A pool with settings fit for short OLTP statements.

    ``wait_for_flush=False`` is for the daemon's claims and outcomes: their commits do
    not wait for the WAL to reach disk (``synchronous_commit = off``). Everything they
    record can be recomputed from upstream: if PostgreSQL itself crashes, the last few
    hundred milliseconds of claims and outcomes may be lost, their jobs simply come due
    again and are polled again (a lost claim's late write is fenced off; re-landing a
    row is idempotent). Commit latency is otherwise the claim loop's bottleneck (a
    disk flush per claim). Feeding is different: a fed job must never be lost, so
    enqueue and requeue force ``synchronous_commit = on`` for their own transactions.

    ``queue_plans=True`` is for the daemon too: its statements claim and purge by walking
    an index in order up to a LIMIT, or look rows up by key, so bitmap scans are turned
    off for its sessions (``enable_bitmapscan = off``). The planner only ever picks one
    there from stale statistics: right after a bulk feed, before autovacuum has analyzed
    the table, it expects a handful of due jobs and plans a claim of 100 as "read every
    due row, then sort" (measured with 20,000 jobs fed: 7.7 ms and 15,000 rows read per
    claim, against 0.17 ms for the first 700 entries of the index).

    Connecting waits at most the DSN's ``connect_timeout`` (default 10 s) per attempt:
    a server that accepts connections and never answers is reported, naming where and
    how long, instead of hanging the command.
    """
    target = ConnectTarget.parse(dsn)
    settings = {"application_name": application_name, "jit": "off"}
    if not wait_for_flush:
        settings["synchronous_commit"] = "off"
    if queue_plans:
        settings["enable_bitmapscan"] = "off"
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
    ("step", "text"), ("seen", "text"), ("due_at", "timestamptz"),
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
#
# A job fed again whose row is already in the mirror is not polled again, whichever
# way it was fed (README "Retention"): the claim lands it at once (``already``) and
# returns only the others. Checked here, once per due job with a probe of the
# mirror's primary key, rather than by a trigger on every fed row: a bulk feed stays
# one plain INSERT, and a feeder needs no right on the mirror. A requeued job
# (requeued_at set) is polled for real: `harvester requeue ID` asks for exactly that.
# CLAIM_SOON_SQL is made from this statement, so the top-up claim does the same.
# Landing it moves it out of the due index, so ``already`` is not a HOT update; the
# jobs returned still are.
CLAIM_SQL: Final = """
WITH due AS MATERIALIZED (
    SELECT job_id,
           state = 'pending' AND requeued_at IS NULL
           AND EXISTS (SELECT 1 FROM harvester.extraction_results AS e
                        WHERE e.job_id = jobs.job_id) AS mirrored
      FROM harvester.jobs
     WHERE state IN ('pending', 'stuck')
       AND next_poll_at <= now()
       AND (leased_until IS NULL OR leased_until <= now())
     ORDER BY next_poll_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), already AS (
    UPDATE harvester.jobs AS j
       SET state        = 'landed',
           landed_at    = now(),
           next_poll_at = NULL,
           updated_at   = now(),
           leased_until = NULL,
           leased_by    = NULL,
           lease_seq    = j.lease_seq + 1
      FROM due
     WHERE j.job_id = due.job_id
       AND due.mirrored
), closed AS (
    -- Every way a job ends closes its open stuck record, this one too.
    UPDATE harvester.stuck_jobs AS s
       SET resolved_at = now(), resolution = 'landed', resolved_by = 'harvester'
      FROM due
     WHERE s.job_id = due.job_id
       AND due.mirrored
       AND s.resolved_at IS NULL
)
UPDATE harvester.jobs AS j
   SET leased_until = now() + make_interval(secs => $2),
       leased_by    = $3,
       lease_seq    = j.lease_seq + 1
  FROM due
 WHERE j.job_id = due.job_id
   AND NOT due.mirrored
RETURNING j.job_id, j.state, coalesce(j.requeued_at, j.enqueued_at) AS age_origin,
          j.polls, j.attempt, j.consecutive_500s, j.lease_seq, j.next_step,
          j.upstream_status, j.status_since, j.finished_seen_at, j.consecutive_403s
"""

# Status checks due within a second are worth asking about now, in a batch-status call
# that has room: one call instead of two (README "How a job is followed").
CLAIM_SOON_SQL: Final = CLAIM_SQL.replace(
    "AND next_poll_at <= now()",
    "AND next_poll_at <= now() + make_interval(secs => $4) AND next_step = 'status'")

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
                                    WHEN u.due_at IS NOT NULL THEN greatest(u.due_at, now())
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
    -- A job that becomes stuck opens (or reopens) its record ...
    INSERT INTO harvester.stuck_jobs AS s (job_id, last_status, last_body)
    SELECT job_id, status, body FROM st WHERE st.newly
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
), rechecked AS (
    -- ... a recheck of a job still stuck only counts, and never reopens a record an
    -- operator acknowledged.
    UPDATE harvester.stuck_jobs AS s
       SET last_seen_at = now(), times_seen = s.times_seen + 1,
           last_status = st.status, last_body = st.body
      FROM st
     WHERE s.job_id = st.job_id
       AND NOT st.newly
    RETURNING s.job_id
), notified AS (
    SELECT pg_notify('harvester_landed', job_id::text) FROM mirrored
    UNION ALL
    SELECT pg_notify('harvester_stuck', job_id::text) FROM stuck
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


# ---------------------------------------------------------------- retention

RETENTION_LOCK_KEY: Final = int.from_bytes(b"hv-purge", "big")
"""Session advisory lock of the purge: one replica purges at a time. Fixed forever."""

# One batch of the purge (README "Retention"): one statement, so one short transaction.
# Finished jobs are walked oldest first through partial indexes that already exist:
# landed jobs by landed_at, failed jobs by updated_at (nothing updates a failed row but
# requeue, which reopens it). A failed job whose stuck record is still open keeps its
# row; the foreign key takes a closed stuck record with its job. SKIP LOCKED: the purge
# waits for nobody; claims and writes only lock open jobs, so they never wait for it
# either. The rows are deleted by primary key from an array, not through a join, so the
# plan is the same on a small table as on a large one.
PURGE_FINISHED_SQL: Final = """
WITH landed AS MATERIALIZED (
    SELECT job_id
      FROM harvester.jobs AS j
     WHERE state = 'landed'
       AND landed_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                        WHERE s.job_id = j.job_id AND s.resolved_at IS NULL)
     ORDER BY landed_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), failed AS MATERIALIZED (
    SELECT job_id
      FROM harvester.jobs AS j
     WHERE state = 'failed'
       AND updated_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                        WHERE s.job_id = j.job_id AND s.resolved_at IS NULL)
     ORDER BY updated_at
     LIMIT $2 - (SELECT count(*) FROM landed)
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM harvester.jobs
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM landed UNION ALL SELECT job_id FROM failed))
    RETURNING 1
)
SELECT count(*) FROM deleted
"""

PURGE_RESULTS_SQL: Final = """
WITH doomed AS MATERIALIZED (
    SELECT job_id
      FROM harvester.extraction_results
     WHERE harvested_at < now() - make_interval(secs => $1)
     ORDER BY harvested_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM harvester.extraction_results
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM doomed))
    RETURNING 1
)
SELECT count(*) FROM deleted
"""


class PurgeSession:
    """The purge's connection while this replica holds the purge lock (see
    :meth:`Store.purging`); each call is one batch in its own transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def purge_finished(self, older_than: float, limit: int) -> int:
        """At most ``limit`` queue rows of jobs that landed or failed more than
        ``older_than`` seconds ago; returns how many were deleted."""
        async with translated():
            return int(await self.conn.fetchval(PURGE_FINISHED_SQL, older_than, limit))

    async def purge_results(self, older_than: float, limit: int) -> int:
        """At most ``limit`` mirror rows harvested more than ``older_than`` seconds ago."""
        async with translated():
            return int(await self.conn.fetchval(PURGE_RESULTS_SQL, older_than, limit))


async def _unlock_or_close(conn: Connection) -> None:
    """Give the purge lock back before the connection goes back to the pool, whose reset
    runs nothing: a session lock left behind would stop every replica's purge for as long
    as that connection lives. When the unlock cannot be confirmed (the connection broke,
    or the task is being cancelled) the connection is closed instead, and the server
    drops the lock with the session."""
    try:
        unlocked = await asyncio.wait_for(
            conn.fetchval("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_KEY), timeout=5.0)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:  # whatever happened, the session must not keep the lock
        conn.terminate()
        return
    if not unlocked:  # pragma: no cover - the lock was taken on this very session
        conn.terminate()


# What retention has left to do, for status and /metrics: the oldest finished row the
# purge may delete (the first row of each finished index), and each table's size. Row
# counts are the planner's estimate (pg_class.reltuples, refreshed by autovacuum and
# ANALYZE), so reading them costs nothing on a table of billions of rows.
OLDEST_FINISHED_SQL: Final = """
SELECT extract(epoch FROM now() - least(
           (SELECT landed_at FROM harvester.jobs AS j
             WHERE state = 'landed'
               AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                                WHERE s.job_id = j.job_id AND s.resolved_at IS NULL)
             ORDER BY landed_at LIMIT 1),
           (SELECT updated_at FROM harvester.jobs AS j
             WHERE state = 'failed'
               AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                                WHERE s.job_id = j.job_id AND s.resolved_at IS NULL)
             ORDER BY updated_at LIMIT 1)))::float8
"""

TABLE_SIZES_SQL: Final = """
SELECT c.relname AS name, greatest(c.reltuples, 0)::float8 AS rows,
       pg_total_relation_size(c.oid)::float8 AS bytes
  FROM pg_class AS c
 WHERE c.oid IN ('harvester.jobs'::regclass, 'harvester.extraction_results'::regclass)
"""
SIZED_TABLES: Final = ("jobs", "extraction_results")


def _job_row(outcome: Outcome) -> dict[str, Any]:
    """The jobs-table columns an outcome writes (README "How upstream answers are handled")."""
    job, d = outcome.job, outcome.decision
    row: dict[str, Any] = {
        "job_id": job.job_id, "lease_seq": job.lease_seq, "polled": int(outcome.polled),
        "seen": outcome.seen, "keep_answer": False, "attempt": job.attempt,
        "c500": job.consecutive_500s, "c403": 0, "failed_reason": None, "step": None,
        "delay": 0.0, "status": None, "error": None, "due_at": None,
    }
    if isinstance(d, Land):
        row.update(state="landed", status=d.status, attempt=0, c500=0)
    elif isinstance(d, Retry):
        row.update(state=d.state, delay=d.delay, status=d.status, error=d.error,
                   keep_answer=d.keep_last_answer, attempt=d.attempt, c500=d.consecutive_500s,
                   step=d.step, due_at=d.due_at,
                   c403=job.consecutive_403s if d.keep_last_answer else 0)
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


def _job(r: asyncpg.Record) -> Job:
    return Job(job_id=r["job_id"], state=r["state"], age_origin=r["age_origin"],
               polls=r["polls"], attempt=r["attempt"], consecutive_500s=r["consecutive_500s"],
               lease_seq=r["lease_seq"], next_step=r["next_step"],
               upstream_status=r["upstream_status"], status_since=r["status_since"],
               finished_seen_at=r["finished_seen_at"], consecutive_403s=r["consecutive_403s"])


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
    """What a requeue did; ``landed`` and ``unknown`` are filled when IDs were given:
    ``landed`` are IDs that had landed (their queue row landed, or gone with retention
    while the mirror keeps their row) and are polled again on purpose; ``unknown`` are
    IDs neither in the queue nor in the mirror (nothing to requeue)."""

    requeued: int = 0
    landed: list[UUID] = field(default_factory=list)
    unknown: list[UUID] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Selection:
    """Which jobs a requeue without IDs aims at: a state, and optionally failure reasons
    and an age window. Age is how long the job has been in its state: since it failed,
    or since its open stuck record was first seen."""

    state: Literal["failed", "stuck"]
    reasons: tuple[str, ...] = ()
    older_than: float | None = None  # seconds
    newer_than: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        """A WHERE fragment over ``harvester.jobs AS j`` and its arguments ($1…).

        The state is written into the statement (one of two fixed words) so that the
        planner can use the partial index of failed jobs, also in a generic plan."""
        if self.state not in ("failed", "stuck"):
            raise ValueError(f"cannot requeue by state {self.state!r}")
        clauses = [f"j.state = '{self.state}'"]
        args: list[Any] = []
        if self.reasons:
            args.append(list(self.reasons))
            clauses.append(f"j.failed_reason = ANY(${len(args)}::text[])")
        since = ("j.updated_at" if self.state == "failed" else
                 "coalesce((SELECT s.first_seen_at FROM harvester.stuck_jobs s "
                 "WHERE s.job_id = j.job_id AND s.resolved_at IS NULL), j.updated_at)")
        if self.older_than is not None:
            args.append(self.older_than)
            clauses.append(f"{since} <= now() - make_interval(secs => ${len(args)})")
        if self.newer_than is not None:
            args.append(self.newer_than)
            clauses.append(f"{since} > now() - make_interval(secs => ${len(args)})")
        return " AND ".join(clauses), args


# requeued_at is also what makes the claim poll a job for real although its row is in
# the mirror (see CLAIM_SQL).
_REQUEUE_SQL: Final = """
WITH requeued AS (
    UPDATE harvester.jobs AS j
       SET state = 'pending', next_poll_at = now(), requeued_at = now(),
           updated_at = now(), attempt = 0, consecutive_500s = 0, consecutive_403s = 0,
           failed_reason = NULL, leased_until = NULL, leased_by = NULL,
           lease_seq = j.lease_seq + 1, next_step = 'status', status_since = NULL,
           finished_seen_at = NULL
     WHERE {where}
    RETURNING 1
)
SELECT count(*) FROM requeued
"""

# A job whose queue row retention deleted but whose row is in the mirror is requeued by
# putting its row back, marked requeued.
_REVIVE_SQL: Final = """
WITH revived AS (
    INSERT INTO harvester.jobs (job_id, requeued_at)
    SELECT e.job_id, now()
      FROM harvester.extraction_results AS e
     WHERE e.job_id = ANY($1::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM revived
"""


@dataclass(slots=True)
class AckReport:
    """What acknowledging stuck records did, ID by ID."""

    acknowledged: list[UUID] = field(default_factory=list)
    closed_already: list[tuple[UUID, str, str | None]] = field(default_factory=list)
    never_stuck: list[UUID] = field(default_factory=list)
    unknown: list[UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class JobCursor:
    """Where the next page of a job list starts: the sort time and job_id of the last
    row shown. Its text form is opaque to users (``harvester jobs --after``)."""

    at: datetime
    job_id: UUID

    def __str__(self) -> str:
        raw = f"{self.at.isoformat()}|{self.job_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> JobCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            at, _, job_id = raw.partition("|")
            parsed = datetime.fromisoformat(at)
            if parsed.tzinfo is None:
                raise ValueError("naive time")
            return cls(parsed, UUID(job_id))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("not a cursor from a previous page") from exc


# Each listable state in the order of its own index (see sql/001_initial.sql).
_LIST_ORDER: Final[dict[str, tuple[str, bool]]] = {
    "pending": ("next_poll_at", False),
    "stuck": ("next_poll_at", False),
    "landed": ("landed_at", True),
    "failed": ("updated_at", True),
}
LISTABLE_STATES: Final = tuple(_LIST_ORDER)
_HTTP_REASON: Final = re.compile(r"http_[1-5]\d\d")


def is_failed_reason(text: str) -> bool:
    """One of the known reasons, or ``http_<status>``: what ``failed_reason`` holds."""
    return text in FAILED_REASONS or bool(_HTTP_REASON.fullmatch(text))


_JOB_COLUMNS: Final = (
    "job_id", "state", "enqueued_at", "requeued_at", "updated_at", "next_poll_at", "polls",
    "last_status", "last_error", "failed_reason", "upstream_status", "status_checked_at",
    "status_since", "finished_seen_at", "next_step", "status_checks", "landed_at",
    "leased_until", "leased_by")
_JOB_SQL: Final = (f"SELECT {', '.join(_JOB_COLUMNS)} "  # noqa: S608 - fixed column names
                   "FROM harvester.jobs WHERE job_id = $1")


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
        return [_job(r) for r in rows]

    async def claim_soon(self, limit: int, lease_seconds: float, worker_id: str,
                         within: float) -> list[Job]:
        """Like :meth:`claim`, for jobs whose status check is due within ``within`` s."""
        async with translated():
            rows = await self.pool.fetch(CLAIM_SOON_SQL, limit, lease_seconds, worker_id, within)
        return [_job(r) for r in rows]

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
        """Insert new jobs, due now; returns how many were new (the rest were known).

        ``ON CONFLICT DO NOTHING`` without a conflict target: naming ``(job_id)`` would
        need SELECT on the column, and feeding needs only USAGE on the schema and INSERT
        on harvester.jobs, whatever the path (README "Feeding jobs")."""
        sql = """
            WITH inserted AS (
                INSERT INTO harvester.jobs (job_id)
                SELECT unnest($1::uuid[])
                ON CONFLICT DO NOTHING
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
            where, args = "j.job_id = ANY($1::uuid[])", [list(dict.fromkeys(job_ids))]
        else:
            assert selection is not None
            where, args = selection.where()
        async with translated(), self._connection(conn) as c:
            if job_ids is not None:
                # Before the update: which IDs had landed, which are nowhere.
                rows = await c.fetch(
                    """
                    SELECT u.job_id, j.state, e.job_id IS NOT NULL AS mirrored
                      FROM unnest($1::uuid[]) AS u(job_id)
                      LEFT JOIN harvester.jobs j USING (job_id)
                      LEFT JOIN harvester.extraction_results e USING (job_id)
                     WHERE j.job_id IS NULL OR j.state = 'landed'
                     ORDER BY u.job_id
                    """, args[0])
                report.landed = [r["job_id"] for r in rows
                                 if r["state"] == "landed" or r["mirrored"]]
                report.unknown = [r["job_id"] for r in rows
                                  if r["state"] is None and not r["mirrored"]]
            if dry_run:
                report.requeued = int(await c.fetchval(
                    f"SELECT count(*) FROM harvester.jobs AS j "  # noqa: S608 - fixed fragments
                    f"WHERE {where}", *args))
                if job_ids is not None:
                    report.requeued += sum(1 for r in rows
                                           if r["state"] is None and r["mirrored"])
            else:
                if not c.is_in_transaction():
                    raise ValueError("requeue needs a connection in a transaction")
                await c.execute(DURABLE)
                report.requeued = int(await c.fetchval(_REQUEUE_SQL.format(where=where), *args))
                if job_ids is not None:
                    report.requeued += int(await c.fetchval(_REVIVE_SQL, args[0]))
                if report.requeued:
                    await c.execute("SELECT pg_notify($1, '')", CHANNEL_JOBS)
        return report

    @asynccontextmanager
    async def _connection(self, conn: Connection | None) -> AsyncIterator[Connection]:
        """``conn`` as is, or a pooled connection in a transaction of its own."""
        if conn is not None:
            yield conn
            return
        async with self.pool.acquire() as own, own.transaction():
            yield own

    # ------------------------------------------------------------ daemons

    async def heartbeat(self, state: WorkerState) -> None:
        async with translated():
            await self.pool.execute(
                """
                INSERT INTO harvester.workers AS w
                       (worker_id, hostname, pid, version, auth_circuit, paused_until, in_flight,
                        send_rate, permission_circuit, upstream_alarm, upstream_clock_skew)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                ON CONFLICT (worker_id) DO UPDATE
                   SET heartbeat_at = now(), auth_circuit = excluded.auth_circuit,
                       paused_until = excluded.paused_until, in_flight = excluded.in_flight,
                       send_rate = excluded.send_rate,
                       permission_circuit = excluded.permission_circuit,
                       upstream_alarm = excluded.upstream_alarm,
                       upstream_clock_skew = excluded.upstream_clock_skew
                """,
                state.worker_id, state.hostname, state.pid, state.version, state.auth_circuit,
                state.paused_until, state.in_flight, state.send_rate, state.permission_circuit,
                state.upstream_alarm, state.upstream_clock_skew,
            )

    async def forget_worker(self, worker_id: str) -> None:
        async with translated():
            await self.pool.execute("DELETE FROM harvester.workers WHERE worker_id = $1",
                                    worker_id)
            await self.pool.execute(
                "DELETE FROM harvester.workers WHERE heartbeat_at < now() - interval '1 day'")

    # ------------------------------------------------------------ retention

    @asynccontextmanager
    async def purging(self) -> AsyncIterator[PurgeSession | None]:
        """This replica's turn to purge (README "Retention"), or None while another
        replica's purge runs.

        A session advisory lock, held on one pooled connection for a whole run (the
        batches until the purge has caught up, and the pauses between them), so that
        one replica purges at a time whatever the number of replicas, and the purge's
        load on the database does not grow with them. A lock per batch
        (``pg_try_advisory_xact_lock``) would let every replica slip its batches into
        the others' pauses. The lock is released explicitly on the way out (or the
        connection closed): the pool's reset does not."""
        async with translated(), self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY):
                yield None
                return
            try:
                yield PurgeSession(conn)
            finally:
                await _unlock_or_close(conn)

    # ------------------------------------------------------------ reading
    #
    # What operators see: `harvester status`, `stuck`, `jobs`, the admin API's job
    # pages and the queue gauges of /metrics. Every list is bounded and walks an index
    # in its order (README "Commands", "Operating").

    async def status(self) -> dict[str, Any]:
        """The numbers `harvester status` prints."""
        async with translated(), self.pool.acquire() as conn:
            open_counts = await conn.fetch(
                "SELECT state, upstream_status, count(*) AS n FROM harvester.jobs "
                "WHERE state IN ('pending', 'stuck') GROUP BY state, upstream_status")
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
            leased = await conn.fetchval(
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
            tables, oldest_finished = await _retention_figures(conn)
            autovacuum = await conn.fetchval("SELECT current_setting('autovacuum') = 'on'")
            workers = await conn.fetch(
                """
                SELECT worker_id, hostname, pid, version, auth_circuit, permission_circuit,
                       upstream_alarm, send_rate, paused_until, in_flight, upstream_clock_skew,
                       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
                  FROM harvester.workers
                 WHERE heartbeat_at > now() - interval '2 minutes'
                 ORDER BY worker_id
                """)
        states = {"pending": 0, "stuck": 0, "landed": 0, "failed": 0}
        by_upstream: dict[str, int] = {}
        for row in open_counts:
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
            "due_now": due["due_now"],
            "oldest_due_age_seconds": due["oldest_due_age"],
            "leased": leased,
            # The same number under its first name; "leased" says what it counts.
            "in_flight": leased,
            "stuck_open": stuck_open,
            "landed_last_minute": landed["last_minute"],
            "landed_last_hour": landed["last_hour"],
            "failed_by_reason": {r["failed_reason"]: r["n"] for r in failed},
            "auth_circuit_open": any(w["auth_circuit"] == "open" for w in live),
            "permission_circuit_open": any(w["permission_circuit"] == "open" for w in live),
            "upstream_alarms": sorted({w["upstream_alarm"] for w in live
                                       if w["upstream_alarm"] is not None}),
            "workers": live,
            "tables": {name: {"rows_estimate": int(t["rows"]), "bytes": int(t["bytes"])}
                       for name, t in tables.items()},
            "oldest_finished_age_seconds": oldest_finished,
            # Without autovacuum the space retention frees is never reused.
            "autovacuum": bool(autovacuum),
        }

    async def queue_gauges(self) -> dict[str, float]:
        """Cheap numbers for /metrics: open jobs by state and upstream status, due
        backlog, oldest due age, open stuck records, table sizes and the oldest finished
        row.

        The queries walk only the partial indexes of open jobs and open stuck records,
        the first entry of the finished jobs' indexes, and the catalog."""
        async with translated(), self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT state, upstream_status, count(*) AS n FROM harvester.jobs "
                "WHERE state IN ('pending', 'stuck') GROUP BY state, upstream_status")
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
            tables, oldest_finished = await _retention_figures(conn)
        gauges = {"pending": 0.0, "stuck": 0.0}
        for row in rows:
            gauges[row["state"]] += float(row["n"])
            key = f"upstream:{row['state']}:{upstream_status_label(row['upstream_status'])}"
            gauges[key] = gauges.get(key, 0.0) + float(row["n"])
        gauges["due"] = float(due["due"])
        gauges["oldest_due_age"] = float(due["age"])
        gauges["stuck_open"] = float(stuck["open"])
        gauges["oldest_stuck_age"] = float(stuck["age"])
        gauges["oldest_finished_age"] = oldest_finished or 0.0
        for name, size in tables.items():
            gauges[f"table_rows:{name}"] = size["rows"]
            gauges[f"table_bytes:{name}"] = size["bytes"]
        return gauges

    async def stuck_records(self, which: Literal["open", "resolved", "all"] = "open",
                            limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Stuck records and how many there are in all (``limit`` caps the list only).

        Open ones (and ``all``) oldest first; resolved ones most recently closed first."""
        where = {"open": "s.resolved_at IS NULL", "resolved": "s.resolved_at IS NOT NULL",
                 "all": "true"}[which]
        order = ("s.resolved_at DESC, s.job_id" if which == "resolved"
                 else "s.first_seen_at, s.job_id")
        async with translated(), self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"""
                SELECT s.job_id, s.first_seen_at, s.last_seen_at, s.times_seen, s.last_status,
                       s.last_body,
                       extract(epoch FROM coalesce(s.resolved_at, now()) - s.first_seen_at
                               )::float8 AS open_for_seconds,
                       j.state, j.next_poll_at, s.resolved_at, s.resolution, s.resolved_by,
                       s.resolution_note
                  FROM harvester.stuck_jobs s
                  JOIN harvester.jobs j USING (job_id)
                 WHERE {where}
                 ORDER BY {order}
                 LIMIT $1
                """, limit)  # noqa: S608 - fixed fragments chosen above
            total = await conn.fetchval(
                f"SELECT count(*) FROM harvester.stuck_jobs s WHERE {where}")  # noqa: S608
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
            rows = await c.fetch(
                """
                WITH acked AS (
                    UPDATE harvester.stuck_jobs
                       SET resolved_at = now(), resolution = 'acknowledged',
                           resolved_by = $2, resolution_note = $3
                     WHERE job_id = ANY($1::uuid[]) AND resolved_at IS NULL
                    RETURNING job_id
                )
                SELECT u.job_id, a.job_id IS NOT NULL AS acked, j.job_id IS NOT NULL AS known,
                       s.job_id IS NOT NULL AS was_stuck, s.resolution, s.resolved_by
                  FROM unnest($1::uuid[]) AS u(job_id)
                  LEFT JOIN acked a USING (job_id)
                  LEFT JOIN harvester.jobs j USING (job_id)
                  LEFT JOIN harvester.stuck_jobs s USING (job_id)
                 ORDER BY u.job_id
                """, unique, by, note)
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
            row = await conn.fetchrow(_JOB_SQL, job_id)
            if row is not None:
                found = dict(row)
            else:
                harvested = await conn.fetchval(
                    "SELECT harvested_at FROM harvester.extraction_results WHERE job_id = $1",
                    job_id)
                if harvested is None:
                    return None
                found = {**dict.fromkeys(_JOB_COLUMNS), "job_id": job_id, "state": "landed",
                         "landed_at": harvested}
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
                "SELECT first_seen_at, last_seen_at, times_seen, last_status, resolved_at, "
                "resolution, resolved_by, resolution_note "
                "FROM harvester.stuck_jobs WHERE job_id = $1", job_id)
            found["stuck"] = None if stuck is None else dict(stuck)
        return found
    async def ping(self) -> None:
        async with translated():
            await self.pool.fetchval("SELECT 1")

    # ------------------------------------------------------------ notifications

    async def announce_pace(self, payload: str) -> None:
        """NOTIFY the other daemons that upstream refused this one (README "Pace")."""
        async with translated():
            await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL_PACE, payload)

    async def listen_for_jobs(self, on_fed: Callable[[], None],
                              on_listening: Callable[[bool], None],
                              on_pace: Callable[[str], None]) -> None:
        """LISTEN for fed jobs until cancelled (README "Feeding jobs": picked up within
        milliseconds), and for the other daemons' refusals (``on_pace`` with the payload;
        README "Pace"). A dedicated connection, checked every 10 s with a query (a silent
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
                    await conn.add_listener(
                        CHANNEL_PACE, lambda *args: on_pace(str(args[-1])))
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
            await asyncio.sleep(backoff(failures, base=0.5, cap=LISTEN_RETRY_CAP))


def list_jobs_sql(state: str, *, reasons: Sequence[str] = (), limit: int = 100,
                  after: JobCursor | None = None) -> tuple[str, list[Any]]:
    """The statement behind :meth:`Store.list_jobs` (one more row than ``limit``, to know
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
    sql = f"""
        SELECT j.job_id, j.state, j.enqueued_at, j.requeued_at, j.updated_at,
               j.next_poll_at, j.polls, j.last_status, j.last_error, j.failed_reason,
               j.upstream_status, j.status_checked_at, j.next_step, j.landed_at,
               j.leased_until
          FROM harvester.jobs AS j
         WHERE {" AND ".join(where)}
         ORDER BY j.{column} {direction}, j.job_id {direction}
         LIMIT $1
    """  # noqa: S608 - state, columns and operators from fixed tables above
    return sql, args


def json_default(value: Any) -> Any:
    """The store's values that JSON lacks (timestamps, UUIDs), for ``json.dumps`` in the
    CLI's ``--json`` and the admin API."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(type(value).__name__)


async def _retention_figures(conn: Connection) -> tuple[dict[str, dict[str, float]],
                                                         float | None]:
    """Each table's size (``rows``: the planner's estimate; ``bytes``: with its indexes and
    TOAST) and the age of the oldest finished queue row the purge may delete (None:
    none)."""
    sizes = {row["name"]: {"rows": row["rows"], "bytes": row["bytes"]}
             for row in await conn.fetch(TABLE_SIZES_SQL)}
    oldest: float | None = await conn.fetchval(OLDEST_FINISHED_SQL)
    return sizes, oldest


async def _one(conn: Connection, sql: str, *args: Any) -> asyncpg.Record:
    """fetchrow for statements that always return exactly one row (aggregates)."""
    row = await conn.fetchrow(sql, *args)
    if row is None:  # pragma: no cover - an aggregate always returns a row
        raise StoreError("expected one row")
    return row
