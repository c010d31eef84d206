-- A read-only role for the systems that query the mirror.
--
-- Not a migration, on purpose: roles are cluster-wide objects, managed databases
-- (RDS, Cloud SQL, Azure) often do not give the migrating user CREATEROLE, and the
-- name and password policy belong to whoever runs the cluster. Run this once as an
-- administrator after `harvester migrate`:
--
--   psql "$ADMIN_DATABASE_URL" -f deploy/readonly-role.sql
--
-- then give each consuming system a login of its own in the role, e.g.
--
--   psql "$ADMIN_DATABASE_URL" -c "CREATE ROLE mirror_app LOGIN PASSWORD 'change-me' IN ROLE harvester_reader"
--
-- Idempotent: it can be run again after later migrations to cover new tables.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'harvester_reader') THEN
        CREATE ROLE harvester_reader NOLOGIN;
    END IF;
END
$$;

-- Readers see the mirror, the queue and the stuck record; they change nothing.
GRANT USAGE ON SCHEMA harvester TO harvester_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA harvester TO harvester_reader;
-- Tables that later migrations create (when run by the same owner) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA harvester GRANT SELECT ON TABLES TO harvester_reader;

-- Consumers may LISTEN harvester_landed and harvester_stuck: LISTEN needs no grant.
