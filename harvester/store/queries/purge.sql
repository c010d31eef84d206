-- The retention purge (harvester.store.purge), README "Retention".

-- purge_lock --
-- A session lock held for a whole run: one replica purges at a time.
SELECT pg_try_advisory_lock($1)

-- purge_unlock --
SELECT pg_advisory_unlock($1)

-- purge_finished --
-- One batch of the purge: one statement, so one short transaction. Finished jobs are
-- walked oldest first through partial indexes that already exist: landed jobs by
-- landed_at, failed jobs by updated_at (nothing updates a failed row but requeue,
-- which reopens it). A failed job whose stuck record is still open keeps its row; the
-- foreign key takes a closed stuck record with its job. SKIP LOCKED: the purge waits
-- for nobody; claims and writes only lock open jobs, so they never wait for it
-- either. The rows are deleted by primary key from an array, not through a join, so
-- the plan is the same on a small table as on a large one.
WITH landed AS MATERIALIZED (
    SELECT job_id
      FROM harvester.jobs AS j
     WHERE state = 'landed'
       AND landed_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                        WHERE s.job_id = j.job_id AND {open_stuck})
     ORDER BY landed_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), failed AS MATERIALIZED (
    SELECT job_id
      FROM harvester.jobs AS j
     WHERE state = 'failed'
       AND updated_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                        WHERE s.job_id = j.job_id AND {open_stuck})
     ORDER BY updated_at
     LIMIT $2 - (SELECT count(*) FROM landed)
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM harvester.jobs
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM landed UNION ALL SELECT job_id FROM failed))
    RETURNING 1
)
SELECT count(*) FROM deleted

-- purge_results --
WITH doomed AS MATERIALIZED (
    SELECT job_id
      FROM harvester.extraction_results
     WHERE harvested_at < now() - make_interval(secs => $1)
     ORDER BY harvested_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM harvester.extraction_results
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM doomed))
    RETURNING 1
)
SELECT count(*) FROM deleted
