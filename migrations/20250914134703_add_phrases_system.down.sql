DROP TABLE IF EXISTS phrase_suggestions;
DROP TABLE IF EXISTS user_excluded_phrases;
DROP TABLE IF EXISTS phrases;
-- Content the system user owned elsewhere goes with it (role assignments, timers cascade).
DELETE FROM users WHERE slug = 'system';
