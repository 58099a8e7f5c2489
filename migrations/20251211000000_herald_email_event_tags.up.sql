-- Email events carry the email's tags, and feedback events name the recipient SES reported: an
-- email now has several recipients, and a bounce of its cc is about the cc, not the first `to`.
-- feedback_recipient is the recipient of the latest feedback recorded on the row
-- (ledger::record_feedback writes it with the feedback).
ALTER TABLE email_deliveries ADD COLUMN feedback_recipient text;

-- The tags are read from the job's payload (they are immutable and live there), only when an
-- endpoint subscribes to the event: the email path without webhooks pays nothing. An event after
-- the job was pruned (JOB_RETENTION_DAYS) carries no tags. A function of its own, whose statement
-- is parsed only when it runs: the trigger must work before apalis's schema exists.
CREATE FUNCTION email_job_tags(p_job_id text) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regclass('apalis.jobs') IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    RETURN coalesce((SELECT convert_from(j.job, 'UTF8')::jsonb -> 'envelope' -> 'tags'
                     FROM apalis.jobs j WHERE j.id = p_job_id), '{}'::jsonb);
END $$;

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
