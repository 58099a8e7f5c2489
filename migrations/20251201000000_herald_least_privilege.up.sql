-- Two narrow doors for a data-only application role (scripts/setup-db.sh --app-role), so that the
-- role needs no rights on user_roles or to delete audit rows. Both run as their owner (the
-- migrating role), pin search_path, and are executable only by roles granted them.

-- Whether a user holds the email-verified role: the API asks this before queueing a verification
-- email; the role may not read (or write) user_roles or roles.
CREATE FUNCTION user_email_verified(p_user_id uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM user_roles ur JOIN roles r ON r.id = ur.role_id
                   WHERE ur.user_id = p_user_id AND r.name = 'email-verified')
$$;
REVOKE EXECUTE ON FUNCTION user_email_verified(uuid) FROM PUBLIC;

-- email_feedback_events is the audit trail of feedback and suppression changes: the role may
-- insert and read it, never update or delete. Retention is the one way out, and only for rows
-- older than a day, so a compromised role cannot erase what it just did.
CREATE FUNCTION prune_email_feedback_events(p_before timestamptz, p_limit bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF p_before > now() - interval '1 day' THEN
        RAISE EXCEPTION 'feedback events younger than a day are kept (cutoff %)', p_before
            USING ERRCODE = '22023';
    END IF;
    WITH doomed AS (SELECT id FROM email_feedback_events WHERE created_at < p_before
                    ORDER BY created_at LIMIT p_limit FOR UPDATE SKIP LOCKED)
    DELETE FROM email_feedback_events e USING doomed WHERE e.id = doomed.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION prune_email_feedback_events(timestamptz, bigint) FROM PUBLIC;
