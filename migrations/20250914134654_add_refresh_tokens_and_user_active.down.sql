DROP TABLE IF EXISTS refresh_tokens;
DROP INDEX IF EXISTS idx_users_active;
ALTER TABLE users DROP COLUMN IF EXISTS active;
