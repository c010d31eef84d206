"""Rendering for people and for scripts: the pieces every command's output shares.

Each command gets its data first (a value from the store) and then renders it, so that
what it prints is tested from values alone (tests/unit/test_render.py): a readable table
fitted to the terminal, or stable JSON (``--json``) on stdout for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO
from uuid import UUID

from rich.console import Console

from harvester.ports import json_default


def dump_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, default=json_default, indent=2, sort_keys=True) + "\n")


def console(out: TextIO) -> Console:
    """Rich output fitted to a terminal; piped into a file or grep, lines are not
    wrapped at 80 columns so that every row stays on one line."""
    return Console(file=out, highlight=False, soft_wrap=True,
                   width=None if out.isatty() else 200)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def byte_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def id_list(ids: Sequence[UUID], limit: int = 5, total: int | None = None) -> str:
    total = len(ids) if total is None else total
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" … and {total - limit:,} more" if total > limit else "")
