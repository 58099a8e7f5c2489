//! Scheduled maintenance: the schedules (cron, UTC), one job per tick across every worker, and the
//! three jobs (token expiry, search-index repair, retention).

pub mod tasks;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use cron::Schedule;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::config::{ConfigError, Env, parse_or};

/// The apalis queue of maintenance jobs.
pub const MAINTENANCE_QUEUE: &str = crate::jobs::Queue::Maintenance.name();

/// The maintenance jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Delete expired tokens.
    ExpireTokens,
    /// Repair search vectors, then ANALYZE.
    RefreshSearchIndex,
    /// Delete finished jobs and old events.
    Prune,
    /// Recompute the bounce and complaint rates; pause or resume sending.
    CheckCompliance,
}

impl Task {
    /// Every task.
    pub const ALL: [Task; 4] = [
        Task::ExpireTokens,
        Task::RefreshSearchIndex,
        Task::Prune,
        Task::CheckCompliance,
    ];

    /// The schedule's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExpireTokens => "expire_tokens",
            Self::RefreshSearchIndex => "refresh_search_index",
            Self::Prune => "prune",
            Self::CheckCompliance => "check_compliance",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Self::ExpireTokens => "EXPIRE_TOKENS_CRON",
            Self::RefreshSearchIndex => "REFRESH_SEARCH_CRON",
            Self::Prune => "PRUNE_CRON",
            Self::CheckCompliance => "COMPLIANCE_CHECK_CRON",
        }
    }

    fn default_cron(self) -> &'static str {
        match self {
            Self::ExpireTokens => "*/15 * * * *",
            Self::RefreshSearchIndex => "0 * * * *",
            Self::Prune => "0 3 * * *",
            Self::CheckCompliance => "* * * * *",
        }
    }
}

impl crate::jobs::QueueJob for MaintenanceJob {
    const QUEUE: &'static str = MAINTENANCE_QUEUE;
}

/// The payload of a maintenance job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceJob {
    /// What to do.
    pub task: Task,
    /// The tick it is for.
    pub tick: DateTime<Utc>,
}

/// A schedule: a task and its cron expression (UTC).
#[derive(Debug, Clone)]
pub struct TaskSchedule {
    /// The task.
    pub task: Task,
    /// The expression as configured.
    pub expression: String,
    /// The parsed schedule.
    pub schedule: Schedule,
}

impl TaskSchedule {
    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after).next()
    }

    /// The latest tick in `(since, until]`, looking at no more than 1,000,000 ticks.
    pub fn latest_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&since)
            .take(1_000_000)
            .take_while(|t| *t <= until)
            .last()
    }
}

/// Parses a cron expression: standard 5 fields (minute hour day month weekday), or 6–7 fields with
/// seconds first (and a year last).
pub fn parse_cron(expression: &str) -> Result<Schedule, String> {
    let fields = expression.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expression}"),
        6 | 7 => expression.to_owned(),
        n => return Err(format!("expected 5 to 7 fields, got {n}")),
    };
    Schedule::from_str(&full).map_err(|e| e.to_string())
}

/// The schedules from `EXPIRE_TOKENS_CRON`, `REFRESH_SEARCH_CRON` and `PRUNE_CRON`.
pub fn schedules_from(env: &impl Env) -> Result<Vec<TaskSchedule>, ConfigError> {
    Task::ALL
        .iter()
        .map(|task| {
            let expression = env
                .get(task.env_var())
                .unwrap_or_else(|| task.default_cron().to_owned());
            let schedule = parse_cron(&expression).map_err(|reason| ConfigError::Invalid {
                var: task.env_var(),
                reason: format!("not a cron expression ({reason})"),
            })?;
            Ok(TaskSchedule {
                task: *task,
                expression,
                schedule,
            })
        })
        .collect()
}

/// The knobs of the maintenance jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `EXPIRY_BATCH_SIZE` (5000): rows per DELETE.
    pub expiry_batch_size: i64,
    /// `USED_RESET_TOKEN_RETENTION_HOURS` (24): used reset tokens are deleted after this.
    pub used_reset_token_retention: chrono::Duration,
    /// `SEARCH_REFRESH_BATCH_SIZE` (1000): rows per UPDATE.
    pub search_batch_size: i64,
    /// `REINDEX_SEARCH_CONCURRENTLY` (false): also `REINDEX INDEX CONCURRENTLY` the search indexes.
    pub reindex_concurrently: bool,
    /// `PRUNE_BATCH_SIZE` (5000): rows per DELETE.
    pub prune_batch_size: i64,
    /// `JOB_RETENTION_DAYS` (7): succeeded and cancelled jobs.
    pub job_retention: chrono::Duration,
    /// `FAILED_JOB_RETENTION_DAYS` (30): jobs that failed for good.
    pub failed_job_retention: chrono::Duration,
    /// `EVENT_RETENTION_DAYS` (90): feedback events, send-ledger rows and idempotency keys.
    pub event_retention: chrono::Duration,
}

fn positive(var: &'static str, v: i64) -> Result<i64, ConfigError> {
    if v > 0 {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            var,
            reason: "must be greater than 0".into(),
        })
    }
}

