-- Console sessions the server can end: the cookie names a row here, sign-out ends it, and a
-- copied cookie stops working with it. Rows past their expiry are pruned by the API at sign-in.
CREATE TABLE admin_sessions (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    -- Which configured admin token opened it (a SHA-256 prefix, never the token).
    token_fingerprint text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX idx_admin_sessions_expires_at ON admin_sessions (expires_at);
