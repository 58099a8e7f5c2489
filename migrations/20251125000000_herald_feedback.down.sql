DROP FUNCTION IF EXISTS suppression_rank(text);
ALTER TABLE email_deliveries
    DROP COLUMN IF EXISTS complained_at,
    DROP COLUMN IF EXISTS bounce_type,
    DROP COLUMN IF EXISTS bounced_at,
    DROP COLUMN IF EXISTS delivered_at;
DROP TABLE IF EXISTS email_feedback_events;
