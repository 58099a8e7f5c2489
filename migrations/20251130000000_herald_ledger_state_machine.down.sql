DROP FUNCTION email_send_blocker(text, text);
ALTER TABLE email_deliveries DROP COLUMN outcome_unknown;
-- The earlier schema has no 'cancelled': such emails were never sent, and 'failed' is the
-- nearest state it knows.
UPDATE email_deliveries SET status = 'failed' WHERE status = 'cancelled';
ALTER TABLE email_deliveries DROP CONSTRAINT email_deliveries_status_check;
ALTER TABLE email_deliveries ADD CONSTRAINT email_deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'suppressed', 'failed'));
