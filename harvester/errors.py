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
    """A database operation failed."""


class StoreUnavailable(StoreError):
    """The database is unreachable or the connection dropped: transient, retry later."""


class DatabaseConfigError(ConfigError, StoreError):
    """The DSN cannot work as written (a bad sslmode, a CA file that is not there, a
    certificate the server's does not match): retrying would never succeed, so it is
    reported like any bad setting, naming HARVESTER_DATABASE_URL."""
