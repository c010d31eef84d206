"""The database's faults, classified in one place (README "The database's faults").

Beside the road (feed → queue → claim → poll → decide → write → mirror): every error the
store meets on its way to PostgreSQL and back is one of a few kinds, read from its
SQLSTATE (PostgreSQL's appendix "Error Codes": the first two characters are the class,
so a code this table does not name is still judged by its class) or, for the client's
own errors (a dropped socket, a timeout), from its type. The kind decides what the
daemon does, and every place that meets the database follows it: *wait out* (the
database is away or cannot serve now: reconnect with backoff, readiness fails, nothing
is charged to any job), *retry now* (a transaction the server rolled back to resolve a
conflict), *timed out* (a statement cut by ``statement_timeout``/``lock_timeout``:
waited out by claims and writes, a refusal for the purge), *refuse the row* (a value the
database cannot hold: that job's outcome only), *configuration* (the DSN, the role or
the database cannot work: one line naming ``HARVESTER_DATABASE_URL`` and exit 2 at start;
waited out, loudly, once running) and *unexpected* (anything else: waited out, loudly).

Pure: no I/O, and nothing of the daemon but its errors. The store translates with
:func:`error_for`; the tests read :data:`BY_CODE` and :data:`BY_CLASS` as the table.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import asyncpg

from harvester.errors import (
    DatabaseConfigError,
    StoreConflict,
    StoreError,
    StoreTimedOut,
    StoreUnavailable,
    ValueRefused,
)

DSN_VARIABLE: Final = "HARVESTER_DATABASE_URL"


class Action(StrEnum):
    """What the daemon does about a fault (README "The database's faults")."""

    WAIT_OUT = "wait_out"
    RETRY_NOW = "retry_now"
    TIMED_OUT = "timed_out"
    REFUSE_ROW = "refuse_row"
    CONFIGURATION = "configuration"
    UNEXPECTED = "unexpected"


@dataclass(frozen=True, slots=True)
class Fault:
    """One row of the table: the action, what it means to a person, and whether the
    session that met it must be left (it is on a node that cannot serve us: after a
    failover the old primary's sessions stay read-only for good, whatever DNS says)."""

    action: Action
    meaning: str
    reconnect: bool = False


WAIT, NOW, TIMED, ROW, CONFIG, ODD = (Action.WAIT_OUT, Action.RETRY_NOW, Action.TIMED_OUT,
                                      Action.REFUSE_ROW, Action.CONFIGURATION,
                                      Action.UNEXPECTED)

BY_CODE: Final[Mapping[str, Fault]] = {
    # Class 25: the one a failover shows. A read-only session stays read-only: leave it.
    "25006": Fault(WAIT, "a read-only node (a standby, or a failover in progress)",
                   reconnect=True),
    "25P03": Fault(WAIT, "idle_in_transaction_session_timeout ended the session"),
    "25P04": Fault(TIMED, "transaction_timeout cut the transaction"),
    # Class 57: operator intervention. Each of these ends or refuses a session and
    # passes; a statement cancelled (statement_timeout, pg_cancel_backend) ran out of
    # time because something held it up, not because of what it asked.
    "57014": Fault(TIMED, "statement cancelled (statement_timeout, or pg_cancel_backend)"),
    "57P01": Fault(WAIT, "the server is shutting down (or pg_terminate_backend)"),
    "57P02": Fault(WAIT, "the server crashed and is restarting"),
    "57P03": Fault(WAIT, "the server is starting up or in recovery"),
    "57P04": Fault(WAIT, "the database is being dropped", reconnect=True),
    "57P05": Fault(WAIT, "idle_session_timeout ended the session"),
    # Class 55: a lock that lock_timeout gave up on (an operator's LOCK TABLE, a long
    # migration) passes when its holder lets go.
    "55P03": Fault(TIMED, "lock not available (lock_timeout)"),
    # Class 53: the server's resources; each passes when load or space comes back.
    "53100": Fault(WAIT, "the server's disk is full"),
    "53200": Fault(WAIT, "the server is out of memory"),
    "53300": Fault(WAIT, "too many connections"),
    # Configuration: the same answer on every attempt until a person changes something.
    "28000": Fault(CONFIG, "the role may not log in"),
    "28P01": Fault(CONFIG, "wrong password"),
    "3D000": Fault(CONFIG, "the database does not exist"),
    "42501": Fault(CONFIG, "the role lacks a privilege"),
    "3F000": Fault(CONFIG, "the harvester schema does not exist: not migrated"),
    "42P01": Fault(CONFIG, "a harvester table does not exist: not migrated"),
    "42703": Fault(CONFIG, "a harvester column does not exist: the schema is older than "
                           "this harvester"),
    "42883": Fault(CONFIG, "a function does not exist: the schema is older than this "
                           "harvester"),
}
"""Exact SQLSTATEs, looked up first."""

BY_CLASS: Final[Mapping[str, Fault]] = {
    "08": Fault(WAIT, "connection lost"),
    "40": Fault(NOW, "the server rolled the transaction back (serialization failure, "
                     "deadlock)"),
    "53": Fault(WAIT, "the server is out of resources"),
    "55": Fault(WAIT, "an object is not in the state required (a lock, recovery in progress)"),
    "57": Fault(WAIT, "operator intervention"),
    "58": Fault(WAIT, "a system error on the server (I/O)"),
    "72": Fault(NOW, "snapshot too old"),
    "21": Fault(ROW, "a row twice in one statement"),
    "22": Fault(ROW, "a value the database cannot hold"),
    "23": Fault(ROW, "a row the table's constraints refuse"),
    "54": Fault(ROW, "a value beyond the server's limits"),
    "28": Fault(CONFIG, "the role may not log in"),
    # Not ours to fix and not known to pass: said loudly, never fatal once running.
    "0A": Fault(ODD, "a feature the server does not support"),
    "XX": Fault(ODD, "the server's internal error"),
}
"""SQLSTATE classes (the first two characters), for codes not in :data:`BY_CODE`."""

UNKNOWN: Final = Fault(ODD, "an error the fault table does not know")
LOST: Final = Fault(WAIT, "connection lost")
NO_ANSWER: Final = Fault(WAIT, "no answer in time")
UNRESOLVED: Final = Fault(WAIT, f"cannot resolve the database host ({DSN_VARIABLE})")
STALE_STATEMENT: Final = Fault(NOW, "a prepared statement outdated by a schema change")
BAD_DSN: Final = Fault(CONFIG, "the DSN cannot work as written")


def by_sqlstate(code: str) -> Fault:
    """The table's verdict for a SQLSTATE: the exact code, else its class, else
    :data:`UNKNOWN`."""
    return BY_CODE.get(code) or BY_CLASS.get(code[:2]) or UNKNOWN


def classify(exc: BaseException) -> Fault:
    """The table's verdict for an error raised by asyncpg or the network."""
    # Before the SQLSTATE: asyncpg raises these with the codes of other faults (0A000),
    # having already dropped the outdated statement, so a second try prepares it anew.
    if isinstance(exc, asyncpg.InvalidCachedStatementError | asyncpg.OutdatedSchemaCacheError):
        return STALE_STATEMENT
    if isinstance(exc, asyncpg.ClientConfigurationError | ssl.SSLCertVerificationError):
        return BAD_DSN
    code = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError) and isinstance(code, str) and len(code) == 5:
        return by_sqlstate(code)
    if isinstance(exc, socket.gaierror):
        return UNRESOLVED
    if isinstance(exc, TimeoutError):
        return NO_ANSWER
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError):
        return LOST  # ConnectionError is an OSError
    return UNKNOWN


