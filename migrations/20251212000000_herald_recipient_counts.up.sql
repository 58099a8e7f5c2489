-- An email can go to several recipients (to, cc, bcc): the compliance rates count recipients, as
-- SES does. `recipients` is how many the email was sent to (written with its claim when it lists
-- more than one); the hard-bounced and complaining recipients are kept by address so that SES
-- reporting one of them twice still counts once. Rows from before have none listed: their
-- bounce_type and complained_at still count one recipient.
ALTER TABLE email_deliveries
    ADD COLUMN recipients smallint NOT NULL DEFAULT 1 CHECK (recipients BETWEEN 1 AND 50),
    ADD COLUMN hard_bounced_recipients text[],
    ADD COLUMN complained_recipients text[];
