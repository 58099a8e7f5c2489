DROP INDEX IF EXISTS idx_email_deliveries_sent_at;
DROP TABLE IF EXISTS compliance_pauses;
