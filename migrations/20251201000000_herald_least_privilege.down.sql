DROP FUNCTION prune_email_feedback_events(timestamptz, bigint);
DROP FUNCTION user_email_verified(uuid);
