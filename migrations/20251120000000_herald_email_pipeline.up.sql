-- Herald's own tables for the email pipeline. The job queue itself lives in schema `apalis`,
-- created by apalis-postgres's own migrations (herald-migrate runs both).

-- The send ledger: one row per email job, written before and after the SES call so that a
-- retried or rescued job never sends again once SES accepted it.
CREATE TABLE email_deliveries (
    id                 uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    job_id             text NOT NULL UNIQUE,
    recipient          varchar(255) NOT NULL,
    template           varchar(100) NOT NULL,
    category           varchar(20) NOT NULL CHECK (category IN ('transactional', 'marketing')),
    status             varchar(20) NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'sending', 'sent', 'suppressed', 'failed')),
    ses_message_id     text UNIQUE,
    attempts           integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Attempts that found the row still 'sending': the process died after the SES call began, so
    -- SES may have accepted the earlier attempt; the resend is counted here.
    uncertain_resends  integer NOT NULL DEFAULT 0 CHECK (uncertain_resends >= 0),
    last_error         text,
    -- The verification or reset token issued for the current attempt (its hash only).
    token_id           uuid,
    sending_started_at timestamptz,
    sent_at            timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_email_deliveries_recipient ON email_deliveries (recipient);
CREATE INDEX idx_email_deliveries_created_at ON email_deliveries (created_at);
CREATE TRIGGER update_email_deliveries_updated_at BEFORE UPDATE ON email_deliveries
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- Idempotency-Key of POST /v1/emails: the same key and body give the same job.
CREATE TABLE api_idempotency_keys (
    idempotency_key varchar(255) PRIMARY KEY,
    request_sha256  char(64) NOT NULL,
    job_id          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_api_idempotency_keys_created_at ON api_idempotency_keys (created_at);

-- State every worker process shares: the sending pause and the rate limiter's next free slot.
CREATE TABLE email_sending_control (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    paused_until   timestamptz,
    pause_reason   text,
    next_send_slot timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO email_sending_control DEFAULT VALUES;
CREATE TRIGGER update_email_sending_control_updated_at BEFORE UPDATE ON email_sending_control
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
