-- harvester schema, version 4: each daemon's reading of upstream's clock, and what a
-- 403 counts for now (README "How upstream answers are handled").
--
-- Additive only: a version-3 daemon keeps running on this schema during a rolling
-- upgrade (its heartbeat names its columns and leaves the new one null). The column
-- has no default, so PostgreSQL adds it without rewriting the (small) table; COMMENT
-- changes the catalog only.

ALTER TABLE harvester.workers
    ADD COLUMN upstream_clock_skew double precision;

COMMENT ON COLUMN harvester.workers.upstream_clock_skew IS
    'Upstream''s clock minus this daemon''s, in seconds (positive: upstream ahead), from the Date headers of its last 64 answers (median); null until one came. Retry-After HTTP-dates are read against each answer''s own Date, so waits are right whatever this says.';

COMMENT ON COLUMN harvester.jobs.consecutive_403s IS
    'Consecutive 403s for this job: forbidden at the third, the last refused while a request known to be readable (another job''s result, or a job that landed lately) was answered. 403s while the token itself is refused (the permission circuit) are not counted.';
