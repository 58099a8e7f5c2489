DROP TABLE IF EXISTS incident_timers;
DROP TABLE IF EXISTS user_roles;
DROP TABLE IF EXISTS roles;
DROP TABLE IF EXISTS users;
DROP FUNCTION IF EXISTS update_updated_at_column();

-- Whichever UUIDv7 provider the up migration installed.
DROP EXTENSION IF EXISTS pg_uuidv7;
DROP FUNCTION IF EXISTS uuid_generate_v7();
DROP FUNCTION IF EXISTS uuid_timestamptz_to_v7(timestamptz, boolean);
DROP FUNCTION IF EXISTS uuid_v7_to_timestamptz(uuid);
