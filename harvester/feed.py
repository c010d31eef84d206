"""Feeding: turning what people and systems send into job IDs, or into clear refusals.

One validation for every door (the ``enqueue`` command, the admin API): surrounding
whitespace trimmed, blank lines and ``#`` comments skipped, UUIDs accepted in any case
with or without hyphens and normalised to the canonical form. A refusal says why in a
few words and shows the offending text shortened, never a 10 KB line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from uuid import UUID

_HYPHENATED = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_COMPACT = re.compile(r"[0-9a-fA-F]{32}")
SHOW_LIMIT = 60
NIL = UUID(int=0)


class InvalidJobId(ValueError):
    """The text is not a job ID; the message says why."""


def shorten_for_display(text: str, limit: int = SHOW_LIMIT) -> str:
    printable = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[: limit * 2])
    if len(text) <= limit and len(printable) <= limit:
        return printable
    return f"{printable[:limit]}… ({len(text)} chars)"


def parse_job_id(text: str) -> UUID:
    """A canonical UUID from user text, or InvalidJobId with the reason."""
    candidate = text.strip()
    if not candidate:
        raise InvalidJobId("empty")
    if "\x00" in candidate:
        raise InvalidJobId("contains a NUL byte")
    if len(candidate) > 64:
        raise InvalidJobId(f"too long for a UUID ({len(candidate)} characters)")
    if not (_HYPHENATED.fullmatch(candidate) or _COMPACT.fullmatch(candidate)):
        raise InvalidJobId("not a UUID (expected 8-4-4-4-12 hexadecimal digits)")
    value = UUID(candidate)
    if value == NIL:
        raise InvalidJobId("the nil UUID is not a job ID")
    return value


@dataclass(frozen=True, slots=True)
class BadLine:
    number: int
    shown: str
    why: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.why}: {self.shown}" if self.shown else \
            f"line {self.number}: {self.why}"


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    job_id: UUID | None
    bad: BadLine | None


def read_lines(stream: BinaryIO, max_line: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines, reading at most ``max_line`` bytes of any one line into memory."""
    number = 0
    while True:
        raw = stream.readline(max_line)
        if not raw:
            return
        number += 1
        if len(raw) == max_line and not raw.endswith(b"\n"):
            # An absurd line: keep its head for the report, skip the rest unread.
            while True:
                more = stream.readline(max_line)
                if not more or more.endswith(b"\n"):
                    break
            head = raw[:256].decode("utf-8", errors="ignore").encode()
            yield number, head + "…".encode()
            continue
        yield number, raw


def classify(lines: Iterable[tuple[int, bytes]]) -> Iterator[Line]:
    """Each meaningful line as a job ID or a bad line; blanks and comments skipped."""
    for number, raw in lines:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Line(number, None, BadLine(number, shorten_for_display(
                raw.decode("utf-8", errors="replace").strip()), "not valid UTF-8"))
            continue
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            yield Line(number, parse_job_id(stripped), None)
        except InvalidJobId as exc:
            yield Line(number, None, BadLine(number, shorten_for_display(stripped), str(exc)))
