"""The body decoder: every supported coding decodes to what was sent, within the limit,
and nothing decoded past the limit is ever held (README "How upstream answers are
handled", oversized bodies)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.decoding import BodyTooLarge, LimitedBody, UndecodableBody, content_coding

Compress = Callable[[bytes, int], bytes]


def _zlib(wbits: int) -> Compress:
    def compress(data: bytes, level: int) -> bytes:
        packer = zlib.compressobj(level, zlib.DEFLATED, wbits)
        return packer.compress(data) + packer.flush()
    return compress


# (header value, how the sender compressed): the three shapes servers send.
SHAPES: dict[str, tuple[str, Compress]] = {
    "gzip": ("gzip", _zlib(16 + zlib.MAX_WBITS)),
    "deflate (zlib, RFC 1950)": ("deflate", _zlib(zlib.MAX_WBITS)),
    "deflate (raw, RFC 1951)": ("deflate", _zlib(-zlib.MAX_WBITS)),
    "identity": ("identity", lambda data, _level: data),
}


def _decode(coding: str, chunks: Iterator[bytes] | list[bytes], limit: int) -> bytes:
    body = LimitedBody(content_coding([coding]), limit)
    _feed_all(body, list(chunks))
    return body.finish()


def _feed_all(body: LimitedBody, chunks: list[bytes]) -> None:
    for chunk in chunks:
        body.feed(chunk)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize(("values", "expected"), [
    ([], None),
    ([""], None),
    (["identity"], None),
    (["gzip"], "gzip"),
    (["GZip"], "gzip"),
    (["x-gzip"], "gzip"),
    ([" deflate "], "deflate"),
    (["gzip, identity"], "gzip"),
    (["identity", "deflate"], "deflate"),
])
def test_the_codings_asked_for_are_understood(values: list[str], expected: str | None) -> None:
    assert content_coding(values) == expected


@pytest.mark.parametrize("values", [
    ["br"], ["zstd"], ["compress"], ["gzip, br"], ["deflate, gzip"], ["gzip", "gzip"],
    ["x" * 500],
])
def test_any_other_coding_is_refused_by_name(values: list[str]) -> None:
    with pytest.raises(UndecodableBody, match="is not supported") as caught:
        content_coding(values)
    assert len(str(caught.value)) < 200  # a hostile header is not echoed whole


@settings(max_examples=150, deadline=None)
@given(shape=st.sampled_from(sorted(SHAPES)), data=st.binary(max_size=20_000),
       level=st.integers(0, 9), cuts=st.lists(st.integers(0, 25_000), max_size=8),
       limit=st.integers(1024, 30_000))
def test_any_body_compressed_any_supported_way_decodes_to_itself_within_the_limit(
        shape: str, data: bytes, level: int, cuts: list[int], limit: int) -> None:
    coding, compress = SHAPES[shape]
    sent = compress(data, level)
    chunks = _split(sent, cuts)
    if len(data) <= limit:
        assert _decode(coding, chunks, limit) == data
        return
    body = LimitedBody(content_coding([coding]), limit)
    with pytest.raises(BodyTooLarge, match="HARVESTER_MAX_BODY_BYTES"):
        _feed_all(body, chunks)
    assert body.size <= limit + 1  # never a byte more than it takes to see the limit passed


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(["gzip", "deflate (zlib, RFC 1950)", "deflate (raw, RFC 1951)"]),
       data=st.binary(max_size=3000), level=st.integers(0, 9), cut=st.integers(1, 10_000))
def test_a_compressed_body_cut_short_is_refused(shape: str, data: bytes, level: int,
                                               cut: int) -> None:
    coding, compress = SHAPES[shape]
    sent = compress(data, level)
    with pytest.raises(UndecodableBody, match=r"truncated|corrupt"):
        _decode(coding, [sent[: 1 + cut % (len(sent) - 1)]], 1 << 20)


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(["gzip", "deflate (zlib, RFC 1950)", "deflate (raw, RFC 1951)"]),
       data=st.binary(max_size=3000), trailing=st.binary(min_size=1, max_size=50).filter(
           lambda b: not b.startswith(b"\x1f")))
def test_stray_bytes_after_a_compressed_body_are_refused(shape: str, data: bytes,
                                                        trailing: bytes) -> None:
    coding, compress = SHAPES[shape]
    with pytest.raises(UndecodableBody, match="stray bytes"):
        _decode(coding, [compress(data, 6) + trailing], 1 << 20)


def test_gzip_members_one_after_another_decode_as_one_body() -> None:
    sent = gzip.compress(b'{"a": ') + gzip.compress(b"1}")
    assert _decode("gzip", [sent[:25], sent[25:]], 1024) == b'{"a": 1}'


def test_a_gzip_body_of_endless_tiny_members_is_refused() -> None:
    with pytest.raises(UndecodableBody, match="members"):
        _decode("gzip", [gzip.compress(b"x") * 100], 1 << 20)


@pytest.mark.parametrize(("coding", "sent"), [
    ("gzip", b"\x1f\x8b" + b"garbage" * 10),
    ("gzip", b"not gzip at all"),
    ("deflate", b"\x78\x9c" + b"\xff" * 20),
])
def test_a_corrupt_body_is_refused(coding: str, sent: bytes) -> None:
    with pytest.raises(UndecodableBody):
        _decode(coding, [sent], 1 << 20)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_an_empty_body_is_empty_whatever_its_coding_says(coding: str) -> None:
    assert _decode(coding, [b""], 1024) == b""


def test_a_deflate_body_fed_one_byte_at_a_time_is_told_apart_and_decoded() -> None:
    data = b'{"id": "x"}' * 50
    for _shape, (coding, compress) in SHAPES.items():
        sent = compress(data, 9)
        assert _decode(coding, [sent[i:i + 1] for i in range(len(sent))], 1 << 20) == data


@pytest.mark.parametrize("shape", ["gzip", "deflate (zlib, RFC 1950)", "deflate (raw, RFC 1951)"])
def test_a_bomb_is_refused_having_allocated_little_more_than_the_limit(shape: str) -> None:
    """64 MiB of zeros is 64 KiB of gzip: fed in network-sized chunks, the decoder stops
    at the limit; tracemalloc sees every bytes object zlib hands back."""
    coding, compress = SHAPES[shape]
    limit = 1 << 20
    sent = compress(bytes(64 << 20), 9)
    assert len(sent) < 100_000
    body = LimitedBody(content_coding([coding]), limit)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge, match=f"HARVESTER_MAX_BODY_BYTES={limit} once decoded"):
            _feed_all(body, _split(sent, list(range(0, len(sent), 64 * 1024))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit + 256 * 1024, peak
    assert body.size == limit + 1
