-- harvester schema, version 1.
--
-- The queue (jobs), the mirror (extraction_results) and the alerting record
-- (stuck_jobs). Forward-only: a later change is a new numbered file.

CREATE SCHEMA IF NOT EXISTS harvester;

-- ---------------------------------------------------------------- the queue
--
-- One row per job ID. A job is *due* when its state is open (pending or stuck),
-- next_poll_at has passed and no live lease holds it. A claim sets leased_until
-- and bumps lease_seq, columns no index covers, so PostgreSQL updates the row in
-- place (HOT) and the claim adds nothing to any index; a crashed daemon's jobs
-- come back by themselves when their lease lapses. lease_seq is the fencing
-- token: every write names the value it claimed with, so a late answer from an
-- expired lease cannot overwrite a newer outcome.
CREATE TABLE harvester.jobs (
    job_id           uuid        PRIMARY KEY,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'stuck', 'landed', 'failed')),
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    requeued_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    next_poll_at     timestamptz DEFAULT now(),
    polls            integer     NOT NULL DEFAULT 0,
    last_status      integer,
    last_error       text,
    landed_at        timestamptz,
    failed_reason    text,
    upstream_status  text,
    attempt          integer     NOT NULL DEFAULT 0,
    consecutive_500s integer     NOT NULL DEFAULT 0,
    lease_seq        bigint      NOT NULL DEFAULT 0,
    leased_until     timestamptz,
    leased_by        text,
    CONSTRAINT open_jobs_have_a_next_poll
        CHECK (state IN ('landed', 'failed') OR next_poll_at IS NOT NULL),
    CONSTRAINT landed_jobs_have_landed_at
        CHECK (state <> 'landed' OR landed_at IS NOT NULL),
    CONSTRAINT failed_jobs_have_a_reason
        CHECK (state <> 'failed' OR failed_reason IS NOT NULL)
) WITH (
    -- The queue churns (a claim and an outcome per poll): keep half of each page
    -- free so new row versions stay on their page (HOT), and let autovacuum visit
    -- early rather than after 20 % of a large table is dead.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

COMMENT ON TABLE harvester.jobs IS
    'The queue: one row per job ID. Feed with INSERT INTO harvester.jobs (job_id) VALUES (...) ON CONFLICT DO NOTHING.';
COMMENT ON COLUMN harvester.jobs.next_poll_at IS
    'When the job is next due; NULL once landed or failed.';
COMMENT ON COLUMN harvester.jobs.leased_until IS
    'While a daemon polls the job: the end of its lease. A lapsed lease makes the job claimable again.';
COMMENT ON COLUMN harvester.jobs.requeued_at IS
    'Set by requeue: age limits (MAX_AGE, NOT_FOUND_TIMEOUT) count from here instead of enqueued_at.';
COMMENT ON COLUMN harvester.jobs.failed_reason IS
    'forbidden, upstream_failed, not_found, expired or http_<status>.';
COMMENT ON COLUMN harvester.jobs.upstream_status IS
    'The job status upstream last reported through batch-status, if asked.';
COMMENT ON COLUMN harvester.jobs.attempt IS
    'Consecutive answers that made no progress; the backoff exponent.';
COMMENT ON COLUMN harvester.jobs.lease_seq IS
    'Fencing token: bumped by every claim, checked by every write.';

-- The claim path: only open jobs are in this index, so landed and failed rows
-- (the bulk of a long-lived table) cost nothing, and a range scan up to now()
-- never visits the jobs that are not due yet.
CREATE INDEX jobs_due_idx ON harvester.jobs (next_poll_at)
    WHERE state IN ('pending', 'stuck');

-- "landed in the last minute / hour" for status and dashboards.
CREATE INDEX jobs_landed_at_idx ON harvester.jobs (landed_at)
    WHERE state = 'landed';

-- requeue --state failed.
CREATE INDEX jobs_failed_idx ON harvester.jobs (updated_at)
    WHERE state = 'failed';

-- A daemon wakes when jobs are fed by plain SQL. One notification per
-- statement, so a bulk INSERT ... SELECT wakes it once, not a million times.
CREATE FUNCTION harvester.notify_jobs_fed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('harvester_jobs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_fed AFTER INSERT ON harvester.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION harvester.notify_jobs_fed();

-- ---------------------------------------------------------------- the mirror

CREATE TABLE harvester.extraction_results (
    job_id               uuid             PRIMARY KEY,
    id                   uuid             NOT NULL,
    org_id               uuid             NOT NULL,
    domain               text             NOT NULL,
    schema_id            text,
    data_type            text             NOT NULL,
    normalized           jsonb            NOT NULL,
    raw_blob_key         text,
    quality_completeness double precision NOT NULL,
    quality_validation   double precision NOT NULL,
    quality_composite    double precision NOT NULL,
    latency_ms           integer,
    delivered_at         timestamptz,
    created_at           timestamptz      NOT NULL,
    payload              jsonb            NOT NULL,
    harvested_at         timestamptz      NOT NULL DEFAULT now()
);

COMMENT ON TABLE harvester.extraction_results IS
    'The mirror: one row per landed job, every upstream field in snake_case plus the whole body in payload.';
COMMENT ON COLUMN harvester.extraction_results.payload IS
    'The 200 body as received (unknown fields included), as jsonb.';
COMMENT ON COLUMN harvester.extraction_results.harvested_at IS
    'When this content was written; landing an identical row again changes nothing.';

CREATE INDEX extraction_results_domain_created_idx
    ON harvester.extraction_results (domain, created_at DESC);
CREATE INDEX extraction_results_harvested_idx
    ON harvester.extraction_results (harvested_at);

-- ---------------------------------------------------------------- alerting

CREATE TABLE harvester.stuck_jobs (
    job_id        uuid        PRIMARY KEY REFERENCES harvester.jobs (job_id) ON DELETE CASCADE,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    times_seen    integer     NOT NULL DEFAULT 1,
    last_status   integer,
    last_body     text,
    resolved_at   timestamptz
);

COMMENT ON TABLE harvester.stuck_jobs IS
    'Jobs upstream reports as completed without a result row (repeated 500s). Open while resolved_at IS NULL; resolved when the row lands.';

CREATE INDEX stuck_jobs_open_idx ON harvester.stuck_jobs (first_seen_at)
    WHERE resolved_at IS NULL;

CREATE VIEW harvester.open_stuck_jobs AS
    SELECT s.job_id, s.first_seen_at, s.last_seen_at, s.times_seen, s.last_status,
           s.last_body, now() - s.first_seen_at AS open_for, j.state, j.next_poll_at
      FROM harvester.stuck_jobs s
      JOIN harvester.jobs j USING (job_id)
     WHERE s.resolved_at IS NULL;

-- ---------------------------------------------------------------- daemons

-- Each running daemon publishes a heartbeat and its view of upstream, so that
-- `harvester status`, run from anywhere, can say whether the auth circuit is open.
CREATE TABLE harvester.workers (
    worker_id     text        PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    version       text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    auth_circuit  text        NOT NULL DEFAULT 'closed' CHECK (auth_circuit IN ('closed', 'open')),
    paused_until  timestamptz,
    in_flight     integer     NOT NULL DEFAULT 0
);
