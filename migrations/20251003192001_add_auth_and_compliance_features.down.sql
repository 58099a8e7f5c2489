-- Assignments of these roles go with them (user_roles cascades).
DELETE FROM roles WHERE name IN ('email-verified', 'trusted-contact');

DROP TABLE IF EXISTS email_suppressions;
DROP FUNCTION IF EXISTS email_suppressions_normalize_email();
DROP TABLE IF EXISTS password_reset_tokens;
DROP TABLE IF EXISTS verification_tokens;

DROP INDEX IF EXISTS idx_users_public_listed_timers;
ALTER TABLE users
    DROP COLUMN IF EXISTS timer_show_in_list,
    DROP COLUMN IF EXISTS timer_is_public,
    DROP COLUMN IF EXISTS google_user_id,
    DROP COLUMN IF EXISTS real_name;
-- Fails, rather than inventing passwords, while OAuth-only users exist: remove or fix them first.
ALTER TABLE users ALTER COLUMN password_hash SET NOT NULL;
