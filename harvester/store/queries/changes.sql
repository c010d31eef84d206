-- The change feed over the mirror (harvester.store.changes), README "Querying the
-- mirror". The order, the horizon and the tombstones are harvester.changes_after's
-- (sql/006_change_feed.sql), which SQL consumers call themselves.

-- changes_after --
-- One page after a cursor ($1, NULL: from the first row kept), at most $2 entries. The
-- row's columns as one JSON object, built by the server: the feed prints it as it
-- comes, whatever columns later versions add. changed_xid is in the cursor already;
-- payload is the whole body as received (harvester.result_body), not the part the typed
-- columns do not hold that the table stores since schema version 5.
SELECT c.cursor, c.job_id, c.deleted,
       CASE WHEN c.deleted THEN NULL
            ELSE jsonb_set(to_jsonb(c.result) - 'changed_xid' - 'job_id', ARRAY['payload'],
                           harvester.result_body((c.result).payload, c.job_id,
                                                 (c.result).id, (c.result).org_id,
                                                 (c.result).domain, (c.result).schema_id,
                                                 (c.result).data_type, (c.result).normalized,
                                                 (c.result).raw_blob_key,
                                                 (c.result).latency_ms))::text
       END AS body
  FROM harvester.changes_after($1, $2) AS c