def error_for(exc: BaseException, fault: Fault | None = None) -> StoreError:
    """The project's error for ``exc`` (``raise error_for(exc) from exc``): its class
    carries the action, its message the meaning and what the server said, its ``code``
    the SQLSTATE (or the client's error name) for logs."""
    fault = fault or classify(exc)
    code = getattr(exc, "sqlstate", None)
    code = code if isinstance(exc, asyncpg.PostgresError) and isinstance(code, str) else None
    said = (str(exc) or type(exc).__name__).splitlines()[0][:300]
    if isinstance(exc, socket.gaierror):
        said = exc.strerror or said
    detail = f"{fault.meaning} ({code + ' ' if code else ''}{type(exc).__name__}: {said})"
    label = code or type(exc).__name__
    match fault.action:
        case Action.WAIT_OUT:
            return StoreUnavailable(f"database unavailable: {detail}", code=label)
        case Action.RETRY_NOW:
            return StoreConflict(f"database unavailable: {detail}", code=label)
        case Action.TIMED_OUT:
            return StoreTimedOut(f"database unavailable: {detail}", code=label)
        case Action.REFUSE_ROW:
            return ValueRefused(f"database refused a value: {detail}", code=label)
        case Action.CONFIGURATION:
            return DatabaseConfigError(f"{DSN_VARIABLE}: {detail}", code=label)
        case _:
            return StoreError(f"database error: {detail}", code=label)
