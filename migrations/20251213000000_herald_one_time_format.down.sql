-- The trigger as migration 20251211000000 left it.
CREATE OR REPLACE FUNCTION webhook_email_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    extra jsonb;
    recorded integer;
BEGIN
    FOREACH kind IN ARRAY ARRAY[
        CASE WHEN NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('sent', 'failed', 'suppressed')
             THEN 'email.' || NEW.status END,
        CASE WHEN OLD.delivered_at IS NULL AND NEW.delivered_at IS NOT NULL THEN 'email.delivered' END,
        CASE WHEN OLD.bounced_at IS NULL AND NEW.bounced_at IS NOT NULL THEN 'email.bounced' END,
        CASE WHEN OLD.complained_at IS NULL AND NEW.complained_at IS NOT NULL THEN 'email.complained' END]
    LOOP
        CONTINUE WHEN kind IS NULL;
        extra := CASE kind
            WHEN 'email.sent' THEN jsonb_build_object('sent_at', NEW.sent_at)
            WHEN 'email.failed' THEN jsonb_build_object('reason', NEW.last_error)
            WHEN 'email.delivered' THEN jsonb_build_object('delivered_at', NEW.delivered_at)
            WHEN 'email.bounced' THEN jsonb_build_object(
                'bounced_at', NEW.bounced_at, 'bounce_type', NEW.bounce_type,
                'hard', NEW.bounce_type = 'Permanent')
            WHEN 'email.complained' THEN jsonb_build_object('complained_at', NEW.complained_at)
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

DROP FUNCTION api_time(timestamptz);
