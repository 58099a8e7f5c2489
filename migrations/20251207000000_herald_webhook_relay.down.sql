DROP FUNCTION webhook_fan_out(integer);
CREATE OR REPLACE FUNCTION webhook_email_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kinds text[] := '{}';
    kind text;
    base jsonb;
    extra jsonb;
BEGIN
    -- The common case, no endpoint at all, is decided before anything is built.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.enabled) THEN
        RETURN NEW;
    END IF;
    base := jsonb_build_object('job_id', NEW.job_id, 'template', NEW.template,
                               'category', NEW.category, 'ses_message_id', NEW.ses_message_id);
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('sent', 'failed', 'suppressed') THEN
        kinds := kinds || ('email.' || NEW.status);
    END IF;
    IF OLD.delivered_at IS NULL AND NEW.delivered_at IS NOT NULL THEN
        kinds := kinds || 'email.delivered'::text;
    END IF;
    IF OLD.bounced_at IS NULL AND NEW.bounced_at IS NOT NULL THEN
        kinds := kinds || 'email.bounced'::text;
    END IF;
    IF OLD.complained_at IS NULL AND NEW.complained_at IS NOT NULL THEN
        kinds := kinds || 'email.complained'::text;
    END IF;
    FOREACH kind IN ARRAY kinds LOOP
        extra := CASE kind
            WHEN 'email.sent' THEN jsonb_build_object('sent_at', NEW.sent_at)
            WHEN 'email.failed' THEN jsonb_build_object('reason', NEW.last_error)
            WHEN 'email.delivered' THEN jsonb_build_object('delivered_at', NEW.delivered_at)
            WHEN 'email.bounced' THEN jsonb_build_object(
                'bounced_at', NEW.bounced_at, 'bounce_type', NEW.bounce_type,
                'hard', NEW.bounce_type = 'Permanent')
            WHEN 'email.complained' THEN jsonb_build_object('complained_at', NEW.complained_at)
            ELSE '{}'::jsonb END;
        IF webhook_record(kind, NEW.job_id, NEW.webhook_sequence + 1, NEW.recipient, base || extra) THEN
            NEW.webhook_sequence := NEW.webhook_sequence + 1;
        END IF;
    END LOOP;
    RETURN NEW;
END $$;

-- The trigger made the deliveries before the relay existed.
CREATE OR REPLACE FUNCTION webhook_record(kind text, job_id text, seq integer, recipient text, data jsonb)
    RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    event uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.enabled AND kind = ANY (e.events)) THEN
        RETURN false;
    END IF;
    INSERT INTO webhook_events (event_type, email_job_id, sequence, data, recipient)
    VALUES (kind, job_id, seq, data, recipient)
    RETURNING id INTO event;
    WITH delivery AS (
        INSERT INTO webhook_deliveries (event_id, endpoint_id)
        SELECT event, e.id FROM webhook_endpoints e WHERE e.enabled AND kind = ANY (e.events)
        RETURNING id
    )
    INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority,
                             metadata, idempotency_key)
    SELECT ulid_of(d.id), 'herald.webhooks',
           convert_to(jsonb_build_object('delivery_id', d.id)::text, 'UTF8'),
           'Pending', 0, 24, now(), 0, ''::hstore, NULL
    FROM delivery d;
    RETURN true;
END $$;
CREATE INDEX idx_webhook_events_created_at ON webhook_events (created_at);
DROP INDEX idx_webhook_events_waiting;
ALTER TABLE webhook_events DROP COLUMN fanned_out_at;
