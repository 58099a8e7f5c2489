DROP TABLE IF EXISTS email_sending_control;
DROP TABLE IF EXISTS api_idempotency_keys;
DROP TABLE IF EXISTS email_deliveries;
