DROP TABLE feedback_queue_depths;
DROP TABLE feedback_rejections;
DROP FUNCTION email_attempt_log_append(jsonb, jsonb);
ALTER TABLE email_deliveries DROP COLUMN attempt_log;
