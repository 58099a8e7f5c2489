-- Feedback events per recipient: an email has several, and SES reports each of them. Every
-- recipient's first delivery, bounce or complaint on the message is an event of its own, naming
-- that recipient with the time and bounce type of its own report (feedback_at,
-- feedback_bounce_type). A recipient reported again changes nothing. The row's delivered_at,
-- bounced_at and complained_at stay the first report's.
ALTER TABLE email_deliveries
    ADD COLUMN delivered_recipients text[],
    ADD COLUMN bounced_recipients text[],
    ADD COLUMN feedback_at timestamptz,
    ADD COLUMN feedback_bounce_type text;
-- Rows that had their feedback already: it counts as that of their first recipient, so a report
-- arriving now for the same recipient is not a new event.
UPDATE email_deliveries SET delivered_recipients = ARRAY[recipient] WHERE delivered_at IS NOT NULL;
UPDATE email_deliveries SET bounced_recipients = ARRAY[recipient] WHERE bounced_at IS NOT NULL;
UPDATE email_deliveries SET complained_recipients = ARRAY[recipient]
    WHERE complained_at IS NOT NULL AND complained_recipients IS NULL;

CREATE OR REPLACE FUNCTION webhook_email_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    extra jsonb;
    recorded integer;
BEGIN
    FOREACH kind IN ARRAY ARRAY[
        CASE WHEN NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('sent', 'failed', 'suppressed')
             THEN 'email.' || NEW.status END,
        CASE WHEN coalesce(cardinality(NEW.delivered_recipients), 0) > coalesce(cardinality(OLD.delivered_recipients), 0)
             THEN 'email.delivered' END,
        CASE WHEN coalesce(cardinality(NEW.bounced_recipients), 0) > coalesce(cardinality(OLD.bounced_recipients), 0)
             THEN 'email.bounced' END,
        CASE WHEN coalesce(cardinality(NEW.complained_recipients), 0) > coalesce(cardinality(OLD.complained_recipients), 0)
             THEN 'email.complained' END]
    LOOP
        CONTINUE WHEN kind IS NULL;
        extra := CASE kind
            WHEN 'email.sent' THEN jsonb_build_object('sent_at', api_time(NEW.sent_at))
            WHEN 'email.failed' THEN jsonb_build_object('reason', NEW.last_error)
            WHEN 'email.delivered' THEN jsonb_build_object('delivered_at', api_time(NEW.feedback_at))
            WHEN 'email.bounced' THEN jsonb_build_object(
                'bounced_at', api_time(NEW.feedback_at), 'bounce_type', NEW.feedback_bounce_type,
                'hard', NEW.feedback_bounce_type = 'Permanent')
            WHEN 'email.complained' THEN jsonb_build_object('complained_at', api_time(NEW.feedback_at))
            ELSE '{}'::jsonb END;
        INSERT INTO webhook_events (event_type, email_job_id, sequence, data, recipient)
        SELECT kind, NEW.job_id, NEW.webhook_sequence + 1,
               jsonb_build_object('job_id', NEW.job_id, 'template', NEW.template,
                                  'category', NEW.category, 'ses_message_id', NEW.ses_message_id,
                                  'tags', email_job_tags(NEW.job_id)) || extra,
               CASE WHEN kind IN ('email.delivered', 'email.bounced', 'email.complained')
                    THEN coalesce(NEW.feedback_recipient, NEW.recipient)
                    ELSE NEW.recipient END
        WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.enabled AND kind = ANY (e.events));
        GET DIAGNOSTICS recorded = ROW_COUNT;
        NEW.webhook_sequence := NEW.webhook_sequence + recorded;
    END LOOP;
    RETURN NEW;
END $$;

DROP TRIGGER webhook_email_events ON email_deliveries;
CREATE TRIGGER webhook_email_events BEFORE UPDATE ON email_deliveries
    FOR EACH ROW
    WHEN ((NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('sent', 'failed', 'suppressed'))
          OR coalesce(cardinality(NEW.delivered_recipients), 0) > coalesce(cardinality(OLD.delivered_recipients), 0)
          OR coalesce(cardinality(NEW.bounced_recipients), 0) > coalesce(cardinality(OLD.bounced_recipients), 0)
          OR coalesce(cardinality(NEW.complained_recipients), 0) > coalesce(cardinality(OLD.complained_recipients), 0))
    EXECUTE FUNCTION webhook_email_events();
