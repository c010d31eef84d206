"""An upstream body as it is held after decoding, never more than the limit of it.

The upstream client (:mod:`harvester.upstream`) reads every answer through a
:class:`LimitedBody`: it asks for ``gzip, deflate`` (:data:`ACCEPT_ENCODING`), turns
aiohttp's own decoding off, and feeds the bytes as they arrive. The limit
(``HARVESTER_MAX_BODY_BYTES``) holds on the decoded bytes: a small compressed answer
that would inflate past it is refused as soon as it passes it, having held at most the
limit plus one byte. Decoding here rather than in aiohttp keeps that bound whatever
aiohttp version is installed (before 3.13.3 its decoder inflated each network chunk
whole, and a 64 KiB chunk of gzip'd zeros is 64 MiB) and makes every other coding a
clear fault instead of compressed bytes stored as a result. Pure: bytes in, bytes or
an exception out; no sockets.
"""

from __future__ import annotations

import zlib
from typing import Final

ACCEPT_ENCODING: Final = "gzip, deflate"
"""What the client asks for: exactly the codings :class:`LimitedBody` decodes."""

_GZIP_MAGIC: Final = b"\x1f\x8b"
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_ZLIB_WBITS: Final = zlib.MAX_WBITS
_RAW_WBITS: Final = -zlib.MAX_WBITS
_CODINGS: Final = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
_MAX_MEMBERS: Final = 64
_STEP: Final = 64 * 1024
"""Most bytes one inflate call may produce: zlib builds its output in blocks and then
copies them into one bytes object, so a call briefly costs twice what it returns."""


class BodyTooLarge(Exception):
    """More than the limit once decoded: the ``too_large`` outcome."""


class UndecodableBody(Exception):
    """A coding we did not ask for, or a compressed body that is corrupt, cut short or
    followed by stray bytes: a protocol fault, never a result."""


def content_coding(header_values: list[str]) -> str | None:
    """The one coding of a ``Content-Encoding`` (all its header lines), ``None`` for
    identity; :class:`UndecodableBody` for anything else.

    Stacked codings (``deflate, gzip``) are refused rather than peeled: we ask for one
    coding, and a server that applies two answers something we did not ask for."""
    codings = [part.strip().lower() for value in header_values for part in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _CODINGS:
        return _CODINGS[codings[0]]
    shown = ", ".join(codings)[:60]
    raise UndecodableBody(f"Content-Encoding {shown!r} is not supported "
                          f"(harvester asks for {ACCEPT_ENCODING})")


class LimitedBody:
    """Collects one body's decoded bytes; :meth:`feed` raises :class:`BodyTooLarge` as
    soon as they pass ``limit``, so a bomb costs at most ``limit + 1`` bytes held.

    gzip may hold several members one after another (RFC 1952); ``deflate`` is zlib
    wrapped (RFC 1950) as the RFC says, or raw (RFC 1951) as some servers send it: told
    apart by the zlib header's check bits on the first two bytes."""

    def __init__(self, coding: str | None, limit: int) -> None:
        if coding not in (None, "gzip", "deflate"):
            raise UndecodableBody(f"Content-Encoding {coding!r} is not supported")
        self.coding = coding
        self.limit = limit
        self.size = 0
        self._parts: list[bytes] = []
        self._head = b""  # deflate: bytes seen before the first two
        self._inflater: zlib._Decompress | None = (
            zlib.decompressobj(wbits=_GZIP_WBITS) if coding == "gzip" else None)
        self._members = 1
        self._started = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._started = True
        if self.coding is None:
            self._hold(data)
            return
        if self._inflater is None:  # deflate, not yet told which kind
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            self._inflater = zlib.decompressobj(
                wbits=_ZLIB_WBITS if _zlib_header(data) else _RAW_WBITS)
        self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        inflater = self._inflater
        assert inflater is not None
        while True:
            if inflater.eof:
                if not data:
                    return
                inflater = self._next_member(data)
            # At most one byte more than still fits: passing the limit is seen at once,
            # and nothing beyond it is ever produced.
            room = min(self.limit - self.size + 1, _STEP)
            try:
                out = inflater.decompress(data, room)
            except zlib.error as exc:
                raise UndecodableBody(f"{self.coding} body is corrupt ({exc})") from None
            self._hold(out)
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if not data and len(out) < room:
                return  # all input taken, and zlib holds no output back

    def _next_member(self, data: bytes) -> zlib._Decompress:
        if self.coding != "gzip" or not data.startswith(_GZIP_MAGIC[: len(data)]):
            raise UndecodableBody(f"stray bytes after the end of the {self.coding} body")
        self._members += 1
        if self._members > _MAX_MEMBERS:
            raise UndecodableBody(f"gzip body of more than {_MAX_MEMBERS} members")
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        return self._inflater

    def _hold(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._parts.clear()
            shown = "" if self.coding is None else f" once decoded ({self.coding})"
            raise BodyTooLarge(f"body exceeds HARVESTER_MAX_BODY_BYTES={self.limit}{shown} "
                               "(stopped reading)")
        if data:
            self._parts.append(data)

    def finish(self) -> bytes:
        """The whole decoded body; :class:`UndecodableBody` when the compressed stream
        did not end (an empty body is empty whatever its coding says)."""
        ended = self._inflater is not None and self._inflater.eof
        if self.coding is not None and self._started and not ended:
            raise UndecodableBody(f"{self.coding} body ends early (truncated)")
        body = b"".join(self._parts)
        self._parts.clear()
        return body


def _zlib_header(first: bytes) -> bool:
    """Whether two bytes open a zlib stream: method 8 (deflate), a window of at most
    32 KiB, and the check bits that make the pair a multiple of 31. A raw deflate
    stream's first block header practically never passes all three."""
    cmf, flg = first[0], first[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
