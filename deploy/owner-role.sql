-- The role that owns schema harvester and everything in it: the only one with DDL.
--
-- Migrations run as this role (the migrate Job, compose's `migrate` service, or
-- `harvester migrate` by hand); the daemons run as harvester_runtime
-- (deploy/runtime-role.sql) with `harvester run --no-migrate` and can change rows, not
-- the schema. README "Upgrades".
--
-- Not a migration, for the same reasons as readonly-role.sql: roles are cluster-wide and
-- managed databases often withhold CREATEROLE from the migrating user. Run it once as an
-- administrator, connected to harvester's database (it grants CREATE on that database,
-- which the first migration needs to create schema harvester). Idempotent:
--
--   psql "$ADMIN_DATABASE_URL" -f deploy/owner-role.sql
--
-- then give the migrate Job a login in the role, whose sessions act as the role itself,
-- so that every table a migration creates belongs to harvester_owner whichever login ran
-- it (a login can then be rotated without moving ownership):
--
--   CREATE ROLE harvester_migrate LOGIN PASSWORD 'change-me' IN ROLE harvester_owner;
--   ALTER ROLE harvester_migrate SET role = 'harvester_owner';
--
-- Coming from one role that owns everything (say the daemon logged in as harvester and
-- migrated at start), hand the schema over, in harvester's database, after both files:
--
--   REASSIGN OWNED BY harvester TO harvester_owner;   -- all harvester owns in this database
--   GRANT harvester_runtime TO harvester;

DO $$
BEGIN
    CREATE ROLE harvester_owner NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- already there (or created at this moment by a concurrent run)
END
$$;

-- The first migration runs CREATE SCHEMA IF NOT EXISTS harvester, which PostgreSQL checks
-- against CREATE on the database even when the schema exists.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO harvester_owner', current_database());
END
$$;
