-- The system user owns seeded content. Its password hash is '!', which no hash function produces,
-- so nobody can sign in as it; the .invalid domain can never receive mail.
INSERT INTO users (email, password_hash, display_name, slug)
VALUES ('system@herald.invalid', '!', 'System', 'system');

CREATE TABLE phrases (
    id          uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    phrase_text varchar(500) NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_by  uuid NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_phrases_created_by ON phrases (created_by);
CREATE TRIGGER update_phrases_updated_at BEFORE UPDATE ON phrases
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

INSERT INTO phrases (phrase_text, created_by)
SELECT t.phrase_text, u.id
FROM users u
CROSS JOIN (VALUES
    ('Every day without an incident is a day someone chose to be careful.'),
    ('Small habits, repeated daily, build the safest teams in the world.'),
    ('The best time to fix a near miss is before it becomes an accident.'),
    ('Progress is measured in quiet days, not in heroic recoveries.'),
    ('Ask one more question today; it may save somebody a bad afternoon.'),
    ('Slow is smooth and smooth is fast, especially when it matters most.'),
    ('A checklist is a promise you make to your future, tired self.'),
    ('Resetting the timer is not failure; hiding the reset would be.'),
    ('Good teams talk about mistakes early, openly and without blame.'),
    ('Pause, breathe, look twice: the simplest safety system still works.'),
    ('Your streak is built one careful decision at a time, starting now.'),
    ('Learning from yesterday is how today stays uneventful and calm.'),
    ('Make the safe way the easy way, and people will take it every time.'),
    ('Celebrate the boring days: they are the ones you worked hardest for.'),
    ('Curiosity about small problems keeps the big ones from ever arriving.'),
    ('Leave every place a little tidier and safer than you found it.'),
    ('Courage is saying "stop" when something feels wrong, even if busy.'),
    ('Tomorrow''s record starts with the attention you give right now.'),
    ('Nobody remembers the accident that did not happen, but it mattered.'),
    ('Keep going: consistency beats intensity on every long road.')
) AS t (phrase_text)
WHERE u.slug = 'system';

CREATE TABLE user_excluded_phrases (
    id          uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    phrase_id   uuid NOT NULL REFERENCES phrases (id) ON DELETE CASCADE,
    excluded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, phrase_id)
);
CREATE INDEX idx_user_excluded_phrases_phrase_id ON user_excluded_phrases (phrase_id);

CREATE TABLE phrase_suggestions (
    id           uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    phrase_text  varchar(500) NOT NULL,
    status       varchar(20) NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'rejected')),
    admin_id     uuid REFERENCES users (id) ON DELETE SET NULL,
    admin_reason text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_phrase_suggestions_user_id ON phrase_suggestions (user_id);
CREATE INDEX idx_phrase_suggestions_status ON phrase_suggestions (status);
CREATE INDEX idx_phrase_suggestions_admin_id ON phrase_suggestions (admin_id);
CREATE TRIGGER update_phrase_suggestions_updated_at BEFORE UPDATE ON phrase_suggestions
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
