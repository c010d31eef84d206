"""Feeding validation, from text and bytes to job IDs or refusals; no database."""

from __future__ import annotations

import io
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.feed import (
    MAX_LINE_BYTES,
    SHOW_LIMIT,
    BadInput,
    Entry,
    InvalidJobId,
    classify_arguments,
    classify_lines,
    parse_job_id,
    read_lines,
    shorten_for_display,
)

JOB = uuid.UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301")


def lines(data: bytes) -> list[Entry]:
    return list(classify_lines(io.BytesIO(data)))


def bad(data: bytes) -> list[str]:
    return [str(e.bad) for e in lines(data) if e.bad is not None]


def good(data: bytes) -> list[uuid.UUID | None]:
    return [e.job_id for e in lines(data) if e.bad is None]


@pytest.mark.parametrize("text", [
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
    "3F2504E0-4f89-11D3-9a0c-0305E82C3301",
    "3f2504e04f8911d39a0c0305e82c3301",
    "  3f2504e0-4f89-11d3-9a0c-0305e82c3301\t\r\n",
    "\u00a03f2504e0-4f89-11d3-9a0c-0305e82c3301\u00a0",
    "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
    "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}",
    "{3f2504e04f8911d39a0c0305e82c3301}",
    "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "URN:UUID:3F2504E0-4F89-11D3-9A0C-0305E82C3301",
    " urn:uuid:3f2504e04f8911d39a0c0305e82c3301 ",
])
def test_any_spelling_of_a_uuid_is_normalised(text: str) -> None:
    assert parse_job_id(text) == JOB
    assert str(parse_job_id(text)) == "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("   ", "empty"),
    ("3f2504e0-4f89-11d3-9a0c-0305e82c330", "not a UUID"),
    ("3f2504e0-4f89-11d3-9a0c-0305e82c330g", "not a UUID"),
    ("{3f2504e0-4f89-11d3-9a0c-0305e82c3301", "not a UUID"),
    ("3f2504e0-4f89-11d3-9a0c-0305e82c3301}", "not a UUID"),
    ("{{3f2504e0-4f89-11d3-9a0c-0305e82c3301}}", "not a UUID"),
    ("{}", "not a UUID"),
    ("urn:uuid:", "not a UUID"),
    ("urn:uuid:{3f2504e0-4f89-11d3-9a0c-0305e82c3301}", "too long for a UUID"),
    ("uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301", "not a UUID"),
    ("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301-extra", "too long for a UUID"),
    ("3f2504e0-4f89-11d3-9a0c-0305e82c3301\x00", "contains a NUL byte"),
    ("3f2504e0 4f89 11d3 9a0c 0305e82c3301", "not a UUID"),
    ("٣f2504e0-4f89-11d3-9a0c-0305e82c3301", "not a UUID"),  # an Arabic-Indic digit
    ("00000000-0000-0000-0000-000000000000", "the nil UUID is not a job ID"),
    ("x" * 10_000, "too long for a UUID"),
])
def test_what_is_not_a_job_id_says_why(text: str, why: str) -> None:
    with pytest.raises(InvalidJobId) as caught:
        parse_job_id(text)
    assert str(caught.value).startswith(why)


@given(st.uuids())
def test_every_uuid_but_nil_round_trips_in_every_spelling(value: uuid.UUID) -> None:
    if value.int == 0:
        return
    for spelling in (str(value), str(value).upper(), value.hex, value.hex.upper(),
                     f"{{{value}}}", value.urn, value.urn.upper()):
        assert parse_job_id(spelling) == value


@given(st.text(max_size=80))
def test_arbitrary_text_is_a_uuid_or_a_reason_never_a_crash(text: str) -> None:
    try:
        parse_job_id(text)
    except InvalidJobId as exc:
        reason = str(exc)
    else:
        reason = "accepted"
    assert reason


