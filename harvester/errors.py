"""One exception root for the project.

Adapters translate their library's errors into these (``raise ... from exc``) so that
the engine and the CLI reason about *what happened* (the database is away, upstream
faulted, the user gave a bad value) rather than about asyncpg or aiohttp internals.
Every message here is written for a person and never carries a secret.
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Root of every error harvester raises on purpose."""


class UserError(HarvesterError):
    """Something the user can fix: printed as one line, exit status 2."""

    exit_status = 2


class ConfigError(UserError):
    """A setting is missing or out of bounds. The message names the variable."""


class MigrationError(HarvesterError):
    """The schema cannot be brought to the version this code expects."""


class EmbeddedDatabaseError(HarvesterError):
    """The embedded PostgreSQL could not be started or is not installed."""


class EmbeddedDataDirError(EmbeddedDatabaseError, ConfigError):
    """The data directory cannot hold the embedded PostgreSQL without opening what the
    user keeps closed (README "Security"): the user's to change, exit status 2."""


class StoreError(HarvesterError):
    """A database operation failed. Its class is the fault table's verdict
    (:mod:`harvester.database_faults`, README "The database's faults"); this class
    itself is the table's *unexpected*: a reason it does not know, which the daemon
    waits out loudly and a command reports as one line, exit status 1.

    ``code`` is the SQLSTATE, or the name of the client's own error, for logs."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """The database is away or cannot serve now (connection lost, shutting down or
    starting, a read-only node, too many connections, out of memory or disk): wait it
    out, charge nothing."""


class StoreConflict(StoreUnavailable):
    """The server rolled the transaction back to resolve a conflict (serialization
    failure, deadlock): try again at once, then wait out like any outage."""


class StoreTimedOut(StoreUnavailable):
    """A statement cut by ``statement_timeout`` or ``lock_timeout`` (something held it
    up): claims and writes wait it out; the purge counts it as a refusal, since a batch
    cut once will likely be cut again."""


class ValueRefused(StoreError):
    """The database cannot hold a value of the statement (a data exception, a
    constraint): the row is refused, the rest of its batch is not."""


class DatabaseConfigError(ConfigError, StoreError):
    """The DSN, the role or the database cannot work as written (a bad sslmode, a CA
    file that is not there, a wrong password, a database that does not exist, a missing
    privilege): retrying would never succeed, so a command reports it like any bad
    setting, naming HARVESTER_DATABASE_URL, and ``harvester run`` stops at start. Met
    while running (a privilege revoked), it is waited out, loudly."""


class DatabaseHostUnknown(DatabaseConfigError, StoreUnavailable):
    """The database's host name does not resolve. A command stops with one line naming
    HARVESTER_DATABASE_URL, exit 2 (most often a typo); ``harvester run`` keeps trying,
    since DNS comes back (a pod's resolver during a rollout)."""
