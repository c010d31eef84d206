-- harvester schema, version 6: a change feed over the mirror (README "Querying the
-- mirror", "New rows as they land").
--
-- Each mirror row records the id of the transaction that last wrote it (changed_xid,
-- xid8: 64 bits, never wraps). A consumer reads rows in (changed_xid, job_id) order
-- after its cursor, and only below the oldest transaction still running that could
-- write here (from the reading statement's snapshot): every transaction below it has
-- ended, so no row can still appear behind a cursor handed out. Rows written
-- before this version read as xid 0 and come first, in job_id order.
--
-- Additive only: a daemon of an earlier version
-- keeps running on this schema during a rolling upgrade (its INSERT names its columns; the
-- default fills changed_xid), and the new column, table, trigger and function name
-- no other column of the mirror. ADD COLUMN with a constant default changes the catalog
-- only (PostgreSQL 11+): no rewrite of the mirror, whatever its size; the default then
-- becomes the writing transaction's id for rows written from now on. The index is
-- built inside this migration's transaction, under the ADD COLUMN's lock: on a large
-- mirror the landing of rows waits for it (README "Upgrades").
--
-- A new table, harvester.mirror_deletions: run deploy/readonly-role.sql again so that
-- readers may read the feed's tombstones. The daemons' role needs nothing new (the
-- trigger that fills it writes with its owner's rights).

ALTER TABLE harvester.extraction_results
    ADD COLUMN changed_xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE harvester.extraction_results
    ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id();

CREATE INDEX extraction_results_changed_idx
    ON harvester.extraction_results (changed_xid, job_id);

COMMENT ON COLUMN harvester.extraction_results.changed_xid IS
    'The id of the transaction that inserted this row or last changed it (0: before schema version 6). The change feed''s order: harvester.changes_after(cursor, limit).';

-- A rewrite by any writer moves the row in the feed, even one that does not name the
-- column (a daemon of the previous version during an upgrade, a hand-made UPDATE).
-- Only updates fire it, and the daemon updates a mirror row only when upstream's row
-- changed: landing, the common case, pays nothing for it.
CREATE FUNCTION harvester.mirror_row_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;

-- Only when the body changes (schema version 5's harvester.result_body, the body as
-- received): `harvester mirror compact` rewrites how an old row is stored, not what it
-- says, and must not hand every compacted row to consumers again.
CREATE TRIGGER extraction_results_changed
    BEFORE UPDATE ON harvester.extraction_results
    FOR EACH ROW
    WHEN (harvester.result_body(OLD.payload, OLD.job_id, OLD.id, OLD.org_id, OLD.domain,
                                OLD.schema_id, OLD.data_type, OLD.normalized,
                                OLD.raw_blob_key, OLD.latency_ms)
          IS DISTINCT FROM
          harvester.result_body(NEW.payload, NEW.job_id, NEW.id, NEW.org_id, NEW.domain,
                                NEW.schema_id, NEW.data_type, NEW.normalized,
                                NEW.raw_blob_key, NEW.latency_ms))
    EXECUTE FUNCTION harvester.mirror_row_changed();

-- Deletions (retention, or by hand) are tombstones in the same cursor space: one row per
-- deleting statement, with the job_ids it deleted, written by a statement-level trigger
-- from its transition table. One small insert per purge batch of up to 1,000 rows
-- (16 bytes a deleted row) rather than one per row; SECURITY DEFINER so that a role
-- allowed to delete from the mirror (the daemon's) needs no right on this table.
CREATE TABLE harvester.mirror_deletions (
    changed_xid xid8        NOT NULL DEFAULT pg_current_xact_id(),
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    job_ids     uuid[]      NOT NULL
);

CREATE INDEX mirror_deletions_changed_idx ON harvester.mirror_deletions (changed_xid);

COMMENT ON TABLE harvester.mirror_deletions IS
    'Tombstones of the change feed: the job_ids each statement deleted from the mirror, under the deleting transaction''s id. Kept until an operator deletes them (README "Retention").';

CREATE FUNCTION harvester.record_mirror_deletions() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO harvester.mirror_deletions (job_ids)
    SELECT array_agg(job_id ORDER BY job_id) FROM gone HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER extraction_results_deleted
    AFTER DELETE ON harvester.extraction_results
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION harvester.record_mirror_deletions();

-- The feed for SQL consumers. cursor is '<xid>/<job_id>' (opaque to consumers: pass
-- back what a row gave); NULL starts from the first row kept. Rows and tombstones come
-- in (changed_xid, job_id) order below the horizon; a row written again in the same
-- transaction that deleted it comes as the row. The horizon is read from the
-- statement's own snapshot (a STABLE function runs on its caller's), so a row below it
-- is visible to this very read. The snapshot lists the transactions running in every
-- database of the server; one seen in pg_stat_activity as another database's cannot
-- write here (a session writes only in its own database), so it does not hold this
-- feed back. Any other (ended since, prepared, hidden from this role) does: the horizon
-- may wait too long, never too little. The reader's own transaction holds it back too,
-- so a transaction that writes the mirror and reads the feed never hands out its own
-- uncommitted rows. One statement serves both cases: the (changed_xid, job_id) index
-- is walked from the cursor (cx, cj) on, and the cursor's own row is left out
-- (strictly); from the start, (0, nil) with nothing left out lets even a row at
-- (0, nil) in. Written as >= and <>, not as a three-member row comparison, which the
-- planner estimates at one row and reads by a sequential scan
-- (tests/integration/test_changes.py reads the plan of this very statement, on a
-- mirror of 50,000 rows written by one transaction).
CREATE FUNCTION harvester.changes_after(after text DEFAULT NULL, lim integer DEFAULT 1000)
    RETURNS TABLE (cursor text, job_id uuid, deleted boolean,
                   result harvester.extraction_results)
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    after_xid xid8    := '0';
    after_job uuid    := '00000000-0000-0000-0000-000000000000';
    strictly  boolean := false;
    snap      pg_snapshot := pg_current_snapshot();
    horizon   xid8;
BEGIN
    SELECT min(x) INTO horizon
      FROM pg_snapshot_xip(snap) AS x
     WHERE NOT EXISTS (
           SELECT 1 FROM pg_stat_get_activity(NULL) AS a
            WHERE a.backend_xid = x::xid
              AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database()));
    horizon := least(horizon, pg_snapshot_xmax(snap), pg_current_xact_id_if_assigned());
    IF after IS NOT NULL THEN
        IF after !~ '^[0-9]{1,20}/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            RAISE EXCEPTION 'not a change feed cursor: %', left(after, 80)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        after_xid := split_part(after, '/', 1)::xid8;
        after_job := split_part(after, '/', 2)::uuid;
        strictly := true;
    END IF;
    IF lim IS NULL OR lim < 1 THEN
        RAISE EXCEPTION 'limit must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH kept AS (
        SELECT e.changed_xid AS xid, e.job_id AS id, false AS gone, e AS body
          FROM harvester.extraction_results AS e
         WHERE (e.changed_xid, e.job_id) >= (after_xid, after_job)
           AND (NOT strictly OR (e.changed_xid, e.job_id) <> (after_xid, after_job))
           AND e.changed_xid < horizon
         ORDER BY e.changed_xid, e.job_id
         LIMIT lim
    ), tombstones AS (
        SELECT d.changed_xid AS xid, t.id, true AS gone,
               NULL::harvester.extraction_results AS body
          FROM harvester.mirror_deletions AS d,
               unnest(d.job_ids) AS t(id)
         WHERE d.changed_xid >= after_xid
           AND d.changed_xid < horizon
           AND (d.changed_xid, t.id) >= (after_xid, after_job)
           AND (NOT strictly OR (d.changed_xid, t.id) <> (after_xid, after_job))
           AND NOT EXISTS (SELECT 1 FROM harvester.extraction_results AS e
                            WHERE e.job_id = t.id AND e.changed_xid = d.changed_xid)
         ORDER BY d.changed_xid, t.id
         LIMIT lim
    )
    SELECT c.xid::text || '/' || c.id::text, c.id, c.gone, c.body
      FROM (SELECT * FROM kept UNION ALL SELECT * FROM tombstones) AS c
     ORDER BY c.xid, c.id
     LIMIT lim;
END
$$;

COMMENT ON FUNCTION harvester.changes_after(text, integer) IS
    'The change feed: up to lim mirror rows (and deletions) after cursor, in (writing transaction, job_id) order, each with the cursor to resume after it. NULL: from the first row kept. README "Querying the mirror".';
