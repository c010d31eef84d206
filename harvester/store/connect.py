"""Connecting to PostgreSQL, and the one place asyncpg's errors become the project's.

Every adapter of the store starts here: :func:`create_pool` opens a pool fit for short
statements (or says in one line why the DSN can never work), and :func:`translated`
wraps each statement so that its errors become the project's as the fault table says
(:mod:`harvester.database_faults`): a dropped connection, a restarting server or a
read-only node becomes :class:`~harvester.errors.StoreUnavailable` (wait and retry), a
value the database cannot hold :class:`~harvester.errors.ValueRefused`, and so on, as
httpx maps httpcore's errors. Nothing above the adapters sees an asyncpg exception.
"""

from __future__ import annotations

import inspect
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record])
else:
    Connection = asyncpg.Connection

from harvester.database_faults import DSN_VARIABLE, classify, error_for
from harvester.dsn import (
    DEFAULT_CONNECT_TIMEOUT,
    address,
    host_names,
    named_files,
    scrub,
    split_client_options,
)
from harvester.errors import (
    DatabaseConfigError,
    DatabaseHostUnknown,
    StoreError,
    StoreUnavailable,
)


def translate(exc: BaseException) -> StoreError:
    """Map an asyncpg/OS error to the project's own, as the fault table says
    (:mod:`harvester.database_faults`)."""
    return error_for(exc)


def _line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


@asynccontextmanager
async def translated(pool: asyncpg.Pool | None = None) -> AsyncIterator[None]:
    """Errors of the block as the project's own. With ``pool``, a fault that means the
    session is on the wrong node (read-only after a failover) also retires the pool's
    connections, so that the next attempt connects anew rather than reuse them."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
            TimeoutError) as exc:
        fault = classify(exc)
        if pool is not None and fault.reconnect:
            await pool.expire_connections()
        raise error_for(exc, fault) from exc


async def _keep_session(conn: Connection) -> None:
    """Pool reset hook: nothing to undo.

    asyncpg's default reset runs a query (UNLISTEN, RESET ALL, ...) on every release:
    one more round trip per claim and per write. The daemon's pooled connections never
    LISTEN, SET or hold advisory locks beyond a block that releases them, so there is
    no session state to reset; asyncpg still rolls back an open transaction itself.
    """


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
    claim, against 0.17 ms for the first 700 entries of the index). And a page read at
    random is costed at 1.1 sequential ones (``random_page_cost``; the default 4 is a
    disk that seeks), as on any server whose queue is in memory or on SSD: at 4, the
    write of a batch of 500 outcomes to a queue of 30,000 jobs read the whole queue
    into a hash table (12-18 ms) rather than look the 500 up by key (4 ms), and would
    until the queue outgrew several times that.

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
        settings["random_page_cost"] = "1.1"
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
    except socket.gaierror as exc:
        # Before OSError: the host and the variable, not "[Errno -2] Name or service
        # not known". A command stops; `run` waits for DNS (README "Connecting").
        names = ", ".join(f'"{name}"' for name in host_names(dsn)) or target.where
        raise DatabaseHostUnknown(
            f"{DSN_VARIABLE}: cannot resolve host {names} ({exc.strerror or exc})") from exc
    except asyncpg.PostgresError as exc:
        error = translate(exc)
        if isinstance(error, StoreUnavailable):  # starting up, shutting down, too many clients
            raise error from exc
        # The server answered and refused: a wrong password or user, a database that
        # does not exist, no CONNECT privilege, a DSN parameter it does not know.
        raise DatabaseConfigError(
            f"{DSN_VARIABLE}: {type(exc).__name__}: {scrub(_line(exc), dsn)}",
            code=error.code) from exc
    except (asyncpg.InterfaceError, OSError) as exc:
        raise translate(exc) from exc
