-- Engagement from SES event publishing (Open, Click, DeliveryDelay, Reject, Rendering Failure):
-- the ledger counts each one (engagements) and keeps the latest (last_engagement: type, at,
-- recipient, data), which makes the webhook trigger record email.opened, email.clicked,
-- email.delivery_delayed or email.rejected. A Reject or Rendering Failure is final: rejected_at.
-- Feedback events keep what a record adds (a click's link, a reject's reason) in detail.
ALTER TABLE email_deliveries
    ADD COLUMN engagements integer NOT NULL DEFAULT 0,
    ADD COLUMN last_engagement jsonb,
    ADD COLUMN rejected_at timestamptz;
ALTER TABLE email_feedback_events ADD COLUMN detail jsonb;

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
             THEN 'email.complained' END,
        CASE WHEN NEW.engagements > OLD.engagements THEN
            CASE NEW.last_engagement->>'type'
                WHEN 'open' THEN 'email.opened'
                WHEN 'click' THEN 'email.clicked'
                WHEN 'delivery_delay' THEN 'email.delivery_delayed'
                WHEN 'reject' THEN 'email.rejected'
                WHEN 'rendering_failure' THEN 'email.rejected' END END]
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
            WHEN 'email.opened' THEN jsonb_build_object(
                'opened_at', NEW.last_engagement->'at',
                'user_agent', NEW.last_engagement->'data'->'user_agent')
            WHEN 'email.clicked' THEN jsonb_build_object(
                'clicked_at', NEW.last_engagement->'at',
                'link', NEW.last_engagement->'data'->'link',
                'link_tags', coalesce(NEW.last_engagement->'data'->'link_tags', '{}'::jsonb),
                'user_agent', NEW.last_engagement->'data'->'user_agent')
            WHEN 'email.delivery_delayed' THEN jsonb_build_object(
                'delayed_at', NEW.last_engagement->'at',
                'delay_type', NEW.last_engagement->'data'->'delay_type',
                'expiration_time', NEW.last_engagement->'data'->'expiration_time')
            WHEN 'email.rejected' THEN jsonb_build_object(
                'rejected_at', NEW.last_engagement->'at',
                'kind', NEW.last_engagement->'type',
                'reason', NEW.last_engagement->'data'->'reason')
            ELSE '{}'::jsonb END;
        INSERT INTO webhook_events (event_type, email_job_id, sequence, data, recipient)
        SELECT kind, NEW.job_id, NEW.webhook_sequence + 1,
               jsonb_build_object('job_id', NEW.job_id, 'template', NEW.template,
                                  'category', NEW.category, 'ses_message_id', NEW.ses_message_id,
                                  'tags', email_job_tags(NEW.job_id)) || extra,
               CASE WHEN kind IN ('email.delivered', 'email.bounced', 'email.complained')
                    THEN coalesce(NEW.feedback_recipient, NEW.recipient)
                    WHEN kind IN ('email.opened', 'email.clicked', 'email.delivery_delayed', 'email.rejected')
                    THEN coalesce(NEW.last_engagement->>'recipient', NEW.recipient)
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
          OR coalesce(cardinality(NEW.complained_recipients), 0) > coalesce(cardinality(OLD.complained_recipients), 0)
          OR NEW.engagements > OLD.engagements)
    EXECUTE FUNCTION webhook_email_events();