impl Settings {
    /// Reads the settings.
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        let days = |var, default| -> Result<chrono::Duration, ConfigError> {
            Ok(chrono::Duration::days(positive(
                var,
                parse_or(env, var, default)?,
            )?))
        };
        Ok(Self {
            expiry_batch_size: positive(
                "EXPIRY_BATCH_SIZE",
                parse_or(env, "EXPIRY_BATCH_SIZE", 5000)?,
            )?,
            used_reset_token_retention: chrono::Duration::hours(positive(
                "USED_RESET_TOKEN_RETENTION_HOURS",
                parse_or(env, "USED_RESET_TOKEN_RETENTION_HOURS", 24)?,
            )?),
            search_batch_size: positive(
                "SEARCH_REFRESH_BATCH_SIZE",
                parse_or(env, "SEARCH_REFRESH_BATCH_SIZE", 1000)?,
            )?,
            reindex_concurrently: parse_or(env, "REINDEX_SEARCH_CONCURRENTLY", false)?,
            prune_batch_size: positive(
                "PRUNE_BATCH_SIZE",
                parse_or(env, "PRUNE_BATCH_SIZE", 5000)?,
            )?,
            job_retention: days("JOB_RETENTION_DAYS", 7)?,
            failed_job_retention: days("FAILED_JOB_RETENTION_DAYS", 30)?,
            event_retention: days("EVENT_RETENTION_DAYS", 90)?,
        })
    }
}

/// The idempotency key of a tick: the same on every worker, so the tick is enqueued once.
pub fn tick_key(task: Task, tick: DateTime<Utc>) -> String {
    format!(
        "{}@{}",
        task.name(),
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Enqueues the job of one tick; false if another worker already did.
pub async fn enqueue_tick(
    conn: &mut PgConnection,
    task: Task,
    tick: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let options = crate::jobs::EnqueueOptions {
        max_attempts: 3,
        run_at: None,
        idempotency_key: Some(tick_key(task, tick)),
    };
    let fresh = crate::jobs::enqueue(&mut *conn, &MaintenanceJob { task, tick }, options)
        .await
        .map_err(crate::jobs::JobError::into_sqlx)?
        != crate::jobs::Enqueued::Duplicate;
    sqlx::query!(
        "UPDATE maintenance_schedules SET last_tick_at = GREATEST(coalesce(last_tick_at, $2), $2) WHERE name = $1",
        task.name(),
        tick
    )
    .execute(&mut *conn)
    .await?;
    Ok(fresh)
}

/// Records a schedule as this worker runs it; returns the last tick any worker enqueued.
pub async fn register(
    conn: &mut PgConnection,
    s: &TaskSchedule,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let row = sqlx::query_scalar!(
        "INSERT INTO maintenance_schedules (name, cron) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron
         RETURNING last_tick_at",
        s.task.name(),
        s.expression
    )
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    /// Name.
    pub name: String,
    /// Cron expression (UTC).
    pub cron: String,
    /// The next tick.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub next_tick_at: Option<DateTime<Utc>>,
    /// The latest tick's job, if any ran.
    pub last_run: Option<LastRun>,
}

/// The job of a schedule's latest tick.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// Job id.
    pub job_id: String,
    /// When it was enqueued (the tick).
    #[serde(serialize_with = "crate::time::ms")]
    pub enqueued_at: DateTime<Utc>,
    /// When it finished.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Herald job status.
    pub status: crate::jobs::JobStatus,
    /// What the job reported (`{"Ok": …}` / `{"Err": …}` as apalis stores it).
    pub result: Option<serde_json::Value>,
}

/// Every registered schedule with its next tick and last run.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<ScheduleView>, sqlx::Error> {
    let rows = sqlx::query!("SELECT name, cron FROM maintenance_schedules ORDER BY name")
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let last = crate::jobs::latest_by_key_prefix(&mut *conn, MAINTENANCE_QUEUE, &row.name)
            .await
            .map_err(crate::jobs::JobError::into_sqlx)?;
        let next_tick_at = parse_cron(&row.cron)
            .ok()
            .and_then(|s| s.after(&Utc::now()).next());
        out.push(ScheduleView {
            name: row.name,
            cron: row.cron,
            next_tick_at,
            last_run: last.map(|j| LastRun {
                status: j.status(),
                job_id: j.id,
                enqueued_at: j.run_at,
                finished_at: j.done_at,
                result: j.last_result,
            }),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_expressions_name_their_variable() {
        let s = schedules_from(&[("PRUNE_CRON", "30 2 * * *")]).expect("valid");
        assert_eq!(s.len(), 4);
        let prune = &s[2];
        let next = prune
            .next_after("2026-11-26T10:00:00Z".parse().expect("time"))
            .expect("tick");
        assert_eq!(next.to_rfc3339(), "2026-11-27T02:30:00+00:00");
        let err = schedules_from(&[("EXPIRE_TOKENS_CRON", "every day")]).expect_err("bad");
        assert!(err.to_string().starts_with("EXPIRE_TOKENS_CRON"), "{err}");
    }

    #[test]
    fn the_latest_missed_tick_is_found() {
        let s = &schedules_from(&[("EXPIRE_TOKENS_CRON", "*/15 * * * *")]).expect("valid")[0];
        let since: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().expect("time");
        let until: DateTime<Utc> = "2026-11-26T11:07:00Z".parse().expect("time");
        assert_eq!(
            s.latest_between(since, until)
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2026-11-26T11:00:00+00:00")
        );
        assert_eq!(s.latest_between(since, since), None);
        assert_eq!(tick_key(Task::Prune, since), "prune@2026-11-26T10:00:00Z");
    }
}
