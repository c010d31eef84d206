"""Every statement of the store, by name, from the ``.sql`` files beside this module.

One place to review the SQL: each adapter of :mod:`harvester.store` has its file here
(``queue.sql`` for the engine's queue, ``listen.sql``, ``purge.sql``, ``operators.sql``,
``figures.sql`` for status and /metrics, ``schema.sql`` for the commands' checks), in
blocks headed ``-- name --`` as in procrastinate's ``sql/queries.sql``. The comment lines
right under a header say why the statement is as it is; they are not sent. A file is
read once, when its adapter is imported, through :mod:`importlib.resources`, so an
installed wheel finds it exactly as a checkout does.

``{name}`` in a statement is filled in when its file is loaded: from ``fragments.sql``
(SQL shared by several statements, written once) or from the adapter (the ``unnest``
column lists of :class:`~harvester.store.queue.Columns`). A few statements keep a
``{where}`` or ``{order}`` that a builder fills at run time, always from fixed texts
(a requeue's selection, a page of jobs): nothing a user typed reaches a statement's text,
every value is a bound parameter. Braces mean nothing else in these files.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Final

_HEADER: Final = re.compile(r"^-- ([a-z0-9_]+) --\n((?:--(?: .*)?\n)*)", re.MULTILINE)
FRAGMENTS: Final = "fragments"


class Statements(Mapping[str, str]):
    """The statements of one file by name, with what could be filled at load time
    filled in; :meth:`build` fills the rest."""

    def __init__(self, file: str, texts: dict[str, str]) -> None:
        self.file = file
        self._texts = texts

    def __getitem__(self, name: str) -> str:
        return self._texts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __repr__(self) -> str:
        return f"Statements({self.file!r}, {sorted(self._texts)})"

    def placeholders(self, name: str) -> set[str]:
        """What :meth:`build` must be given for statement ``name``."""
        return placeholders(self._texts[name])

    def build(self, name: str, **parts: str) -> str:
        """Statement ``name`` with its run-time parts (fixed texts chosen by a builder)."""
        missing = self.placeholders(name) - set(parts)
        if missing:
            raise KeyError(f"{self.file}.sql {name} needs {', '.join(sorted(missing))}")
        return self._texts[name].format(**parts)


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


@cache
def blocks(file: str) -> dict[str, str]:
    """The raw blocks of ``file``.sql by name, read once."""
    text = resources.files(__package__).joinpath(f"{file}.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    # parts: the text before the first header, then (name, comments, statement) triples
    for index in range(1, len(parts), 3):
        name, statement = parts[index], parts[index + 2].strip()
        if name in found:
            raise ValueError(f"{file}.sql: two statements named {name}")
        if not statement:
            raise ValueError(f"{file}.sql: {name} is empty")
        found[name] = statement
    return found


class _Keep(dict[str, str]):
    """Placeholders not filled at load time stay for :meth:`Statements.build`."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_loaded: dict[str, Statements] = {}


def load(file: str, **parts: str) -> Statements:
    """The statements of ``file``.sql, with the shared fragments and ``parts`` filled in.

    Loaded once per process: a second call returns the first result (the parts are
    constants of the adapter that loads the file)."""
    if file in _loaded:
        return _loaded[file]
    shared = _Keep({**blocks(FRAGMENTS), **parts})
    statements = Statements(file, {name: text.format_map(shared)
                                   for name, text in blocks(file).items()})
    _loaded[file] = statements
    return statements


def fragment(name: str) -> str:
    """A block of ``fragments.sql``, for a builder that writes it into a statement."""
    shared = blocks(FRAGMENTS)
    return shared[name].format_map(_Keep(shared))


def files() -> list[str]:
    """Every statement file of the package (the fragments excepted)."""
    return sorted(entry.name.removesuffix(".sql")
                  for entry in resources.files(__package__).iterdir()
                  if entry.name.endswith(".sql") and entry.name != f"{FRAGMENTS}.sql")


def loaded() -> Mapping[str, Statements]:
    """The files loaded so far, by name: the adapters imported in this process."""
    return dict(_loaded)
