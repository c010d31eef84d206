"""Rendering for people and for scripts: the pieces every command's output shares.

Each command gets its data first (a value from the store) and then renders it, so that
what it prints is tested from values alone (tests/unit/test_render.py): a readable table
fitted to the terminal, or stable JSON (``--json``) on stdout for scripts.

Tables are for people. On a terminal they fit its width; piped into a file, ``less`` or
``grep`` they fit ``$COLUMNS`` when it is set, else :data:`PIPED_WIDTH` columns, wrapping
long cells. Scripts read ``--json``, the machine format (README "Commands").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO
from uuid import UUID

from rich.console import Console
from rich.table import Table

from harvester.ports import json_default


def dump_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, default=json_default, indent=2, sort_keys=True) + "\n")


PIPED_WIDTH: Final = 120
"""Columns of a table written to something other than a terminal, without $COLUMNS."""


def output_width(out: TextIO, environ: Mapping[str, str] | None = None) -> int | None:
    """The width tables fit: None on a terminal (rich measures it), else ``$COLUMNS`` if
    it is a positive whole number, else :data:`PIPED_WIDTH`."""
    if out.isatty():
        return None
    columns = (os.environ if environ is None else environ).get("COLUMNS", "").strip()
    # ASCII digits only: str.isdigit also takes "¹", which int() refuses.
    return int(columns) if columns.isascii() and columns.isdigit() and int(columns) > 0 \
        else PIPED_WIDTH


def console(out: TextIO) -> Console:
    """Rich output fitted to :func:`output_width`. Lines of text are never wrapped
    (``soft_wrap``), so that a printed command stays one line to copy; tables wrap
    their long cells to fit."""
    return Console(file=out, highlight=False, soft_wrap=True, width=output_width(out))


def print_table(console: Console, table: Table) -> None:
    """A table fitted to the console's width: a cell too long for its column folds onto
    the next line rather than ending in "…", so a narrow width loses nothing."""
    for column in table.columns:
        column.overflow = "fold"
    console.print(table)


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
