-- The daemons' role: exactly the rows `harvester run --no-migrate` reads and writes, and
-- no DDL (the schema belongs to harvester_owner, deploy/owner-role.sql).
--
-- What the daemon does, and what it needs for it (tests/integration/test_roles.py runs
-- the daemon as this role, lands, fails, marks stuck and purges jobs, and shows DDL
-- refused):
--   claim, write outcomes, release on stop, requeue  SELECT, UPDATE on jobs
--   feed (POST /v1/jobs, `harvester enqueue`)        INSERT on jobs
--   retention purge                                  DELETE on jobs, extraction_results
--                                                    (a purged job's closed stuck record
--                                                    goes by the foreign key, which runs
--                                                    with the owner's rights)
--   land rows in the mirror (upsert)                 SELECT, INSERT, UPDATE on extraction_results
--   stuck records: open, re-see, close               SELECT, INSERT, UPDATE on stuck_jobs
--   heartbeat, its own row at stop, stale rows       SELECT, INSERT, UPDATE, DELETE on workers
--   readiness, "is the schema current?"              SELECT on schema_migrations
--   queue gauges (/metrics, `harvester status`)      SELECT on the view open_stuck_jobs
--   LISTEN/NOTIFY, advisory locks (purge, pace),     nothing: open to every role
--   table sizes from pg_class, SET LOCAL settings
--
-- Not a migration, for the same reasons as readonly-role.sql. Run it as an administrator
-- in harvester's database; idempotent. Before the first migration it only creates the
-- role (so that logins can be made and the Deployment may start first: a daemon that
-- cannot read the schema yet waits, not ready); run it again after `harvester migrate`
-- to grant the tables, and after any later migration that adds a table:
--
--   psql "$ADMIN_DATABASE_URL" -f deploy/runtime-role.sql
--   psql "$ADMIN_DATABASE_URL" -c "CREATE ROLE harvester_app LOGIN PASSWORD 'change-me' IN ROLE harvester_runtime"

DO $$
BEGIN
    CREATE ROLE harvester_runtime NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- already there (or created at this moment by a concurrent run)
END
$$;

DO $$
BEGIN
    IF to_regclass('harvester.schema_migrations') IS NULL THEN
        RAISE NOTICE 'schema harvester is not migrated yet: role harvester_runtime exists, '
                     'run this file again after `harvester migrate` to grant its tables';
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA harvester TO harvester_runtime;
    GRANT SELECT ON harvester.schema_migrations TO harvester_runtime;
    GRANT SELECT, INSERT, UPDATE, DELETE ON harvester.jobs TO harvester_runtime;
    GRANT SELECT, INSERT, UPDATE, DELETE ON harvester.extraction_results TO harvester_runtime;
    GRANT SELECT, INSERT, UPDATE ON harvester.stuck_jobs TO harvester_runtime;
    GRANT SELECT, INSERT, UPDATE, DELETE ON harvester.workers TO harvester_runtime;
    GRANT SELECT ON harvester.open_stuck_jobs TO harvester_runtime;
END
$$;
-- Nothing else: no CREATE on the schema or the database, no TRUNCATE, no ownership.
