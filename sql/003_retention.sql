-- harvester schema, version 3: retention (README "Retention").
--
-- The queue keeps the working set, not history: the daemon deletes the rows of jobs that
-- landed or failed longer ago than HARVESTER_FINISHED_RETENTION (their closed stuck
-- records go with them, through the foreign key), and mirror rows older than
-- HARVESTER_RESULT_RETENTION when that is set. A job fed again whose row is in the
-- mirror is landed by the claim without a poll; `harvester requeue` still polls it.
--
-- No column and no index is added: the purge walks finished rows oldest first through
-- indexes version 1 already has, landed jobs by landed_at (jobs_landed_at_idx), failed
-- jobs by updated_at (jobs_failed_idx), mirror rows by harvested_at
-- (extraction_results_harvested_idx). A finished_at column would have needed a backfill
-- of every finished row and an index built over them, both inside this migration's
-- transaction, where the ACCESS EXCLUSIVE lock of ALTER TABLE ... ADD COLUMN is held
-- until the commit: on the queue retention exists for, at the largest it will ever be,
-- every claim, write and feed would wait for the whole rewrite. And daemons of the
-- previous version, still running during a rolling upgrade, set landed_at and
-- updated_at as they always have, so the rows they finish are purged like the others.
--
-- What this version records is that contract, where `\d+` shows it. COMMENT takes a
-- SHARE UPDATE EXCLUSIVE lock, which conflicts with no claim, write, feed or read
-- (only with VACUUM and other DDL), and changes the catalog only: it is instant on a
-- table of any size.

COMMENT ON TABLE harvester.jobs IS
    'The queue: one row per job ID. Feed with INSERT INTO harvester.jobs (job_id) VALUES (...) ON CONFLICT DO NOTHING. Rows of jobs landed or failed longer ago than HARVESTER_FINISHED_RETENTION are deleted.';
COMMENT ON COLUMN harvester.jobs.landed_at IS
    'When the job landed; HARVESTER_FINISHED_RETENTION counts from here for landed jobs.';
COMMENT ON COLUMN harvester.jobs.updated_at IS
    'Last change of the row. A finished row is changed only by requeue, which reopens it: for a failed job this is when it failed, and HARVESTER_FINISHED_RETENTION counts from here.';
COMMENT ON COLUMN harvester.jobs.requeued_at IS
    'Set by requeue: age limits (MAX_AGE, NOT_FOUND_TIMEOUT) count from here instead of enqueued_at, and the job is polled even though its row may be in the mirror (a job fed again whose row is in the mirror is otherwise landed at claim time without a poll).';
COMMENT ON COLUMN harvester.extraction_results.harvested_at IS
    'When this content was written; landing an identical row again changes nothing. HARVESTER_RESULT_RETENTION, when set, counts from here.';
