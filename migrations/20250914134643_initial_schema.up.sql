-- UUIDv7 keys: the pg_uuidv7 extension where the server offers it, otherwise SQL functions with the
-- same names and behaviour (RFC 9562: 48-bit Unix milliseconds, version 7, variant 10, random rest).
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_uuidv7') THEN
        CREATE EXTENSION IF NOT EXISTS pg_uuidv7;
    ELSE
        -- gen_random_uuid() (core since PG 13) supplies the random bits and variant 10;
        -- the first 6 bytes become the timestamp and bits 52/53 turn version 4 into 7.
        CREATE FUNCTION uuid_generate_v7() RETURNS uuid
        LANGUAGE sql VOLATILE PARALLEL SAFE
        AS $fn$
            SELECT encode(
                set_bit(set_bit(
                    overlay(uuid_send(gen_random_uuid())
                            PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                            FROM 1 FOR 6),
                    52, 1), 53, 1),
                'hex')::uuid
        $fn$;

        CREATE FUNCTION uuid_timestamptz_to_v7(ts timestamptz, zero boolean DEFAULT false) RETURNS uuid
        LANGUAGE sql VOLATILE PARALLEL SAFE
        AS $fn$
            SELECT encode(
                set_bit(set_bit(
                    overlay(CASE WHEN zero THEN '\x00000000000040008000000000000000'::bytea
                                 ELSE uuid_send(gen_random_uuid()) END
                            PLACING substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3)
                            FROM 1 FOR 6),
                    52, 1), 53, 1),
                'hex')::uuid
        $fn$;

        CREATE FUNCTION uuid_v7_to_timestamptz(id uuid) RETURNS timestamptz
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $fn$
            SELECT to_timestamp(
                ('x' || lpad(substr(replace(id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint / 1000.0)
        $fn$;
    END IF;
END
$do$;

CREATE FUNCTION update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END
$fn$;

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    email         varchar(255) NOT NULL UNIQUE,
    password_hash varchar(255) NOT NULL,
    display_name  varchar(100) NOT NULL,
    slug          varchar(255) NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_users_created_at ON users (created_at);
CREATE TRIGGER update_users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE roles (
    id          uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    name        varchar(50) NOT NULL UNIQUE,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER update_roles_updated_at BEFORE UPDATE ON roles
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

INSERT INTO roles (name, description) VALUES
    ('user', 'Every registered account: may use the application'),
    ('admin', 'Administrator: may manage users, roles and phrase suggestions');

CREATE TABLE user_roles (
    id          uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id     uuid NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    assigned_by uuid REFERENCES users (id),
    UNIQUE (user_id, role_id)
);
-- (user_id, role_id) is served by the unique constraint's index.
CREATE INDEX idx_user_roles_role_id ON user_roles (role_id);

CREATE TABLE incident_timers (
    id              uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reset_timestamp timestamptz NOT NULL DEFAULT now(),
    notes           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_incident_timers_user_id_reset_timestamp
    ON incident_timers (user_id, reset_timestamp DESC);
CREATE INDEX idx_incident_timers_reset_timestamp ON incident_timers (reset_timestamp DESC);
CREATE TRIGGER update_incident_timers_updated_at BEFORE UPDATE ON incident_timers
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
