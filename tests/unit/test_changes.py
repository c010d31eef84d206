"""The change feed's cursor and its lines, without a database (README "Querying the
mirror")."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.commands.changes import check_arguments, render_change
from harvester.errors import UserError
from harvester.store.changes import BadCursor, Change, Cursor

XIDS = st.integers(min_value=0, max_value=2**64 - 1)


@given(XIDS, st.uuids())
def test_a_cursor_reads_back_as_it_was_printed(xid: int, job_id: uuid.UUID) -> None:
    cursor = Cursor(xid, job_id)
    assert Cursor.parse(str(cursor)) == cursor


@given(XIDS, st.uuids(), XIDS, st.uuids())
def test_cursors_order_as_the_database_does(a: int, ja: uuid.UUID, b: int, jb: uuid.UUID
                                            ) -> None:
    """PostgreSQL orders uuids by their bytes: so do these cursors."""
    assert (Cursor(a, ja) < Cursor(b, jb)) == ((a, ja.bytes) < (b, jb.bytes))


@pytest.mark.parametrize("text", [
    "", "1", "/", "1/", "-1/00000000-0000-0000-0000-000000000000",
    f"{2**64}/00000000-0000-0000-0000-000000000000",
    "1/00000000-0000-0000-0000-00000000000G", "1/00000000000000000000000000000000",
    "1/00000000-0000-0000-0000-000000000000\n", " 1/00000000-0000-0000-0000-000000000000",
    "1/00000000-0000-0000-0000-000000000000/2",
])
def test_what_the_feed_never_printed_is_not_a_cursor(text: str) -> None:
    with pytest.raises(BadCursor):
        Cursor.parse(text)
    with pytest.raises(UserError, match=r"^--after: not a cursor"):
        check_arguments(text, 10)


@pytest.mark.parametrize("limit", [0, -1, 10_001])
def test_a_page_is_1_to_10000_rows(limit: int) -> None:
    with pytest.raises(UserError, match=r"^--limit: 1 to 10,000"):
        check_arguments(None, limit)
    check_arguments(None, 10_000)


@given(st.dictionaries(st.text(min_size=1).filter(lambda k: k not in
                                                  ("cursor", "job_id", "deleted")),
                       st.none() | st.integers() | st.text() | st.floats(allow_nan=False),
                       min_size=1))
def test_a_line_is_the_cursor_then_the_rows_columns(columns: dict[str, object]) -> None:
    job = uuid.uuid4()
    change = Change(f"7/{job}", job, False, json.dumps(columns))
    line = render_change(change)
    assert "\n" not in line
    assert json.loads(line) == {"cursor": f"7/{job}", "job_id": str(job), "deleted": False,
                                **columns}


def test_a_deleted_row_is_its_cursor_and_job_id() -> None:
    job = uuid.uuid4()
    assert json.loads(render_change(Change(f"9/{job}", job, True, None))) == {
        "cursor": f"9/{job}", "job_id": str(job), "deleted": True}
