-- Outbound webhooks: the endpoints an application registers, the events Herald records for them
-- (an outbox, written in the transaction of the change that causes each), and every delivery
-- attempt. See docs/webhooks.md.

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    url                         text NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    description                 text CHECK (length(description) <= 500),
    events                      text[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 20),
    -- Payloads carry full recipient addresses only when the endpoint asked for them.
    include_addresses           boolean NOT NULL DEFAULT false,
    -- The signing key (base64, the part after `whsec_`); the previous one is still used to sign,
    -- beside the new one, until it expires (a rotation's overlap).
    secret                      text NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    enabled                     boolean NOT NULL DEFAULT true,
    disabled_reason             text,
    -- Since when every delivery failed (cleared by a success); a day of it disables the endpoint.
    failing_since               timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER update_webhook_endpoints_updated_at BEFORE UPDATE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
