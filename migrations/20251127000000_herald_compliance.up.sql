-- The compliance guard's pause per category, shared by every worker.
CREATE TABLE compliance_pauses (
    category   varchar(20) PRIMARY KEY CHECK (category IN ('transactional', 'marketing')),
    paused     boolean NOT NULL DEFAULT false,
    reason     text,
    paused_at  timestamptz,
    resumed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO compliance_pauses (category) VALUES ('transactional'), ('marketing');
CREATE TRIGGER update_compliance_pauses_updated_at BEFORE UPDATE ON compliance_pauses
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- Rates are computed over recent sends by category.
CREATE INDEX idx_email_deliveries_sent_at ON email_deliveries (sent_at) WHERE status = 'sent';
