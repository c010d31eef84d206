-- The change feed over the mirror (harvester.store.changes), README "Querying the
-- mirror". The order, the horizon and the tombstones are harvester.changes_after's
-- (sql/006_change_feed.sql), which SQL consumers call themselves.

-- changes_after --
-- One page after a cursor ($1, NULL: from the first row kept), at most $2 entries. The
-- row's columns as one JSON object, built by the server: the feed prints it as it
-- comes, whatever columns later versions add. changed_xid is in the cursor already.
SELECT c.cursor, c.job_id, c.deleted,
       CASE WHEN c.deleted THEN NULL
            ELSE (to_jsonb(c.result) - 'changed_xid' - 'job_id')::text END AS body
  FROM harvester.changes_after($1, $2) AS c
