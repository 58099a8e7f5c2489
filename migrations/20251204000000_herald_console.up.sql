-- What the operator's console reads that no table kept yet.

-- Each run's outcome on its ledger row (the job page's timeline), the newest 20 kept: apalis
-- keeps only a job's last result. Runs that end `sent` are not logged (the row's own columns say
-- it), so the send path writes nothing more.
ALTER TABLE email_deliveries ADD COLUMN attempt_log jsonb NOT NULL DEFAULT '[]'::jsonb;

CREATE FUNCTION email_attempt_log_append(log jsonb, entry jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (CASE WHEN jsonb_array_length(log) >= 20 THEN log - 0 ELSE log END) || jsonb_build_array(entry);

-- Feedback messages the worker refused (trust checks) or could not parse, counted per reason on
-- their first receive; they stay on the queue for its dead-letter queue.
CREATE TABLE feedback_rejections (
    reason  varchar(60) PRIMARY KEY,
    count   bigint NOT NULL DEFAULT 0 CHECK (count >= 0),
    last_at timestamptz NOT NULL DEFAULT now()
);

-- The feedback queues' depths as a worker last read them (`dead_letter` when it can find the
-- queue's redrive target).
CREATE TABLE feedback_queue_depths (
    queue       varchar(20) PRIMARY KEY CHECK (queue IN ('feedback', 'dead_letter')),
    messages    bigint NOT NULL CHECK (messages >= 0),
    observed_at timestamptz NOT NULL DEFAULT now()
);
