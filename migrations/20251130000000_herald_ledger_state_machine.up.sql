-- The send ledger as a state machine (shared/src/email/ledger.rs is its only writer):
-- cancelled emails, whether the last SES call's outcome was unknown, and the send rule once.

ALTER TABLE email_deliveries DROP CONSTRAINT email_deliveries_status_check;
ALTER TABLE email_deliveries ADD CONSTRAINT email_deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'suppressed', 'failed', 'cancelled'));

-- Set when an SES call ended without an answer (timeout, connection lost after the request was
-- written); kept when the email then fails for good, so that an operator's retry is counted as an
-- uncertain resend. Cleared by the next claim.
ALTER TABLE email_deliveries ADD COLUMN outcome_unknown boolean NOT NULL DEFAULT false;

-- May an email to `address` in `category` be sent now? NULL if so, else what blocks it:
-- 'suppressed' (the address, for that category), 'paused' (SES or an operator paused every
-- worker), 'held' (the compliance guard holds the category). Suppression comes first: it is final,
-- the others pass. The worker's step-by-step gate, its grouped claim and the API's enqueue check
-- all ask this function. A single SELECT without FROM, so the planner inlines it ($1/$2 rather
-- than names: a column called category would win over a parameter of that name).
CREATE FUNCTION email_send_blocker(address text, category text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM email_suppressions s
                     WHERE s.email = lower(btrim($1))
                       AND (s.suppress_transactional OR ($2 = 'marketing' AND s.suppress_marketing)))
            THEN 'suppressed'
        WHEN EXISTS (SELECT 1 FROM email_sending_control WHERE paused_until > now())
            THEN 'paused'
        WHEN coalesce((SELECT c.paused FROM compliance_pauses c WHERE c.category = $2), false)
            THEN 'held'
    END
$$;
