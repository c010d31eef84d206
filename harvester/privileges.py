"""What the daemon's role must be allowed, checked once when ``harvester run`` starts.

Beside the road: every step of it (claim, write, the stuck record, the heartbeat,
readiness) needs a privilege on one of the schema's tables. A role that lacks one
would otherwise start, claim or poll, and only then meet "permission denied" (SQLSTATE
42501) at the first statement that needs it, minutes later for a first landing. So the
role is checked before the engine starts, and a missing privilege stops ``run`` with one
line naming ``HARVESTER_DATABASE_URL`` and each privilege, exit status 2. Once running, a
privilege revoked is waited out instead (README "The database's faults"): an operator
may be fixing a grant right now, and that must not stop every replica.

The purge's DELETE is not required: without it retention fails on its own
(``retention.failed``) while harvesting goes on, as before this check existed.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from harvester.database_faults import DSN_VARIABLE
from harvester.errors import DatabaseConfigError
from harvester.store import translated

SCHEMA: Final = "harvester"
NEEDED: Final = (
    ("harvester.jobs", ("SELECT", "UPDATE")),
    ("harvester.extraction_results", ("SELECT", "INSERT", "UPDATE")),
    ("harvester.stuck_jobs", ("SELECT", "INSERT", "UPDATE")),
    ("harvester.workers", ("SELECT", "INSERT", "UPDATE")),
    ("harvester.schema_migrations", ("SELECT",)),
)
"""Per table, what the daemon's statements do to it. A privilege granted on some
columns only counts (``has_any_column_privilege``): the check refuses only what can
never work."""

# Without USAGE on the schema even naming one of its tables is refused: asked first.
USAGE_SQL: Final = "SELECT current_user::text, has_schema_privilege($1, 'USAGE')"
MISSING_SQL: Final = """
SELECT need.relation, need.privilege
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS need(relation, privilege, n)
 WHERE NOT has_any_column_privilege(need.relation, need.privilege)
 ORDER BY need.n
"""


async def check_privileges(pool: asyncpg.Pool) -> None:
    """Raise :class:`DatabaseConfigError` naming every privilege the role lacks."""
    pairs = [(table, privilege) for table, privileges in NEEDED for privilege in privileges]
    async with translated(), pool.acquire() as conn:
        role, usage = await conn.fetchrow(USAGE_SQL, SCHEMA) or ("?", False)
        missing = [f"USAGE on schema {SCHEMA}"]
        if usage:
            rows = await conn.fetch(MISSING_SQL, [t for t, _ in pairs], [p for _, p in pairs])
            missing = [f"{r['privilege']} on {r['relation']}" for r in rows]
    if missing:
        raise DatabaseConfigError(
            f'{DSN_VARIABLE}: role "{role}" lacks {", ".join(missing)}: grant '
            f"{'it' if len(missing) == 1 else 'them'}, or use a role that has them "
            "(README \"The database's faults\")", code="42501")
