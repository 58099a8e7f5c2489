CREATE OR REPLACE FUNCTION email_send_blocker(address text, category text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM email_suppressions s
                     WHERE s.email = lower(btrim($1))
                       AND (s.suppress_transactional OR ($2 = 'marketing' AND s.suppress_marketing)))
            THEN 'suppressed'
        WHEN EXISTS (SELECT 1 FROM email_sending_control WHERE paused_until > now())
            THEN 'paused'
        WHEN coalesce((SELECT c.paused FROM compliance_pauses c WHERE c.category = $2), false)
            THEN 'held'
    END
$$;

DROP FUNCTION email_send_blocks(text, text);