def test_display_is_quoted_escaped_and_short() -> None:
    assert shorten_for_display("abc") == '"abc"'
    assert shorten_for_display("a\x00b\tc\x1b[31m") == '"a\\x00b\\tc\\x1b[31m"'
    assert shorten_for_display("caf\udce9") == '"caf\\xe9"'  # a byte that was not UTF-8
    long = shorten_for_display("x" * 10_240)
    assert long == '"' + "x" * SHOW_LIMIT + '…" (10,240 characters)'
    # Escapes are never cut in half and the display stays near the limit.
    escaped = shorten_for_display("\x00" * 1000)
    assert escaped.startswith('"' + "\\x00" * (SHOW_LIMIT // 4) + '…"')
    assert len(escaped) < SHOW_LIMIT + 40


def test_blank_lines_comments_whitespace_and_crlf_are_tolerated() -> None:
    data = (b"# a header comment\r\n"
            b"\r\n"
            b"   \t \r\n"
            b"  3F2504E0-4F89-11D3-9A0C-0305E82C3301  \r\n"
            b"3f2504e04f8911d39a0c0305e82c3302 # trailing comment, caf\xe9 in latin-1\n"
            b"    # indented comment\n"
            b"3f2504e0-4f89-11d3-9a0c-0305e82c3303")  # no newline at the end
    entries = lines(data)
    assert [(e.number, str(e.job_id)) for e in entries] == [
        (4, "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        (5, "3f2504e0-4f89-11d3-9a0c-0305e82c3302"),
        (7, "3f2504e0-4f89-11d3-9a0c-0305e82c3303"),
    ]


def test_a_utf8_byte_order_mark_at_the_start_is_tolerated() -> None:
    assert good(b"\xef\xbb\xbf3f2504e0-4f89-11d3-9a0c-0305e82c3301\r\n") == [JOB]
    assert good(b"\xef\xbb\xbf# comment\n3f2504e0-4f89-11d3-9a0c-0305e82c3301\n") == [JOB]
    # Only at the start of the input: elsewhere it is a stray character.
    assert bad(b"3f2504e0-4f89-11d3-9a0c-0305e82c3301\n\xef\xbb\xbf3f2504e0-4f89-11d3-9a0c-0305e82c3302\n") \
        == ['line 2: not a UUID (expected 8-4-4-4-12 hexadecimal digits): '
            '"\\ufeff3f2504e0-4f89-11d3-9a0c-0305e82c3302"']


def test_each_kind_of_bad_line_is_reported_with_its_number_and_why() -> None:
    data = (b"3f2504e0-4f89-11d3-9a0c-0305e82c3301\n"
            b"hello world\n"
            b"3f2504e0-4f89-11d3-9a0c-0305e82c33\n"
            b"3f2504e0-4f89-11d3-9a0c-\x000305e82c33\n"
            b"\xff\xfe\x00\x81garbage\n"
            b"00000000-0000-0000-0000-000000000000\r\n"
            + b"y" * 10_240 + b"\n")
    assert bad(data) == [
        'line 2: not a UUID (expected 8-4-4-4-12 hexadecimal digits): "hello world"',
        'line 3: not a UUID (expected 8-4-4-4-12 hexadecimal digits): '
        '"3f2504e0-4f89-11d3-9a0c-0305e82c33"',
        'line 4: contains a NUL byte: "3f2504e0-4f89-11d3-9a0c-\\x000305e82c33"',
        'line 5: not valid UTF-8: "\\xff\\xfe\\x00\\x81garbage"',
        'line 6: the nil UUID is not a job ID: "00000000-0000-0000-0000-000000000000"',
        'line 7: too long for a UUID: "' + "y" * SHOW_LIMIT + '…" (10,240 bytes)',
    ]
    assert good(data) == [JOB]


def test_binary_garbage_is_reported_line_by_line_without_raw_bytes() -> None:
    data = bytes(range(256)) * 4
    reports = bad(data)
    assert reports  # every line of it is bad
    for report in reports:
        assert report.isprintable()
        assert len(report) < 200


def test_a_utf16_file_is_named_as_such() -> None:
    data = "3f2504e0-4f89-11d3-9a0c-0305e82c3301\n".encode("utf-16")
    assert bad(data)[0].startswith("line 1: UTF-16 text; save the file as UTF-8: ")


def test_an_absurdly_long_line_is_never_held_whole() -> None:
    size = MAX_LINE_BYTES * 20 + 17
    data = b"z" * size + b"\r\n3f2504e0-4f89-11d3-9a0c-0305e82c3301\n"
    raw = list(read_lines(io.BytesIO(data)))
    assert [(r.number, r.length) for r in raw] == [(1, size), (2, 37)]
    assert len(raw[0].data) <= MAX_LINE_BYTES
    assert bad(data) == [f'line 1: too long for a UUID: "{"z" * SHOW_LIMIT}…" ({size:,} bytes)']
    assert good(data) == [JOB]


def test_reading_is_lazy() -> None:
    """Entries come out as lines go in: nothing is read ahead of the consumer."""
    stream = io.BytesIO(b"3f2504e0-4f89-11d3-9a0c-0305e82c3301\n" * 100)
    entries = classify_lines(stream)
    next(entries)
    assert stream.tell() == 37


def test_arguments_are_numbered_as_arguments_and_not_comment_stripped() -> None:
    entries = list(classify_arguments(
        ["3f2504e0-4f89-11d3-9a0c-0305e82c3301", "", "# nope", "nope\nnope", "caf\udce9"]))
    assert entries[0] == Entry(1, JOB, None)
    assert [e.bad for e in entries[1:]] == [
        BadInput("argument", 2, "empty", '""'),
        BadInput("argument", 3, "not a UUID (expected 8-4-4-4-12 hexadecimal digits)",
                 '"# nope"'),
        BadInput("argument", 4, "not a UUID (expected 8-4-4-4-12 hexadecimal digits)",
                 '"nope\\nnope"'),
        BadInput("argument", 5, "not a UUID (expected 8-4-4-4-12 hexadecimal digits)",
                 '"caf\\xe9"'),
    ]
    assert str(entries[1].bad) == 'argument 2: empty: ""'
