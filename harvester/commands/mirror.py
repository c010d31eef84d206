"""``harvester mirror compact``: rewrite the mirror rows written before schema version 5
so that each part of the body is stored once (README "Upgrades").

Safe beside running daemons: small batches, each one short transaction that locks only
its rows (SKIP LOCKED), walking the primary key once; the bodies read back
(``harvester.result_bodies``) are the same before and after, ``harvested_at`` stays and
nothing is notified. Stopped and started again, it starts over and finds the rows
already rewritten cheaply.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, TextIO

from harvester.commands import options, render
from harvester.commands.database import Target, check_schema, open_pool
from harvester.errors import UserError
from harvester.settings import Settings
from harvester.store import translated
from harvester.store.mirror import NIL, MirrorStore


def add_parser(sub: Any) -> None:
    mirror = sub.add_parser("mirror", help="the mirror's upkeep: mirror compact",
                            description="Upkeep of the mirror (harvester.extraction_results).")
    actions = mirror.add_subparsers(dest="mirror_action", metavar="compact", required=True)
    compact = actions.add_parser(
        "compact", help="rewrite rows written before schema version 5 (each part stored once)",
        description="Rewrite the mirror rows that still hold the whole body in payload "
                    "(written before schema version 5) so that payload keeps only what the "
                    "typed columns do not hold. In batches of --batch rows by job_id, each "
                    "its own short transaction, beside running daemons. The bodies read back "
                    "(harvester.result_bodies) do not change. The space freed is reused by "
                    "new rows; VACUUM FULL or pg_repack gives it back to the disk.")
    compact.add_argument("--batch", type=int, default=500, metavar="N",
                         help="rows looked at per transaction (default 500)")
    compact.add_argument("--pause", type=float, default=0.0, metavar="SECONDS",
                         help="sleep between batches (default 0)")
    compact.add_argument("--json", action="store_true",
                         help="print {scanned, rewritten, seconds} as JSON")
    options.add_reading(compact)
    compact.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cmd_mirror_compact(settings, args.batch, args.pause, args.json,
                                          sys.stdout, database=args.database))


async def cmd_mirror_compact(settings: Settings, batch: int, pause: float, as_json: bool,
                             out: TextIO, database: str | None = None) -> int:
    if batch < 1:
        raise UserError(f"--batch: must be 1 or more (got {batch})")
    if pause < 0:
        raise UserError(f"--pause: must be 0 or more (got {pause})")
    target = Target(settings, database)
    scanned = rewritten = 0
    started = time.monotonic()
    async with open_pool(target) as (pool, where):
        async with translated(), pool.acquire() as conn:
            await check_schema(conn, where, target, "read")
        store = MirrorStore(pool)
        after = NIL
        while True:
            done = await store.compact(after, batch)
            scanned += done.scanned
            rewritten += done.rewritten
            if done.last is None or done.scanned < batch:
                break
            after = done.last
            if pause:
                await asyncio.sleep(pause)
    seconds = round(time.monotonic() - started, 3)
    if as_json:
        render.dump_json({"scanned": scanned, "rewritten": rewritten, "seconds": seconds}, out)
    else:
        out.write(f"{where}: {rewritten} of {scanned} mirror rows rewritten "
                  f"in {seconds} s\n")
    return 0
