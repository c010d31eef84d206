"""The change feed (README "Querying the mirror"): rows in the order of the transactions
that wrote them, never past one still open, each once after a cursor; a changed row
again, a deleted one as a tombstone; the command and the follower over the same feed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

import asyncpg
import pytest

from harvester.store import Connection
from harvester.store.changes import Change, Cursor, follow_changes, read_changes
from tests.helpers import login_role, wait_until
from tests.integration.conftest import Cli
from tests.stores import Store

INSERT = """
INSERT INTO harvester.extraction_results
       (job_id, id, org_id, domain, data_type, normalized, quality_completeness,
        quality_validation, quality_composite, created_at, payload)
SELECT j, gen_random_uuid(), gen_random_uuid(), 'changes.example', 'product', '{}', 1, 1, 1,
       now(), jsonb_build_object('jobId', j)
  FROM unnest($1::uuid[]) AS j
"""


async def land(conn: asyncpg.Pool | Connection, ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(INSERT, list(ids))


async def feed(pool: asyncpg.Pool, after: str | None = None, limit: int = 10_000
               ) -> list[Change]:
    async with pool.acquire() as conn:
        return await read_changes(conn, after, limit)


def ordered(changes: Sequence[Change]) -> bool:
    keys = [Cursor.parse(c.cursor) for c in changes]
    return keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_a_transaction_still_open_holds_back_every_row_written_after_it(
    pool: asyncpg.Pool
) -> None:
    """The case a look-back by time misses: a writer that began first commits last."""
    slow, fast = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await land(writer, [slow])  # takes its xid now
        await land(pool, [fast])  # a later xid, committed at once
        try:
            seen = {c.job_id for c in await feed(pool)}
            assert fast not in seen and slow not in seen
        finally:
            await tx.commit()

    async def both() -> bool:
        return len(await feed(pool)) == 2

    # Any transaction open on the server holds the horizon back: wait, do not assume.
    await wait_until(both, 60, "the rows once the slow writer committed")
    changes = await feed(pool)
    assert [c.job_id for c in changes] == [slow, fast]
    assert ordered(changes)


async def test_pages_after_a_cursor_give_every_row_once_in_order(pool: asyncpg.Pool) -> None:
    batches = [[uuid.uuid4() for _ in range(7)] for _ in range(5)]
    for batch in batches:
        await land(pool, batch)
    everything = {j for batch in batches for j in batch}

    async def all_visible() -> bool:
        return len(await feed(pool)) == len(everything)

    await wait_until(all_visible, 60, "every row below the horizon")
    pages: list[Change] = []
    after: str | None = None

    async def next_page() -> bool:
        # As a consumer reads: a page may come back empty for a moment with rows after
        # the cursor (a transaction of another database that ended between the
        # snapshot and the read of pg_stat_activity holds the horizon back; the
        # horizon waits too long, never too little), so an empty page is asked again.
        nonlocal after
        page = await feed(pool, after, limit=4)
        assert len(page) <= 4
        pages.extend(page)
        if page:
            after = page[-1].cursor
        return len(pages) >= len(everything)

    await wait_until(next_page, 60, "every row, four at a time")
    assert await feed(pool, after, limit=4) == []
    assert [c.job_id for c in pages] == [c.job_id for c in await feed(pool)]
    assert {c.job_id for c in pages} == everything and len(pages) == len(everything)
    assert ordered(pages)
    # A row's columns are all there, as JSON.
    body = json.loads(pages[0].body or "{}")
    assert body["domain"] == "changes.example" and "changed_xid" not in body
    # Rows of one transaction come together, in job_id order.
    first = [c.job_id for c in pages[:7]]
    assert first == sorted(batches[0])


async def test_a_changed_row_comes_again_after_the_cursor(pool: asyncpg.Pool) -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    await land(pool, [job, other])

    async def visible() -> bool:
        return len(await feed(pool)) == 2

    await wait_until(visible, 60, "the rows")
    cursor = (await feed(pool))[-1].cursor
    assert await feed(pool, cursor) == []
    # Any writer, even one that does not name changed_xid, moves the row (a trigger).
    await pool.execute("UPDATE harvester.extraction_results SET domain = 'moved.example' "
                       "WHERE job_id = $1", job)

    async def again() -> bool:
        return len(await feed(pool, cursor)) == 1

    await wait_until(again, 60, "the changed row")
    (changed,) = await feed(pool, cursor)
    assert changed.job_id == job and Cursor.parse(changed.cursor) > Cursor.parse(cursor)
    assert json.loads(changed.body or "{}")["domain"] == "moved.example"
    # From the start, the row comes once, where it now stands.
    assert [c.job_id for c in await feed(pool)] == [other, job]


async def test_rows_deleted_by_retention_come_as_tombstones(pool: asyncpg.Pool) -> None:
    kept, doomed = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
    await land(pool, doomed)
    await pool.execute("UPDATE harvester.extraction_results SET harvested_at = now() - "
                       "interval '2 days'")
    await land(pool, [kept])

    async def visible() -> bool:
        return len(await feed(pool)) == 4

    await wait_until(visible, 60, "the rows")
    cursor = (await feed(pool))[-1].cursor
    async with Store(pool).purging() as session:
        assert session is not None
        assert await session.purge_results(86400.0, 1000) == 3
    (deletion,) = await pool.fetch("SELECT job_ids FROM harvester.mirror_deletions")
    assert deletion["job_ids"] == sorted(doomed)

    async def tombstones() -> bool:
        return len(await feed(pool, cursor)) == 3

    await wait_until(tombstones, 60, "the tombstones")
    gone = await feed(pool, cursor)
    assert [(c.job_id, c.deleted, c.body) for c in gone] == [(j, True, None)
                                                            for j in sorted(doomed)]
    # A job landed again after its row was deleted comes after its tombstone.
    await land(pool, [doomed[0]])

    async def back() -> bool:
        return len(await feed(pool, cursor)) == 4

    await wait_until(back, 60, "the row landed again")
    changes = await feed(pool, cursor)
    assert [(c.job_id, c.deleted) for c in changes][-1] == (doomed[0], False)
    assert ordered(changes)
    # From the start: the rows kept as they are now, the deletions (none hides a row).
    assert sorted((c.job_id, c.deleted) for c in await feed(pool)) == sorted(
        [(kept, False), (doomed[0], False), (doomed[0], True), (doomed[1], True),
         (doomed[2], True)])


async def test_the_sql_function_refuses_what_is_not_a_cursor(pool: asyncpg.Pool) -> None:
    for bad in ("", "12", "x/00000000-0000-0000-0000-000000000000", "1/not-a-uuid",
                "1/00000000-0000-0000-0000-000000000000; DROP TABLE x"):
        with pytest.raises(asyncpg.InvalidParameterValueError, match="not a change feed cursor"):
            await pool.fetch("SELECT * FROM harvester.changes_after($1, 10)", bad)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="limit"):
        await pool.fetch("SELECT * FROM harvester.changes_after(NULL, 0)")
    # What SQL consumers write: the row's columns from the composite.
    await land(pool, [uuid.uuid4()])

    async def visible() -> bool:
        return bool(await pool.fetch(
            "SELECT cursor, (result).domain FROM harvester.changes_after(NULL, 10)"))

    await wait_until(visible, 60, "the row")


async def test_the_command_prints_json_lines_and_resumes_after_a_cursor(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    await land(pool, ids)

    async def visible() -> bool:
        return len(await feed(pool)) == 5

    await wait_until(visible, 60, "the rows")
    first = await cli("changes", "--limit", "3")
    assert first.status == 0, first.err
    lines = [json.loads(line) for line in first.out.splitlines()]
    assert len(lines) == 3
    assert list(lines[0])[:3] == ["cursor", "job_id", "deleted"]
    assert lines[0]["deleted"] is False and lines[0]["domain"] == "changes.example"
    rest = await cli("changes", "--after", lines[-1]["cursor"])
    assert rest.status == 0, rest.err
    more = [json.loads(line) for line in rest.out.splitlines()]
    assert [x["job_id"] for x in lines + more] == sorted(str(j) for j in ids)
    for args, message in ((("--after", "junk"), "--after: not a cursor"),
                          (("--after", f"{2**64}/{ids[0]}"), "--after: not a cursor"),
                          (("--limit", "0"), "--limit: 1 to 10,000")):
        bad = await cli("changes", *args)
        assert bad.status == 2 and bad.out == ""
        assert len(bad.err_lines) == 1 and message in bad.err, bad.err


async def test_following_survives_a_dropped_connection_without_gaps_or_repeats(
    db_url: str, pool: asyncpg.Pool
) -> None:
    got: list[Change] = []
    task = asyncio.create_task(follow_changes(db_url, None, 4, got.extend, poll=0.2))

    async def backend() -> int | None:
        pid: int | None = await pool.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'harvester-changes' "
            "AND datname = current_database()")
        return pid

    async def have(count: int) -> bool:
        return len(got) >= count

    try:
        await wait_until(lambda: _is_set(backend()), 30, "the follower to connect")
        first = [uuid.uuid4() for _ in range(10)]
        await land(pool, first)
        await wait_until(lambda: have(10), 60, "the first rows")
        pid = await backend()
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        second = [uuid.uuid4() for _ in range(10)]
        await land(pool, second)
        await wait_until(lambda: have(20), 60, "the rows landed while it reconnected")
        assert not task.done()
        assert await backend() not in (None, pid)
        assert [c.job_id for c in got] == sorted(first) + sorted(second)
        assert ordered(got)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _is_set(value: object) -> bool:
    return (await value) is not None  # type: ignore[misc]


async def test_a_transaction_open_in_another_database_holds_nothing_back(
    pg_server_url: str, pool: asyncpg.Pool
) -> None:
    """The snapshot lists every database's transactions; only this one's can write here."""
    elsewhere = await asyncpg.connect(pg_server_url)
    try:
        tx = elsewhere.transaction()
        await tx.start()
        await elsewhere.fetchval("SELECT pg_current_xact_id()")  # holds an xid, open
        job = uuid.uuid4()
        await land(pool, [job])

        async def visible() -> bool:
            return [c.job_id for c in await feed(pool)] == [job]

        await wait_until(visible, 60, "the row, past the other database's transaction")
        assert await pool.fetchval(
            "SELECT $1::xid8 = ANY (SELECT pg_snapshot_xip(pg_current_snapshot()))",
            await elsewhere.fetchval("SELECT pg_current_xact_id()"))
        await tx.rollback()
    finally:
        await elsewhere.close()


async def test_the_daemons_role_leaves_tombstones_and_a_reader_reads_the_feed(
    db_url: str, pool: asyncpg.Pool
) -> None:
    """deploy/runtime-role.sql's rights (DELETE on the mirror, nothing on the tombstones)
    are enough to purge; deploy/readonly-role.sql's (SELECT) to read the feed."""
    doomed = [uuid.uuid4() for _ in range(2)]
    await land(pool, doomed)
    purger_grants = ("GRANT USAGE ON SCHEMA harvester TO {role}",
                     "GRANT SELECT, DELETE ON harvester.extraction_results TO {role}")
    reader_grants = ("GRANT USAGE ON SCHEMA harvester TO {role}",
                     "GRANT SELECT ON ALL TABLES IN SCHEMA harvester TO {role}")
    async with login_role(db_url, *purger_grants) as (_role, dsn):
        purger = await asyncpg.connect(dsn)
        try:
            await purger.execute("DELETE FROM harvester.extraction_results")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await purger.execute("DELETE FROM harvester.mirror_deletions")
        finally:
            await purger.close()
    async with login_role(db_url, *reader_grants) as (_role, dsn):
        reader = await asyncpg.connect(dsn)
        try:
            async def tombstones() -> bool:
                return len(await read_changes(reader, None, 10)) == 2

            await wait_until(tombstones, 60, "the tombstones, read by a reader")
            assert all(c.deleted for c in await read_changes(reader, None, 10))
        finally:
            await reader.close()


