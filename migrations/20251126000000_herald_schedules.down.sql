DROP TABLE IF EXISTS maintenance_schedules;
