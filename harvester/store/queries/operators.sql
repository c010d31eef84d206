-- The operators' reads and writes (harvester.store.operators): feeding, requeue,
-- acknowledging stuck records, pages of jobs, one job. Every list is bounded and walks
-- an index in its order (README "Commands", "Operating").

-- enqueue --
-- ON CONFLICT DO NOTHING without a conflict target: naming (job_id) would need SELECT
-- on the column, and feeding needs only USAGE on the schema and INSERT on
-- harvester.jobs, whatever the path (README "Feeding jobs").
WITH inserted AS (
    INSERT INTO harvester.jobs (job_id)
    SELECT unnest($1::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted

-- requeue --
-- {where} is a Selection's, or the job IDs in $1. requeued_at is also what makes the
-- claim poll a job for real although its row is in the mirror (queue.sql, claim).
WITH requeued AS (
    UPDATE harvester.jobs AS j
       SET state = 'pending', next_poll_at = now(), requeued_at = now(),
           updated_at = now(), attempt = 0, consecutive_500s = 0, consecutive_403s = 0,
           failed_reason = NULL, leased_until = NULL, leased_by = NULL,
           lease_seq = j.lease_seq + 1, next_step = 'status', status_since = NULL,
           finished_seen_at = NULL
     WHERE {where}
    RETURNING 1
)
SELECT count(*) FROM requeued

-- requeue_dry_run --
SELECT count(*) FROM harvester.jobs AS j WHERE {where}

-- requeue_named --
-- Before a requeue by ID: which IDs had landed, which are nowhere.
SELECT u.job_id, j.state, e.job_id IS NOT NULL AS mirrored
  FROM unnest($1::uuid[]) AS u(job_id)
  LEFT JOIN harvester.jobs j USING (job_id)
  LEFT JOIN harvester.extraction_results e USING (job_id)
 WHERE j.job_id IS NULL OR j.state = 'landed'
 ORDER BY u.job_id

-- revive --
-- A job whose queue row retention deleted but whose row is in the mirror is requeued
-- by putting its row back, marked requeued.
WITH revived AS (
    INSERT INTO harvester.jobs (job_id, requeued_at)
    SELECT e.job_id, now()
      FROM harvester.extraction_results AS e
     WHERE e.job_id = ANY($1::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM revived

-- notify_fed --
SELECT pg_notify($1, '')

-- acknowledge_stuck --
WITH acked AS (
    UPDATE harvester.stuck_jobs AS s
       SET resolved_at = now(), resolution = 'acknowledged',
           resolved_by = $2, resolution_note = $3
     WHERE s.job_id = ANY($1::uuid[]) AND {open_stuck}
    RETURNING s.job_id
)
SELECT u.job_id, a.job_id IS NOT NULL AS acked, j.job_id IS NOT NULL AS known,
       s.job_id IS NOT NULL AS was_stuck, s.resolution, s.resolved_by
  FROM unnest($1::uuid[]) AS u(job_id)
  LEFT JOIN acked a USING (job_id)
  LEFT JOIN harvester.jobs j USING (job_id)
  LEFT JOIN harvester.stuck_jobs s USING (job_id)
 ORDER BY u.job_id

-- stuck_records --
-- {where} and {order}: open, resolved or all (harvester.store.operators.STUCK_LISTS).
SELECT s.job_id, s.first_seen_at, s.last_seen_at, s.times_seen, s.last_status,
       s.last_body,
       extract(epoch FROM coalesce(s.resolved_at, now()) - s.first_seen_at
               )::float8 AS open_for_seconds,
       j.state, j.next_poll_at, s.resolved_at, s.resolution, s.resolved_by,
       s.resolution_note
  FROM harvester.stuck_jobs s
  JOIN harvester.jobs j USING (job_id)
 WHERE {where}
 ORDER BY {order}
 LIMIT $1

-- stuck_count --
SELECT count(*) FROM harvester.stuck_jobs s WHERE {where}

-- list_jobs --
-- One page of jobs in a state, one row more than asked for (to know whether a next
-- page exists); {where} and {order} from list_jobs_sql.
SELECT j.job_id, j.state, j.enqueued_at, j.requeued_at, j.updated_at,
       j.next_poll_at, j.polls, j.last_status, j.last_error, j.failed_reason,
       j.upstream_status, j.status_checked_at, j.next_step, j.landed_at,
       j.leased_until
  FROM harvester.jobs AS j
 WHERE {where}
 ORDER BY {order}
 LIMIT $1

-- job --
-- {job_columns}: JOB_COLUMNS of harvester.store.operators.
SELECT {job_columns} FROM harvester.jobs WHERE job_id = $1

-- job_harvested --
SELECT harvested_at FROM harvester.extraction_results WHERE job_id = $1

-- job_result --
-- payload shown is the whole body as received (README "Querying the mirror": the
-- column keeps what the typed columns do not hold, harvester.result_body puts it back).
SELECT id, org_id, domain, schema_id, data_type, normalized, raw_blob_key,
       quality_completeness, quality_validation, quality_composite, latency_ms,
       delivered_at, created_at,
       harvester.result_body(payload, job_id, id, org_id, domain, schema_id, data_type,
                             normalized, raw_blob_key, latency_ms) AS payload,
       harvested_at
  FROM harvester.extraction_results WHERE job_id = $1

-- job_stuck --
SELECT first_seen_at, last_seen_at, times_seen, last_status, resolved_at,
       resolution, resolved_by, resolution_note
  FROM harvester.stuck_jobs WHERE job_id = $1

-- ping --
SELECT 1

-- durable --
-- Feeding and requeue must never be lost: their transactions wait for the WAL to reach
-- disk even on the daemon's pool, whose commits otherwise do not (connect.py,
-- create_pool's wait_for_flush).
SET LOCAL synchronous_commit TO on
