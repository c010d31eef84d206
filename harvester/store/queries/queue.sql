-- The engine's queue (harvester.store.queue): claim, write, release, the heartbeat.
-- {job_columns} and its kin are the unnest(...) lists of harvester.store.queue.Columns.

-- claim --
-- The lease lives in its own columns, not in next_poll_at: a claim then changes no
-- indexed column, so PostgreSQL updates the row in place (a HOT update) without new
-- entries in the due index or the primary key. Jobs in flight stay in the due index
-- and the claim steps over them (at most the jobs in flight across all replicas).
--
-- A job fed again whose row is already in the mirror is not polled again, whichever
-- way it was fed (README "Retention"): the claim lands it at once (``already``) and
-- returns only the others. Checked here, once per due job with a probe of the
-- mirror's primary key, rather than by a trigger on every fed row: a bulk feed stays
-- one plain INSERT, and a feeder needs no right on the mirror. A requeued job
-- (requeued_at set) is polled for real: `harvester requeue ID` asks for exactly that.
-- The top-up claim (CLAIM_SOON_SQL) is made from this statement, so it does the same.
-- Landing it moves it out of the due index, so ``already`` is not a HOT update; the
-- jobs returned still are.
--
-- The probe is a probe whatever the planner thinks of the mirror's size: OFFSET 0 keeps
-- PostgreSQL from turning the EXISTS into a hashed subplan, which reads the whole
-- mirror into a hash table at every claim. It chose that while the mirror was small
-- by its statistics and growing fast (a fresh deployment's bulk landing, between
-- autoanalyze runs): 3.5 ms per claim of 75 jobs with 22,000 rows in the mirror,
-- growing with every row landed, where a hundred probes of the primary key take a
-- fraction of a millisecond (tests/integration/test_statements.py).
WITH due AS MATERIALIZED (
    SELECT job_id,
           state = 'pending' AND requeued_at IS NULL
           AND EXISTS (SELECT 1 FROM harvester.extraction_results AS e
                        WHERE e.job_id = jobs.job_id OFFSET 0) AS mirrored
      FROM harvester.jobs
     WHERE state IN ('pending', 'stuck')
       AND next_poll_at <= now()
       AND (leased_until IS NULL OR leased_until <= now())
     ORDER BY next_poll_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), already AS (
    UPDATE harvester.jobs AS j
       SET state        = 'landed',
           landed_at    = now(),
           next_poll_at = NULL,
           updated_at   = now(),
           leased_until = NULL,
           leased_by    = NULL,
           lease_seq    = j.lease_seq + 1
      FROM due
     WHERE j.job_id = due.job_id
       AND due.mirrored
), closed AS (
    -- Every way a job ends closes its open stuck record, this one too.
    UPDATE harvester.stuck_jobs AS s
       SET resolved_at = now(), resolution = 'landed', resolved_by = 'harvester'
      FROM due
     WHERE s.job_id = due.job_id
       AND due.mirrored
       AND {open_stuck}
)
UPDATE harvester.jobs AS j
   SET leased_until = now() + make_interval(secs => $2),
       leased_by    = $3,
       lease_seq    = j.lease_seq + 1
  FROM due
 WHERE j.job_id = due.job_id
   AND NOT due.mirrored
RETURNING j.job_id, j.state, coalesce(j.requeued_at, j.enqueued_at) AS age_origin,
          j.polls, j.attempt, j.consecutive_500s, j.lease_seq, j.next_step,
          j.upstream_status, j.status_since, j.finished_seen_at, j.consecutive_403s

-- next_due --
SELECT next_poll_at
  FROM harvester.jobs
 WHERE state IN ('pending', 'stuck')
   AND (leased_until IS NULL OR leased_until <= now())
 ORDER BY next_poll_at
 LIMIT 1

