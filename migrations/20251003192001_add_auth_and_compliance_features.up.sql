-- OAuth-only accounts have no password.
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
ALTER TABLE users
    ADD COLUMN real_name varchar(255),
    ADD COLUMN google_user_id varchar(255) UNIQUE,
    ADD COLUMN timer_is_public boolean NOT NULL DEFAULT false,
    ADD COLUMN timer_show_in_list boolean NOT NULL DEFAULT false;
CREATE INDEX idx_users_public_listed_timers ON users (timer_is_public, timer_show_in_list)
    WHERE timer_is_public = true AND timer_show_in_list = true;

-- Lifetime 24 hours; all of a user's tokens are deleted on successful verification.
CREATE TABLE verification_tokens (
    id         uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash varchar(255) NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_verification_tokens_user_id ON verification_tokens (user_id);
CREATE INDEX idx_verification_tokens_expires_at ON verification_tokens (expires_at);

-- Lifetime 1 hour, single use.
CREATE TABLE password_reset_tokens (
    id         uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash varchar(255) NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at > created_at)
);
CREATE INDEX idx_password_reset_tokens_user_id ON password_reset_tokens (user_id);
CREATE INDEX idx_password_reset_tokens_expires_at ON password_reset_tokens (expires_at);

-- Addresses are stored normalised (trimmed, lower case) by a trigger, so the unique constraint is
-- case-insensitive: 'Gone@X.com' collides with 'gone@x.com'. Look up with lower(btrim($1)).
CREATE TABLE email_suppressions (
    id                     uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    email                  varchar(255) NOT NULL UNIQUE,
    suppression_type       varchar(50) NOT NULL
                           CHECK (suppression_type IN ('bounce', 'complaint', 'unsubscribe', 'manual')),
    reason                 text,
    suppress_transactional boolean NOT NULL DEFAULT false,
    suppress_marketing     boolean NOT NULL DEFAULT true,
    bounce_count           integer NOT NULL DEFAULT 0 CHECK (bounce_count >= 0),
    last_bounce_at         timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_email_suppressions_suppression_type ON email_suppressions (suppression_type);
CREATE INDEX idx_email_suppressions_created_at ON email_suppressions (created_at);
CREATE TRIGGER update_email_suppressions_updated_at BEFORE UPDATE ON email_suppressions
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE FUNCTION email_suppressions_normalize_email() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    NEW.email := lower(btrim(NEW.email));
    RETURN NEW;
END
$fn$;
CREATE TRIGGER email_suppressions_normalize_email
    BEFORE INSERT OR UPDATE OF email ON email_suppressions
    FOR EACH ROW EXECUTE FUNCTION email_suppressions_normalize_email();

INSERT INTO roles (name, description) VALUES
    ('email-verified', 'Has confirmed ownership of their email address'),
    ('trusted-contact', 'May be notified about another user''s incident timer');
