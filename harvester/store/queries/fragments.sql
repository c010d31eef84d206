-- SQL written once and shared: {name} in any statement file is the block of that name.

-- open_stuck --
-- A stuck record is open until its job ends or an operator acknowledges it: the
-- predicate of the view harvester.open_stuck_jobs and of the partial index
-- stuck_jobs_open_idx (sql/001_initial.sql), over harvester.stuck_jobs AS s. The store
-- writes this rather than reading the view: the view joins harvester.jobs (to show the
-- job's state, for people), and the join costs. Measured with the queue of
-- tests/integration/test_statements.py (100,000 jobs, 1,500 open records; EXPLAIN
-- ANALYZE): counting open records through the view is a hash join over a Seq Scan of
-- harvester.jobs, 100 ms, where this predicate alone is an Index Only Scan of
-- stuck_jobs_open_idx, 0.5 ms; inside the purge's NOT EXISTS the view makes a batch read
-- and sort 23,090 landed rows to delete 1,000 (228 ms), where this probes
-- stuck_jobs_pkey for 1,020 rows (31 ms).
s.resolved_at IS NULL

-- stuck_since --
-- Since when a stuck job (harvester.jobs AS j) has been stuck: the first sighting of
-- its open record, else its last update (a requeue's --older-than/--newer-than).
coalesce((SELECT s.first_seen_at FROM harvester.stuck_jobs s
           WHERE s.job_id = j.job_id AND {open_stuck}), j.updated_at)