async def test_the_feed_reads_by_its_index_on_a_large_mirror(db_url: str, pool: asyncpg.Pool
                                                             ) -> None:
    """The function's own statement, as the server plans it inside the function
    (auto_explain's nested plans, sent to this session as notices), walks the
    (changed_xid, job_id) index rather than the 50,000 rows."""
    await pool.execute(
        """
        INSERT INTO harvester.extraction_results
               (job_id, id, org_id, domain, data_type, normalized, quality_completeness,
                quality_validation, quality_composite, created_at, payload)
        SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'd', 't', '{}', 1, 1,
               1, now(), '{}'
          FROM generate_series(1, 50000)
        """)
    await pool.execute("ANALYZE harvester.extraction_results")
    notices: list[str] = []
    conn = await asyncpg.connect(db_url)  # its own session: auto_explain stays with it
    conn.add_log_listener(lambda _conn, message: notices.append(str(message)))
    try:
        try:
            await conn.execute("LOAD 'auto_explain'")
        except asyncpg.UndefinedFileError:
            # The embedded server (pgserver) ships without contrib's auto_explain; CI
            # runs this file against the machine's PostgreSQL too, which has it.
            pytest.skip("this PostgreSQL has no auto_explain module")
        for setting in ("log_min_duration = 0", "log_nested_statements = on",
                        "log_level = notice"):
            await conn.execute(f"SET auto_explain.{setting}")
        middle = await conn.fetchval(
            "SELECT changed_xid::text || '/' || job_id FROM harvester.extraction_results "
            "ORDER BY changed_xid, job_id OFFSET 25000 LIMIT 1")
        for after in (None, middle):
            notices.clear()
            await conn.fetch("SELECT * FROM harvester.changes_after($1, 100)", after)
            nested = [n for n in notices if "extraction_results" in n and "Query Text" in n
                      and "WITH kept" in n]
            assert nested, notices
            assert "Index Scan using extraction_results_changed_idx" in nested[0], nested[0]
            assert "Seq Scan on extraction_results" not in nested[0], nested[0]
    finally:
        await conn.close()
