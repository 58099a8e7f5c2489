//! The pool's health check: sqlx pings a connection as it comes back, Herald's pool pings one
//! again only after it sat idle for `PING_AFTER_IDLE`.

use std::collections::HashMap;

use herald_shared::config::DbConfig;
use herald_shared::db;
use sqlx::Connection;

fn url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL")
}

/// A pool of exactly one connection, opened on first use.
async fn one_connection_pool() -> sqlx::PgPool {
    let env: HashMap<String, String> = [
        ("DATABASE_URL", url()),
        ("DB_MAX_CONNECTIONS", "1".to_owned()),
        ("DB_MIN_CONNECTIONS", "0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    db::connect(&DbConfig::from_source(&env).expect("config"))
        .await
        .expect("pool")
}

async fn backend_pid(pool: &sqlx::PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn a_connection_whose_server_end_died_while_idle_is_replaced_before_use() {
    let pool = one_connection_pool().await;
    let first = backend_pid(&pool).await.expect("first query");
    // The server ends that session while the connection waits in the pool (a restart does this
    // to every pooled connection).
    let mut admin = sqlx::PgConnection::connect(&url()).await.expect("admin");
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
    assert!(ended, "the pooled session was terminated");
    tokio::time::sleep(db::PING_AFTER_IDLE + std::time::Duration::from_millis(300)).await;
    // The ping on the way out finds it dead; the pool opens a new one and the query succeeds.
    let second = backend_pid(&pool)
        .await
        .expect("a query after the session died while idle");
    assert_ne!(first, second, "a new session serves the query");
}
