-- Logical replication of the mirror, for systems that consume PostgreSQL's own change
-- stream: another PostgreSQL (CREATE SUBSCRIPTION), Debezium, a warehouse's CDC
-- connector (README "Querying the mirror", "Logical replication instead").
--
-- Not a migration: a publication needs wal_level = logical on the server (a restart),
-- and each subscriber a replication slot that keeps WAL on this server for as long as
-- the subscriber is away, both decisions of whoever runs the cluster. Run it as the
-- owner of harvester.extraction_results (or a superuser) in harvester's database:
--
--   psql "$ADMIN_DATABASE_URL" -f deploy/mirror-publication.sql
--
-- Idempotent. A subscriber in another PostgreSQL first creates the table (run
-- `harvester migrate` against it: the subscriber's daemons must not run), then:
--
--   CREATE SUBSCRIPTION harvester_mirror
--       CONNECTION 'host=primary dbname=harvester user=replicator password=...'
--       PUBLICATION harvester_mirror;
--
-- (a subscriber database on the same server as the publisher creates the slot first,
-- SELECT pg_create_logical_replication_slot('harvester_mirror', 'pgoutput') on the
-- publisher, and subscribes WITH (create_slot = false, slot_name = 'harvester_mirror'):
-- tests/acceptance/test_mirror_publication.py does exactly that).
--
-- Inserts, updates and deletes are published: retention's deletes reach the subscriber
-- too. A subscriber that keeps history rather than a copy would use
-- ALTER PUBLICATION harvester_mirror SET (publish = 'insert, update').
-- harvester.mirror_deletions (the change feed's tombstones) is not published: a
-- subscriber receives the deletes themselves. The primary key is the replica identity.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'harvester_mirror') THEN
        CREATE PUBLICATION harvester_mirror FOR TABLE harvester.extraction_results;
    END IF;
END
$$;
