-- The numbers of `harvester status` and the queue gauges of /metrics
-- (harvester.store.figures).

-- open_jobs --
-- Open jobs by state and by what batch-status last said of them.
SELECT state, upstream_status, count(*) AS n FROM harvester.jobs
 WHERE state IN ('pending', 'stuck') GROUP BY state, upstream_status

-- closed_jobs --
SELECT state, count(*) AS n FROM harvester.jobs
 WHERE state IN ('landed', 'failed') GROUP BY state

-- due_backlog --
-- How many open jobs are due and not leased, and how long the oldest has waited (NULL:
-- none is due).
SELECT count(*) AS due,
       extract(epoch FROM now() - min(next_poll_at))::float8 AS age
  FROM harvester.jobs
 WHERE state IN ('pending', 'stuck') AND next_poll_at <= now()
   AND (leased_until IS NULL OR leased_until <= now())

-- leased --
SELECT count(*) FROM harvester.jobs WHERE state IN ('pending', 'stuck')
   AND leased_until > now()

-- landed_recently --
SELECT count(*) FILTER (WHERE landed_at > now() - interval '1 minute') AS last_minute,
       count(*) AS last_hour
  FROM harvester.jobs
 WHERE state = 'landed' AND landed_at > now() - interval '1 hour'

-- failed_by_reason --
SELECT failed_reason, count(*) AS n FROM harvester.jobs
 WHERE state = 'failed' GROUP BY failed_reason ORDER BY failed_reason

-- stuck_open --
-- Open stuck records and the age of the oldest (NULL: none): the partial index
-- stuck_jobs_open_idx alone.
SELECT count(*) AS open,
       extract(epoch FROM now() - min(s.first_seen_at))::float8 AS age
  FROM harvester.stuck_jobs AS s
 WHERE {open_stuck}

-- autovacuum --
SELECT current_setting('autovacuum') = 'on'

-- live_workers --
SELECT worker_id, hostname, pid, version, auth_circuit, permission_circuit,
       upstream_alarm, send_rate, paused_until, in_flight, upstream_clock_skew,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
  FROM harvester.workers
 WHERE heartbeat_at > now() - interval '2 minutes'
 ORDER BY worker_id

-- oldest_finished --
-- What retention has left to do: the oldest finished row the purge may delete (the
-- first row of each finished index).
SELECT extract(epoch FROM now() - least(
           (SELECT landed_at FROM harvester.jobs AS j
             WHERE state = 'landed'
               AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                                WHERE s.job_id = j.job_id AND {open_stuck})
             ORDER BY landed_at LIMIT 1),
           (SELECT updated_at FROM harvester.jobs AS j
             WHERE state = 'failed'
               AND NOT EXISTS (SELECT 1 FROM harvester.stuck_jobs AS s
                                WHERE s.job_id = j.job_id AND {open_stuck})
             ORDER BY updated_at LIMIT 1)))::float8

-- table_sizes --
-- Each table's size and rows. The rows are counted (count(*)) while the table's heap is
-- at most $1 bytes (figures.COUNTED_BELOW; README "Retention"); beyond it they are
-- the statistics' live-row count (pg_stat_user_tables.n_live_tup: kept current by every
-- insert and delete, within about a second), which costs nothing on a table of billions
-- of rows. Not pg_class.reltuples: that is -1 until the first ANALYZE, so a fresh
-- table read 0. Each uncorrelated count is an InitPlan, run only if its CASE branch is.
SELECT c.relname AS name,
       (CASE WHEN pg_relation_size(c.oid) > $1 THEN coalesce(s.n_live_tup, 0)
             WHEN c.relname = 'jobs' THEN (SELECT count(*) FROM harvester.jobs)
             ELSE (SELECT count(*) FROM harvester.extraction_results)
        END)::float8 AS rows,
       pg_relation_size(c.oid) <= $1 AS counted,
       pg_total_relation_size(c.oid)::float8 AS bytes
  FROM pg_class AS c
  LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
 WHERE c.oid IN ('harvester.jobs'::regclass, 'harvester.extraction_results'::regclass)
