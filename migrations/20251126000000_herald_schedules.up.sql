-- The maintenance schedules the workers run, as they registered them (for GET /v1/schedules), and
-- the last tick enqueued, from which a starting worker sees what it missed.
CREATE TABLE maintenance_schedules (
    name         varchar(50) PRIMARY KEY,
    cron         text NOT NULL,
    last_tick_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER update_maintenance_schedules_updated_at BEFORE UPDATE ON maintenance_schedules
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
