//! What every benchmark needs: a database of its own on the server `DATABASE_URL` names.
// Each bench compiles this module on its own and uses part of it.
#![allow(dead_code)]

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// A fresh, migrated database, dropped by [`BenchDb::drop_db`].
pub struct BenchDb {
    /// Pool on the new database.
    pub pool: PgPool,
    /// Its URL.
    pub url: String,
    /// The server's version, for the report.
    pub version: String,
    name: String,
    admin: PgConnection,
}

impl BenchDb {
    /// Creates `herald_bench_<label>_<pid>` and applies every migration.
    pub async fn create(label: &str, max_connections: u32) -> Self {
        let master =
            std::env::var("DATABASE_URL").expect("DATABASE_URL: the server to benchmark on");
        let (base, _) = master.rsplit_once('/').expect("URL with a database");
        let name = format!("herald_bench_{label}_{}", std::process::id());
        let mut admin = PgConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create");
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&url)
            .await
            .expect("pool");
        herald_shared::db::migrate(&pool).await.expect("migrate");
        let version = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .expect("version");
        Self {
            pool,
            url,
            version,
            name,
            admin,
        }
    }

    /// Closes the pool and drops the database.
    pub async fn drop_db(mut self) {
        self.pool.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await;
    }
}
