-- Attachment bytes, stored once per content (keyed by SHA-256) outside the queue's rows: a job's
-- payload names its attachments by hash, so apalis.jobs rows stay small however large the files.
-- last_used_at moves when another email uses the same bytes; retention deletes bytes no email
-- has used for EVENT_RETENTION_DAYS, the ledger's own retention.
CREATE TABLE email_attachment_blobs (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    sha256 bytea NOT NULL UNIQUE CHECK (octet_length(sha256) = 32),
    content bytea NOT NULL,
    size integer NOT NULL CHECK (size >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now()
);
-- The bytes are already compressed or binary more often than not: keep them out of line, not
-- compressed again.
ALTER TABLE email_attachment_blobs ALTER COLUMN content SET STORAGE EXTERNAL;
CREATE INDEX idx_email_attachment_blobs_last_used_at ON email_attachment_blobs (last_used_at);
