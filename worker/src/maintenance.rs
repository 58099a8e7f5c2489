//! Scheduled maintenance in the worker: the ticker that enqueues one job per tick (deduplicated
//! across processes) and the job itself, run through the job adapter with its retries and rescue.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_shared::maintenance::{self, MaintenanceJob, Settings, Task, TaskSchedule, tasks};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::job::{HeraldJob, InFlight, Outcome, Runs};

/// What maintenance jobs need.
#[derive(Debug)]
pub struct MaintenanceContext {
    /// Database pool.
    pub pool: PgPool,
    /// Batch sizes and retention.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<herald_shared::metrics::Metrics>,
    /// The compliance guard's settings.
    pub compliance: herald_shared::compliance::Settings,
    /// Maintenance jobs running in this process.
    pub in_flight: Arc<InFlight>,
}

crate::job::job_context!(MaintenanceContext);

/// A failed maintenance run is tried again this much later (up to the job's 3 runs).
const RETRY_AFTER: Duration = Duration::from_secs(30);

impl HeraldJob for MaintenanceJob {
    type Context = MaintenanceContext;

    fn span(&self, id: &str) -> tracing::Span {
        tracing::info_span!("maintenance_job", job_id = %id, task = self.task.name(), tick = %self.tick)
    }

    async fn run(self, id: String, _runs: Runs, ctx: Arc<MaintenanceContext>) -> Outcome {
        match run(&ctx, self.task).await {
            Ok(report) => {
                tracing::info!(job_id = %id, task = self.task.name(), tick = %self.tick, report = %report, "maintenance done");
                Outcome::Done(report)
            }
            Err(err) => {
                tracing::error!(job_id = %id, task = self.task.name(), error = %err, "maintenance failed; retrying in 30 s");
                Outcome::Retry {
                    after: RETRY_AFTER,
                    error: err.to_string(),
                }
            }
        }
    }
}

async fn run(ctx: &MaintenanceContext, task: Task) -> Result<Value, sqlx::Error> {
    let to_value =
        |v: Result<Value, serde_json::Error>| v.map_err(|e| sqlx::Error::Decode(Box::new(e)));
    match task {
        Task::ExpireTokens => to_value(serde_json::to_value(
            tasks::expire_tokens(&ctx.pool, &ctx.settings).await?,
        )),
        Task::RefreshSearchIndex => to_value(serde_json::to_value(
            tasks::refresh_search_index(&ctx.pool, &ctx.settings).await?,
        )),
        Task::Prune => to_value(serde_json::to_value(
            tasks::prune(&ctx.pool, &ctx.settings).await?,
        )),
        Task::CheckCompliance => {
            let mut conn = ctx.pool.acquire().await?;
            to_value(serde_json::to_value(
                herald_shared::compliance::check(&mut conn, &ctx.compliance).await?,
            ))
        }
    }
}

/// Enqueues each schedule's ticks until `token` is cancelled. Every worker process runs this; the
/// tick's idempotency key makes exactly one of them succeed. At start, a schedule whose last
/// enqueued tick is older than its latest due tick gets one catch-up run for that tick.
pub async fn run_ticker(pool: PgPool, schedules: Vec<TaskSchedule>, token: CancellationToken) {
    let mut tasks = Vec::new();
    for schedule in schedules {
        let (pool, token) = (pool.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            tick_loop(pool, schedule, token).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn tick_loop(pool: PgPool, schedule: TaskSchedule, token: CancellationToken) {
    let name = schedule.task.name();
    // Registration (and catch-up) waits for the database if it is down.
    let mut delay = Duration::from_millis(500);
    loop {
        match catch_up(&pool, &schedule).await {
            Ok(()) => break,
            Err(err) => {
                tracing::error!(schedule = name, error = %err, "cannot register the schedule yet");
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(30)),
                }
            }
        }
    }
    let mut after = Utc::now();
    while let Some(tick) = schedule.next_after(after) {
        let wait = (tick - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        // Keep trying this tick until it is enqueued or the next one is due.
        loop {
            match enqueue(&pool, schedule.task, tick).await {
                Ok(fresh) => {
                    tracing::debug!(schedule = name, %tick, fresh, "tick");
                    break;
                }
                Err(err) => {
                    tracing::error!(schedule = name, %tick, error = %err, "cannot enqueue the tick; retrying");
                    let next_due = schedule.next_after(tick).is_none_or(|n| n <= Utc::now());
                    if next_due {
                        break;
                    }
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        after = tick;
    }
}

async fn enqueue(
    pool: &PgPool,
    task: Task,
    tick: chrono::DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    maintenance::enqueue_tick(&mut conn, task, tick).await
}

async fn catch_up(pool: &PgPool, schedule: &TaskSchedule) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let last = maintenance::register(&mut conn, schedule).await?;
    if let Some(last) = last
        && let Some(missed) = schedule.latest_between(last, Utc::now())
    {
        let fresh = maintenance::enqueue_tick(&mut conn, schedule.task, missed).await?;
        tracing::info!(schedule = schedule.task.name(), %missed, fresh, "catching up one missed tick");
    }
    Ok(())
}