-- write --
-- One statement per batch of outcomes: the fenced job update, the mirror upsert, the
-- stuck record and the notifications, atomic and in a single round trip. Only jobs
-- whose lease_seq still matches are written; the mirror and stuck CTEs join on what
-- the fenced update returned. Landing the same row twice changes nothing: the mirror
-- row is only rewritten (and downstream notified) when the body differs. A job that
-- ends (landed, failed, expired) closes its open stuck record, saying how.
WITH u AS (
    SELECT * FROM {job_columns}
), fenced AS (
    UPDATE harvester.jobs AS j
       SET state             = u.state,
           next_poll_at      = CASE WHEN u.state IN ('landed', 'failed') THEN NULL
                                    WHEN u.due_at IS NOT NULL THEN greatest(u.due_at, now())
                                    ELSE now() + make_interval(secs => u.delay) END,
           polls             = j.polls + u.polled,
           last_status       = CASE WHEN u.keep_answer THEN j.last_status ELSE u.status END,
           last_error        = CASE WHEN u.keep_answer THEN j.last_error ELSE u.error END,
           attempt           = u.attempt,
           consecutive_500s  = u.c500,
           consecutive_403s  = u.c403,
           failed_reason     = u.failed_reason,
           next_step         = coalesce(u.step, j.next_step),
           upstream_status   = coalesce(u.seen, j.upstream_status),
           status_checks     = j.status_checks + (u.seen IS NOT NULL)::int,
           status_checked_at = CASE WHEN u.seen IS NULL THEN j.status_checked_at ELSE now() END,
           status_since      = CASE WHEN u.seen IS DISTINCT FROM j.upstream_status
                                     AND u.seen IS NOT NULL THEN now()
                                    ELSE j.status_since END,
           finished_seen_at  = coalesce(j.finished_seen_at,
                                        CASE WHEN u.seen IN ('extraction_done', 'completed')
                                             THEN now() END),
           landed_at         = CASE WHEN u.state = 'landed' THEN now() ELSE j.landed_at END,
           updated_at        = now(),
           leased_until      = NULL,
           leased_by         = NULL
      FROM u
     WHERE j.job_id = u.job_id
       AND j.lease_seq = u.lease_seq
    RETURNING j.job_id, j.state, j.failed_reason
), r AS MATERIALIZED (
    -- Materialized: each body parsed once. Inlined, every use of body below (the
    -- normalized column and result_payload's arguments, itself inlined since schema
    -- version 7) would parse the text again.
    SELECT r.*, r.payload_text::jsonb AS body
      FROM {result_columns}
      JOIN fenced USING (job_id)
), mirrored AS (
    -- Each result stored once (README "Querying the mirror"): payload is the body minus
    -- the keys the typed columns give back exactly (harvester.result_payload, schema
    -- version 5). A row is rewritten only when the body differs, compared whole
    -- (harvester.result_body), so a row written before version 5 (the whole body in
    -- payload) landed again unchanged is left alone too.
    INSERT INTO harvester.extraction_results AS e
           (job_id, id, org_id, domain, schema_id, data_type, normalized, raw_blob_key,
            quality_completeness, quality_validation, quality_composite, latency_ms,
            delivered_at, created_at, payload)
    SELECT job_id, id, org_id, domain, schema_id, data_type, body -> 'normalized',
           raw_blob_key, quality_completeness, quality_validation, quality_composite,
           latency_ms, delivered_at, created_at,
           harvester.result_payload(body, job_id, id, org_id, domain, schema_id, data_type,
                                    body -> 'normalized', raw_blob_key, latency_ms)
      FROM r
    ON CONFLICT (job_id) DO UPDATE
       SET id = excluded.id, org_id = excluded.org_id, domain = excluded.domain,
           schema_id = excluded.schema_id, data_type = excluded.data_type,
           normalized = excluded.normalized, raw_blob_key = excluded.raw_blob_key,
           quality_completeness = excluded.quality_completeness,
           quality_validation = excluded.quality_validation,
           quality_composite = excluded.quality_composite,
           latency_ms = excluded.latency_ms, delivered_at = excluded.delivered_at,
           created_at = excluded.created_at, payload = excluded.payload,
           harvested_at = now()
     WHERE harvester.result_body(e.payload, e.job_id, e.id, e.org_id, e.domain, e.schema_id,
                                 e.data_type, e.normalized, e.raw_blob_key, e.latency_ms)
           IS DISTINCT FROM
           harvester.result_body(excluded.payload, excluded.job_id, excluded.id,
                                 excluded.org_id, excluded.domain, excluded.schema_id,
                                 excluded.data_type, excluded.normalized,
                                 excluded.raw_blob_key, excluded.latency_ms)
    RETURNING job_id
), resolved AS (
    UPDATE harvester.stuck_jobs AS s
       SET resolved_at = now(),
           resolution  = CASE WHEN f.state = 'landed' THEN 'landed'
                              WHEN f.failed_reason = 'expired' THEN 'expired'
                              ELSE 'failed' END,
           resolved_by = 'harvester'
      FROM fenced f
     WHERE s.job_id = f.job_id
       AND f.state IN ('landed', 'failed')
       AND {open_stuck}
    RETURNING s.job_id
), st AS (
    SELECT st.*
      FROM {stuck_columns}
      JOIN fenced USING (job_id)
), stuck AS (
    -- A job that becomes stuck opens (or reopens) its record ...
    INSERT INTO harvester.stuck_jobs AS s (job_id, last_status, last_body)
    SELECT job_id, status, body FROM st WHERE st.newly
    ON CONFLICT (job_id) DO UPDATE
       SET last_seen_at    = now(),
           times_seen      = s.times_seen + 1,
           last_status     = excluded.last_status,
           last_body       = excluded.last_body,
           first_seen_at   = CASE WHEN {open_stuck} THEN s.first_seen_at ELSE now() END,
           resolved_at     = NULL,
           resolution      = NULL,
           resolved_by     = NULL,
           resolution_note = NULL
    RETURNING job_id
), rechecked AS (
    -- ... a recheck of a job still stuck only counts, and never reopens a record an
    -- operator acknowledged.
    UPDATE harvester.stuck_jobs AS s
       SET last_seen_at = now(), times_seen = s.times_seen + 1,
           last_status = st.status, last_body = st.body
      FROM st
     WHERE s.job_id = st.job_id
       AND NOT st.newly
    RETURNING s.job_id
), notified AS (
    SELECT pg_notify('harvester_landed', job_id::text) FROM mirrored
    UNION ALL
    SELECT pg_notify('harvester_stuck', job_id::text) FROM stuck
)
SELECT coalesce((SELECT array_agg(job_id) FROM fenced), ARRAY[]::uuid[]) AS written,
       (SELECT count(*) FROM notified) AS notified,
       (SELECT count(*) FROM resolved) AS resolved

