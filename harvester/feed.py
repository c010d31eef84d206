"""Feeding: turning what people and systems send into job IDs, or into clear refusals.

The first room on the road (feed → queue → …). One validation serves every door: the
``enqueue`` command (arguments, a file, stdin) and the admin API. Surrounding whitespace
is trimmed, blank lines and ``#`` comments (whole-line or trailing) are skipped, a UTF-8
byte-order mark at the start of a file is tolerated, CRLF line endings are fine, and
UUIDs are accepted in any case, with or without hyphens, in braces (``{…}``, as Windows
and .NET write them) or as a URN (``urn:uuid:…``, RFC 4122), and normalised. A refusal says
why in a few words and shows the offending text escaped and shortened: never a 10 KB
line, never raw control bytes on the operator's terminal.

Everything here is lazy: lines are read, classified and handed on one at a time, so the
size of the input never decides the size of the process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, NamedTuple
from uuid import UUID

_HYPHENATED: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_COMPACT: Final = re.compile(r"[0-9a-fA-F]{32}")
_URN_PREFIX: Final = "urn:uuid:"
# The longest spelling accepted: a URN of the hyphenated form.
_LONGEST: Final = len(_URN_PREFIX) + 36
SHOW_LIMIT: Final = 60
MAX_LINE_BYTES: Final = 64 * 1024
NIL: Final = UUID(int=0)
UTF8_BOM: Final = b"\xef\xbb\xbf"
UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")


class InvalidJobId(ValueError):
    """The text is not a job ID; the message says why."""


def shorten_for_display(text: str, limit: int = SHOW_LIMIT, *, size: str | None = None,
                        quote: bool = True) -> str:
    """``text`` quoted (unless ``quote`` is false), control characters and undecodable
    bytes escaped (``\\x00``, ``\\xff``), cut after ``limit`` characters of display with
    the full size named.

    Only the head of ``text`` is looked at, so a 10 MB line costs no more than a short
    one; an escape is never cut in half."""
    pieces: list[str] = []
    width = 0
    cut = False
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            piece = f"\\x{code - 0xDC00:02x}"
        elif ch.isprintable():
            piece = ch
        else:
            piece = repr(ch)[1:-1]
        if width + len(piece) > limit:
            cut = True
            break
        pieces.append(piece)
        width += len(piece)
    mark = '"' if quote else ""
    shown = mark + "".join(pieces) + ("…" if cut else "") + mark
    if cut:
        shown += f" ({size or f'{len(text):,} characters'})"
    return shown


def parse_job_id(text: str) -> UUID:
    """A canonical UUID from user text, or InvalidJobId with the reason."""
    candidate = text.strip()
    if not candidate:
        raise InvalidJobId("empty")
    if "\x00" in candidate:
        raise InvalidJobId("contains a NUL byte")
    if len(candidate) > _LONGEST:
        raise InvalidJobId("too long for a UUID")
    candidate = _unwrap(candidate)
    if not (_HYPHENATED.fullmatch(candidate) or _COMPACT.fullmatch(candidate)):
        raise InvalidJobId("not a UUID (expected 8-4-4-4-12 hexadecimal digits)")
    value = UUID(candidate)
    if value == NIL:
        raise InvalidJobId("the nil UUID is not a job ID")
    return value


def _unwrap(text: str) -> str:
    """The UUID inside ``{…}`` or after ``urn:uuid:``; other text unchanged."""
    if text[:1] == "{" and text[-1:] == "}":
        return text[1:-1]
    if text[:len(_URN_PREFIX)].lower() == _URN_PREFIX:
        return text[len(_URN_PREFIX):]
    return text


@dataclass(frozen=True, slots=True)
class BadInput:
    """One refused line or argument, ready to be printed as ``line N: why: "text"``."""

    where: str  # "line" or "argument"
    number: int
    why: str
    shown: str = ""

    def __str__(self) -> str:
        head = f"{self.where} {self.number}: {self.why}"
        return f"{head}: {self.shown}" if self.shown else head


@dataclass(frozen=True, slots=True)
class Entry:
    """A meaningful line or argument: either a job ID or a refusal."""

    number: int
    job_id: UUID | None
    bad: BadInput | None


class RawLine(NamedTuple):
    number: int
    data: bytes  # the whole line, or its first MAX_LINE_BYTES when longer
    length: int  # the line's full length in bytes


def read_lines(stream: BinaryIO, max_line: int = MAX_LINE_BYTES) -> Iterator[RawLine]:
    """Numbered raw lines; no more than ``max_line`` bytes of any one line are held."""
    number = 0
    while True:
        raw = stream.readline(max_line)
        if not raw:
            return
        number += 1
        if len(raw) < max_line or raw.endswith(b"\n"):
            yield RawLine(number, raw, len(raw))
            continue
        # An absurd line: keep its head for the report, count the rest as it streams by.
        length = len(raw)
        while True:
            more = stream.readline(max_line)
            length += len(more)
            if not more or more.endswith(b"\n"):
                length -= len(more) - len(more.rstrip(b"\r\n"))
                break
        yield RawLine(number, raw, length)


def classify_lines(stream: BinaryIO) -> Iterator[Entry]:
    """Each meaningful line of ``stream`` as a job ID or a refusal."""
    for line in read_lines(stream):
        data = line.data
        if line.number == 1:
            if data.startswith(UTF8_BOM):
                data = data[len(UTF8_BOM):]
            elif data.startswith(UTF16_BOMS):
                yield _bad_line(line.number, "UTF-16 text; save the file as UTF-8", data,
                                len(data))
                continue
        if line.length > len(line.data):
            yield _bad_line(line.number, "too long for a UUID", data, line.length)
            continue
        # Comments are cut before decoding, so a comment in another encoding is harmless.
        data = data.split(b"#", 1)[0].strip()
        if not data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield _bad_line(line.number, "not valid UTF-8", data, len(data))
            continue
        try:
            yield Entry(line.number, parse_job_id(text), None)
        except InvalidJobId as exc:
            yield _bad_line(line.number, str(exc), data, len(data))


def classify_arguments(texts: Iterable[str]) -> Iterator[Entry]:
    """Each command-line argument as a job ID or a refusal (``argument N``).

    Arguments are explicit: no comments, and an empty one is an error."""
    for number, text in enumerate(texts, start=1):
        try:
            yield Entry(number, parse_job_id(text), None)
        except InvalidJobId as exc:
            yield Entry(number, None,
                        BadInput("argument", number, str(exc), shorten_for_display(text.strip())))


def _bad_line(number: int, why: str, data: bytes, length: int) -> Entry:
    shown = shorten_for_display(data.decode("utf-8", errors="surrogateescape").strip(),
                                size=f"{length:,} bytes")
    return Entry(number, None, BadInput("line", number, why, shown))
