-- LISTEN/NOTIFY between the daemons (harvester.store.listen). The channels are
-- listened to by name through asyncpg's add_listener, not by a statement.

-- announce_pace --
-- A refusal of this daemon, heard by the others (README "Pace").
SELECT pg_notify($1, $2)

-- keepalive --
-- Every 10 s on the listening connection: a silent network drop sends no termination.
SELECT 1