-- release --
UPDATE harvester.jobs AS j
   SET next_poll_at = now() + make_interval(secs => u.delay),
       polls        = j.polls + u.polled,
       last_status  = coalesce(u.status, j.last_status),
       last_error   = coalesce(u.error, j.last_error),
       leased_until = NULL,
       leased_by    = NULL
  FROM {release_columns}
 WHERE j.job_id = u.job_id
   AND j.lease_seq = u.lease_seq
RETURNING j.job_id

-- heartbeat --
INSERT INTO harvester.workers AS w
       (worker_id, hostname, pid, version, auth_circuit, paused_until, in_flight,
        send_rate, permission_circuit, upstream_alarm, upstream_clock_skew)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (worker_id) DO UPDATE
   SET heartbeat_at = now(), auth_circuit = excluded.auth_circuit,
       paused_until = excluded.paused_until, in_flight = excluded.in_flight,
       send_rate = excluded.send_rate,
       permission_circuit = excluded.permission_circuit,
       upstream_alarm = excluded.upstream_alarm,
       upstream_clock_skew = excluded.upstream_clock_skew

-- forget_worker --
DELETE FROM harvester.workers WHERE worker_id = $1

-- forget_stale_workers --
DELETE FROM harvester.workers WHERE heartbeat_at < now() - interval '1 day'
