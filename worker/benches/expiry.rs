//! Time to expire 1,000,000 tokens with `expire_tokens` (batched), and its longest statement,
//! against one unbatched DELETE of the same rows as the baseline.
//!
//! `DATABASE_URL=postgres://… cargo bench -p herald-worker --bench expiry`; creates and drops its own
//! database. BENCH_TOKENS (1000000), EXPIRY_BATCH_SIZE (5000).

#[path = "common/mod.rs"]
mod common;

use common::{BenchDb, Row, print_rows};
use std::time::Instant;

use herald_shared::maintenance::{Settings, tasks};
use sqlx::PgPool;

async fn load(pool: &PgPool, n: i64) {
    sqlx::query("TRUNCATE verification_tokens")
        .execute(pool)
        .await
        .expect("truncate");
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE slug = 'system'")
        .fetch_one(pool)
        .await
        .expect("user");
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(200_000);
        sqlx::query(
            "INSERT INTO verification_tokens (user_id, token_hash, expires_at, created_at)
             SELECT $1, md5(g::text || random()::text), now() - interval '1 hour', now() - interval '25 hours'
             FROM generate_series(1, $2) g",
        )
        .bind(user)
        .bind(chunk)
        .execute(pool)
        .await
        .expect("load");
        done += chunk;
    }
    // Tokens still valid, which must stay.
    sqlx::query(
        "INSERT INTO verification_tokens (user_id, token_hash, expires_at)
         SELECT $1, 'valid-' || g, now() + interval '1 day' FROM generate_series(1, 10000) g",
    )
    .bind(user)
    .execute(pool)
    .await
    .expect("valid");
    sqlx::query("VACUUM ANALYZE verification_tokens")
        .execute(pool)
        .await
        .expect("analyze");
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::var("BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let batch = std::env::var("EXPIRY_BATCH_SIZE").unwrap_or_else(|_| "5000".into());
    let db = BenchDb::create("expiry", 4).await;
    let (pool, version) = (db.pool.clone(), db.version.clone());
    let settings =
        Settings::from_source(&[("EXPIRY_BATCH_SIZE", batch.as_str())]).expect("settings");

    // Baseline: one DELETE of every expired row.
    load(&pool, n).await;
    let started = Instant::now();
    let deleted = sqlx::query("DELETE FROM verification_tokens WHERE expires_at < now()")
        .execute(&pool)
        .await
        .expect("delete")
        .rows_affected();
    let single = started.elapsed();
    assert_eq!(deleted, n as u64);

    // Herald's batched job on the same data.
    load(&pool, n).await;
    let report = tasks::expire_tokens(&pool, &settings)
        .await
        .expect("expire");
    assert_eq!(report.verification_tokens, n as u64);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM verification_tokens")
        .fetch_one(&pool)
        .await
        .expect("left");
    assert_eq!(left, 10_000, "valid tokens stay");

    println!(
        "Token expiry benchmark: PostgreSQL {version}, {n} expired verification tokens (+10000 valid), batch {batch}"
    );
    let single_ms = single.as_secs_f64() * 1000.0;
    print_rows(
        "one DELETE",
        &[
            Row::new(
                &format!("expiry of {n} tokens, total (s)"),
                format!("{:.2}", report.timing.total_ms / 1000.0),
                format!("{:.2}", single.as_secs_f64()),
                report.timing.total_ms / single_ms,
            ),
            Row::new(
                &format!(
                    "expiry, longest statement (ms; {} statements vs 1)",
                    report.timing.statements
                ),
                format!("{:.1}", report.timing.longest_statement_ms),
                format!("{single_ms:.1}"),
                report.timing.longest_statement_ms / single_ms,
            ),
        ],
    );
    db.drop_db().await;
}
