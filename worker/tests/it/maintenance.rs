//! The maintenance ticker: catch-up after downtime, and dedupe of the same tick.

use std::time::Duration;

use chrono::{Timelike, Utc};
use herald_shared::maintenance::{self, Task};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::setup_queue;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_worker_starting_after_downtime_runs_one_catch_up_for_the_latest_missed_tick(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let env = [
        ("EXPIRE_TOKENS_CRON", "0 * * * *"),
        ("REFRESH_SEARCH_CRON", "0 0 0 1 1 *"),
        ("PRUNE_CRON", "0 0 0 1 1 *"),
        ("COMPLIANCE_CHECK_CRON", "0 0 0 1 1 *"),
    ];
    let schedules = maintenance::schedules_from(&env).expect("schedules");
    // Every worker was down for the last three hourly ticks.
    sqlx::query("INSERT INTO maintenance_schedules (name, cron, last_tick_at) VALUES ('expire_tokens', '0 * * * *', now() - interval '3 hours 30 minutes')")
        .execute(&pool)
        .await
        .expect("history");
    let token = CancellationToken::new();
    let ticker = tokio::spawn(herald_worker::maintenance::run_ticker(
        pool.clone(),
        schedules.clone(),
        token.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A second worker starting now catches up the same tick: still one job.
    let second = tokio::spawn(herald_worker::maintenance::run_ticker(
        pool.clone(),
        schedules,
        token.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    token.cancel();
    ticker.await.expect("ticker");
    second.await.expect("ticker");

    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM apalis.jobs WHERE job_type = 'herald.maintenance'",
    )
    .fetch_all(&pool)
    .await
    .expect("jobs");
    let now = Utc::now();
    let latest_hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .expect("hour");
    assert_eq!(
        keys,
        [maintenance::tick_key(Task::ExpireTokens, latest_hour)],
        "one catch-up run, for the latest missed tick"
    );
    let registered: Vec<String> =
        sqlx::query_scalar("SELECT name FROM maintenance_schedules ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("schedules");
    assert_eq!(
        registered,
        [
            "check_compliance",
            "expire_tokens",
            "prune",
            "refresh_search_index"
        ]
    );
}
