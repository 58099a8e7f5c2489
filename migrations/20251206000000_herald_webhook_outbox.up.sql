-- The webhook outbox: every event is recorded by a trigger in the transaction of the change that
-- causes it, so an event exists exactly when its change committed. Nothing is recorded for a kind
-- no enabled endpoint subscribes to. One delivery row per (event, endpoint).

CREATE TABLE webhook_events (
    id           uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    event_type   varchar(40) NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    -- The email it is about, and its place among that email's events (1, 2, …).
    email_job_id text,
    sequence     integer,
    -- The event's data without any address; `recipient` is added for endpoints that opted in.
    data         jsonb NOT NULL,
    recipient    varchar(255),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_webhook_events_created_at ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id          uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    event_id    uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status      varchar(20) NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX idx_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE TRIGGER update_webhook_deliveries_updated_at BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- Every POST made for a delivery: what came back and how long it took.
CREATE TABLE webhook_attempts (
    id               uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    latency_ms       integer NOT NULL CHECK (latency_ms >= 0),
    error            text,
    -- The first bytes of the answer's body (at most 512).
    response_excerpt text CHECK (length(response_excerpt) <= 512),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- A UUIDv7 written as a ULID (both start with the Unix time in ms): the delivery job's id, so
-- the trigger can queue it in apalis without a round trip to the application.
CREATE FUNCTION ulid_of(u uuid) RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    bits bit(130) := B'00' || ('x' || encode(uuid_send(u), 'hex'))::bit(128);
    alphabet text := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    out text := '';
BEGIN
    FOR i IN 0..25 LOOP
        out := out || substr(alphabet, substring(bits FROM i * 5 + 1 FOR 5)::integer + 1, 1);
    END LOOP;
    RETURN out;
END $$;

-- The per-email event counter (row-locked by the change itself, so strictly increasing).
ALTER TABLE email_deliveries ADD COLUMN webhook_sequence integer NOT NULL DEFAULT 0;

-- Records one event and its deliveries; returns whether any endpoint subscribes.
CREATE FUNCTION webhook_record(kind text, job_id text, seq integer, recipient text, data jsonb)
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
    -- One delivery per subscribed endpoint, each with its job on the herald.webhooks queue (24
    -- runs: the worker's backoff spreads them over about three days).
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

CREATE FUNCTION webhook_email_events() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- WHEN keeps the common updates (claims, notes) from calling the function at all.
CREATE TRIGGER webhook_email_events BEFORE UPDATE ON email_deliveries
    FOR EACH ROW
    WHEN ((NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('sent', 'failed', 'suppressed'))
          OR (OLD.delivered_at IS NULL AND NEW.delivered_at IS NOT NULL)
          OR (OLD.bounced_at IS NULL AND NEW.bounced_at IS NOT NULL)
          OR (OLD.complained_at IS NULL AND NEW.complained_at IS NOT NULL))
    EXECUTE FUNCTION webhook_email_events();

CREATE FUNCTION webhook_suppression_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM webhook_record('suppression.created', NULL, NULL, NEW.email,
            jsonb_build_object('type', NEW.suppression_type, 'reason', NEW.reason,
                               'transactional', NEW.suppress_transactional,
                               'marketing', NEW.suppress_marketing));
        RETURN NEW;
    END IF;
    PERFORM webhook_record('suppression.removed', NULL, NULL, OLD.email,
        jsonb_build_object('type', OLD.suppression_type));
    RETURN OLD;
END $$;
CREATE TRIGGER webhook_suppression_events AFTER INSERT OR DELETE ON email_suppressions
    FOR EACH ROW EXECUTE FUNCTION webhook_suppression_events();

CREATE FUNCTION webhook_compliance_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_record(CASE WHEN NEW.paused THEN 'compliance.paused' ELSE 'compliance.resumed' END,
        NULL, NULL, NULL, jsonb_build_object('category', NEW.category, 'reason', NEW.reason));
    RETURN NEW;
END $$;
CREATE TRIGGER webhook_compliance_events AFTER UPDATE ON compliance_pauses
    FOR EACH ROW WHEN (OLD.paused IS DISTINCT FROM NEW.paused)
    EXECUTE FUNCTION webhook_compliance_events();
