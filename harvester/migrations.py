"""Forward-only SQL migrations from ``sql/``, applied under an advisory lock.

Replicas may start together: the first takes the lock and migrates, the others wait
and then find nothing to do. Each file runs in its own transaction and is recorded in
``harvester.schema_migrations`` with a checksum, so an edited migration that was already
applied is refused rather than silently diverging.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from harvester.errors import MigrationError

if TYPE_CHECKING:
    from harvester.store.connect import Connection

# pg_advisory_lock key: the ASCII of "harvestr" as a bigint, fixed forever.
MIGRATION_LOCK_KEY = 0x6861727665737472
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS harvester;
CREATE TABLE IF NOT EXISTS harvester.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """``harvester/sql`` inside an installed wheel, else ``sql/`` of the checkout."""
    packaged = Path(str(resources.files("harvester"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name not understood: {path.name}")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


def latest_version() -> int:
    return load_migrations()[-1].version


async def applied_versions(conn: Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('harvester.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM harvester.schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def pending_migrations(conn: Connection) -> list[Migration]:
    applied = await applied_versions(conn)
    return [m for m in load_migrations() if m.version not in applied]


async def newer_versions(conn: Connection) -> list[int]:
    """Migrations the database has that this harvester does not know.

    Migrations are additive (columns and tables are added, never dropped or renamed),
    so an older daemon keeps working on a newer schema: during a rolling upgrade the
    old replicas that restart must not crash-loop. This is reported, not refused."""
    applied = await applied_versions(conn)
    return sorted(set(applied) - {m.version for m in load_migrations()})


async def migrate(conn: Connection) -> list[Migration]:
    """Apply what is missing; return what was applied (empty when current).

    Versions the database has beyond what this code knows are left alone (see
    :func:`newer_versions`); a known migration whose file changed is refused."""
    available = load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_BOOTSTRAP)
        applied = await applied_versions(conn)
        for migration in available:
            recorded = applied.get(migration.version)
            if recorded is not None and recorded != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:03d}_{migration.name} was changed after it "
                    "was applied; write a new migration instead"
                )
        done: list[Migration] = []
        for migration in available:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO harvester.schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
