-- The commands' look at a database before they use it (harvester.commands.database,
-- harvester.commands.psql).

-- table_exists --
-- From the catalog, which every role may read: a role without rights on the schema
-- still learns whether it was migrated, and then why it may not read it.
SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'harvester' AND c.relname = $1)

-- databases --
SELECT datname FROM pg_database WHERE NOT datistemplate
   AND datname <> 'postgres' ORDER BY datname
