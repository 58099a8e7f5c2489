ALTER TABLE email_deliveries
    DROP COLUMN recipients,
    DROP COLUMN hard_bounced_recipients,
    DROP COLUMN complained_recipients;
