DROP INDEX IF EXISTS idx_phrases_active_id;
DROP INDEX IF EXISTS idx_phrases_phrase_text_trgm;
DROP INDEX IF EXISTS idx_users_slug_trgm;
DROP INDEX IF EXISTS idx_users_email_trgm;
DROP INDEX IF EXISTS idx_users_display_name_trgm;
DROP INDEX IF EXISTS idx_phrases_search_vector;
DROP INDEX IF EXISTS idx_users_search_vector;

DROP TRIGGER IF EXISTS phrases_search_vector_trigger ON phrases;
DROP TRIGGER IF EXISTS users_search_vector_trigger ON users;
ALTER TABLE phrases DROP COLUMN IF EXISTS search_vector;
ALTER TABLE users DROP COLUMN IF EXISTS search_vector;

DROP FUNCTION IF EXISTS phrases_search_vector_update();
DROP FUNCTION IF EXISTS users_search_vector_update();
DROP FUNCTION IF EXISTS phrases_compute_search_vector(text);
DROP FUNCTION IF EXISTS users_compute_search_vector(text, text, text);

DROP EXTENSION IF EXISTS pg_trgm;
