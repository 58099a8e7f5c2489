CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The vectors are computed by these functions so that the triggers, the backfill and the
-- maintenance job that repairs stale vectors all agree on one definition.
CREATE FUNCTION users_compute_search_vector(display_name text, email text, slug text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT to_tsvector('english'::regconfig,
        coalesce(display_name, '') || ' ' || coalesce(email, '') || ' ' || coalesce(slug, ''))
$fn$;

CREATE FUNCTION phrases_compute_search_vector(phrase_text text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT to_tsvector('english'::regconfig, coalesce(phrase_text, ''))
$fn$;

CREATE FUNCTION users_search_vector_update() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    NEW.search_vector := users_compute_search_vector(NEW.display_name, NEW.email, NEW.slug);
    RETURN NEW;
END
$fn$;

CREATE FUNCTION phrases_search_vector_update() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    NEW.search_vector := phrases_compute_search_vector(NEW.phrase_text);
    RETURN NEW;
END
$fn$;

ALTER TABLE users ADD COLUMN search_vector tsvector;
ALTER TABLE phrases ADD COLUMN search_vector tsvector;

-- Backfill without touching updated_at: filling a derived column is not a user's edit.
ALTER TABLE users DISABLE TRIGGER update_users_updated_at;
UPDATE users SET search_vector = users_compute_search_vector(display_name, email, slug);
ALTER TABLE users ENABLE TRIGGER update_users_updated_at;
ALTER TABLE phrases DISABLE TRIGGER update_phrases_updated_at;
UPDATE phrases SET search_vector = phrases_compute_search_vector(phrase_text);
ALTER TABLE phrases ENABLE TRIGGER update_phrases_updated_at;

CREATE TRIGGER users_search_vector_trigger
    BEFORE INSERT OR UPDATE OF display_name, email, slug ON users
    FOR EACH ROW EXECUTE FUNCTION users_search_vector_update();
CREATE TRIGGER phrases_search_vector_trigger
    BEFORE INSERT OR UPDATE OF phrase_text ON phrases
    FOR EACH ROW EXECUTE FUNCTION phrases_search_vector_update();

CREATE INDEX idx_users_search_vector ON users USING gin (search_vector);
CREATE INDEX idx_phrases_search_vector ON phrases USING gin (search_vector);
CREATE INDEX idx_users_display_name_trgm ON users USING gin (display_name gin_trgm_ops);
CREATE INDEX idx_users_email_trgm ON users USING gin (email gin_trgm_ops);
CREATE INDEX idx_users_slug_trgm ON users USING gin (slug gin_trgm_ops);
CREATE INDEX idx_phrases_phrase_text_trgm ON phrases USING gin (phrase_text gin_trgm_ops);

-- Active phrases in key order: the random-phrase and listing queries.
CREATE INDEX idx_phrases_active_id ON phrases (active, id);
