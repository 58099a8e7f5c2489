-- SES feedback (bounces, complaints, deliveries) and suppression changes, one row per recipient.
CREATE TABLE email_feedback_events (
    id               uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    -- bounce, complaint, delivery, other SES event types in lower case, or the admin events
    -- suppression_added / suppression_removed.
    event_type       varchar(40) NOT NULL,
    recipient        varchar(255) NOT NULL,
    ses_message_id   text,
    feedback_id      text,
    bounce_type      varchar(40),
    bounce_sub_type  varchar(60),
    complaint_type   varchar(60),
    sqs_message_id   text,
    occurred_at      timestamptz NOT NULL,
    raw              jsonb,
    -- The same SES event delivered twice has the same key, so it is recorded and applied once.
    -- Admin events have none.
    dedupe_key       text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_email_feedback_events_recipient_type_time
    ON email_feedback_events (recipient, event_type, occurred_at);
CREATE INDEX idx_email_feedback_events_ses_message_id ON email_feedback_events (ses_message_id);
CREATE INDEX idx_email_feedback_events_created_at ON email_feedback_events (created_at);

-- What SES reported about each sent message.
ALTER TABLE email_deliveries
    ADD COLUMN delivered_at  timestamptz,
    ADD COLUMN bounced_at    timestamptz,
    ADD COLUMN bounce_type   varchar(40),
    ADD COLUMN complained_at timestamptz;

-- Which suppression type wins when two meet: a later, weaker event never lowers a stronger one.
CREATE FUNCTION suppression_rank(suppression_type text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT CASE suppression_type
        WHEN 'unsubscribe' THEN 1
        WHEN 'bounce' THEN 2
        WHEN 'complaint' THEN 3
        WHEN 'manual' THEN 4
        ELSE 0
    END
$fn$;
