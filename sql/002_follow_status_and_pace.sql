-- harvester schema, version 2: following jobs through batch-status, stuck records
-- that end, and each daemon's pace and circuits.
--
-- Additive only: a version-1 daemon keeps running on this schema during a rolling
-- upgrade (it never reads the new columns). Every ADD COLUMN has a constant default,
-- so PostgreSQL adds it without rewriting the table. Checking the two CHECK constraints
-- reads each table once while the migration holds its lock: on a queue of millions of
-- rows that is seconds, during which claims and writes wait (the daemon rides it out).

-- ---------------------------------------------------------------- the queue

ALTER TABLE harvester.jobs
    ADD COLUMN next_step         text        NOT NULL DEFAULT 'status',
    ADD COLUMN status_checks     integer     NOT NULL DEFAULT 0,
    ADD COLUMN status_checked_at timestamptz,
    ADD COLUMN status_since      timestamptz,
    ADD COLUMN finished_seen_at  timestamptz,
    ADD COLUMN consecutive_403s  integer     NOT NULL DEFAULT 0;

ALTER TABLE harvester.jobs
    ADD CONSTRAINT jobs_next_step_known CHECK (next_step IN ('status', 'result'));

COMMENT ON COLUMN harvester.jobs.next_step IS
    'What the daemon does when the job is next due: ask batch-status (status) or GET the result (result).';
COMMENT ON COLUMN harvester.jobs.status_checks IS
    'How many batch-status answers have mentioned (or omitted) this job.';
COMMENT ON COLUMN harvester.jobs.status_checked_at IS
    'When batch-status was last asked about this job.';
COMMENT ON COLUMN harvester.jobs.status_since IS
    'When the daemon first saw the current upstream_status: the follow cadence slows down with it.';
COMMENT ON COLUMN harvester.jobs.finished_seen_at IS
    'When batch-status first said extraction_done or completed: the origin of the landing lag.';
COMMENT ON COLUMN harvester.jobs.consecutive_403s IS
    'Consecutive 403s for this job while other jobs were answered: forbidden after three.';
COMMENT ON COLUMN harvester.jobs.upstream_status IS
    'The job status upstream last reported through batch-status; unknown when batch-status omits the job.';

-- ---------------------------------------------------------------- stuck records

-- Every way a job ends closes its stuck record, and an operator can close one by hand;
-- the record keeps how, by whom and why.
ALTER TABLE harvester.stuck_jobs
    ADD COLUMN resolution      text,
    ADD COLUMN resolved_by     text,
    ADD COLUMN resolution_note text;

ALTER TABLE harvester.stuck_jobs
    ADD CONSTRAINT stuck_jobs_resolution_known
        CHECK (resolution IS NULL OR resolution IN ('landed', 'failed', 'expired', 'acknowledged'));

COMMENT ON COLUMN harvester.stuck_jobs.resolution IS
    'How the record closed: landed, failed, expired (the job ended that way) or acknowledged (an operator).';
COMMENT ON COLUMN harvester.stuck_jobs.resolved_by IS
    'Who closed it: harvester for a job that ended, else the operator named on the command line.';
COMMENT ON COLUMN harvester.stuck_jobs.resolution_note IS
    'Why, in the operator''s words (acknowledged records).';

-- Records closed by version 1 were closed by a landing.
UPDATE harvester.stuck_jobs
   SET resolution = 'landed', resolved_by = 'harvester'
 WHERE resolved_at IS NOT NULL;

-- Version 1 left the record of a job that failed (expired) open for ever: close it.
UPDATE harvester.stuck_jobs AS s
   SET resolved_at = j.updated_at,
       resolution = CASE WHEN j.failed_reason = 'expired' THEN 'expired' ELSE 'failed' END,
       resolved_by = 'harvester'
  FROM harvester.jobs AS j
 WHERE j.job_id = s.job_id
   AND j.state = 'failed'
   AND s.resolved_at IS NULL;

-- ---------------------------------------------------------------- daemons

ALTER TABLE harvester.workers
    ADD COLUMN send_rate          double precision,
    ADD COLUMN permission_circuit text NOT NULL DEFAULT 'closed'
        CHECK (permission_circuit IN ('closed', 'open')),
    ADD COLUMN upstream_alarm     text;

COMMENT ON COLUMN harvester.workers.send_rate IS
    'Requests per second this daemon currently allows itself (NULL: no limit found).';
COMMENT ON COLUMN harvester.workers.permission_circuit IS
    'open while upstream answers 403 (the token lacks a permission) to every request.';
COMMENT ON COLUMN harvester.workers.upstream_alarm IS
    'Why this daemon distrusts upstream right now (e.g. base_url_suspect), or NULL.';
