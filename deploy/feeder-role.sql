-- A role for the systems that feed job IDs, separate from the daemon's and the readers'.
--
-- Feeding needs exactly two rights, whichever way it is done:
--   USAGE on schema harvester and INSERT on harvester.jobs.
-- That covers
--   * SQL:  INSERT INTO harvester.jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING
--           (naming the conflict target, ON CONFLICT (job_id), needs SELECT on the
--           column too: leave it out);
--   * psql: \copy into a TEMP staging table first (TEMP is granted to PUBLIC on every
--           new database), then the INSERT ... SELECT above;
--   * `harvester enqueue` with HARVESTER_DATABASE_URL naming a login in this role.
-- Feeding over HTTP (POST /v1/jobs) needs no database role at all, only
-- HARVESTER_ADMIN_TOKEN: the daemon inserts with its own connection.
--
-- Not a migration, for the same reasons as readonly-role.sql: roles are cluster-wide and
-- managed databases often withhold CREATEROLE from the migrating user. Run it once as an
-- administrator after `harvester migrate` (idempotent):
--
--   psql "$ADMIN_DATABASE_URL" -f deploy/feeder-role.sql
--   psql "$ADMIN_DATABASE_URL" -c "CREATE ROLE crawler_feed LOGIN PASSWORD 'change-me' IN ROLE harvester_feeder"

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'harvester_feeder') THEN
        CREATE ROLE harvester_feeder NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA harvester TO harvester_feeder;
GRANT INSERT ON harvester.jobs TO harvester_feeder;
-- Nothing else: a feeder cannot read the queue or the mirror, nor change a job.
