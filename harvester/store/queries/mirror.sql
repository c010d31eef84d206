-- The mirror's upkeep (harvester.store.mirror), README "Upgrades".

-- compact --
-- One batch of `harvester mirror compact`: the next $2 mirror rows after job_id $1 (the
-- primary key walked in order, so each batch starts where the last ended and the whole
-- pass reads the table once), of which those still holding the whole body (written
-- before schema version 5: `payload ? 'normalized'`) get payload = result_payload(...).
-- The body they give back is the same, so harvested_at stays and nothing is notified.
-- SKIP LOCKED: a row the daemon is writing right now is left to it (it writes the new
-- layout) or to the next pass. One statement, one short transaction: the row locks of
-- one batch, nothing on the table.
WITH batch AS MATERIALIZED (
    SELECT job_id
      FROM harvester.extraction_results
     WHERE job_id > $1
     ORDER BY job_id
     LIMIT $2
), old AS MATERIALIZED (
    SELECT e.job_id
      FROM harvester.extraction_results AS e
     WHERE e.job_id = ANY (ARRAY(SELECT job_id FROM batch))
       AND e.payload ? 'normalized'
       FOR UPDATE OF e SKIP LOCKED
), rewritten AS (
    UPDATE harvester.extraction_results AS e
       SET payload = harvester.result_payload(e.payload, e.job_id, e.id, e.org_id, e.domain,
                                              e.schema_id, e.data_type, e.normalized,
                                              e.raw_blob_key, e.latency_ms)
      FROM old
     WHERE e.job_id = old.job_id
    RETURNING 1
)
SELECT (SELECT job_id FROM batch ORDER BY job_id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM batch) AS scanned,
       (SELECT count(*) FROM rewritten) AS rewritten

