//! The connection pool and the embedded migrator.

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};

use crate::config::DbConfig;

/// The application's migrations, embedded at build time; bookkeeping in `public._sqlx_migrations`,
/// the same table sqlx-cli uses, so either tool can apply them.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Database-layer failures.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting or running a query failed.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Applying or reading migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Applying apalis-postgres's own migrations (schema `apalis`) failed.
    #[error("job queue migration error: {0}")]
    Queue(#[from] apalis_postgres::Error),
    /// The database schema is behind (or ahead of) this binary.
    #[error(
        "database schema is not current ({0}); run `herald-worker migrate` or scripts/setup-db.sh"
    )]
    NotCurrent(String),
}

/// Builds the pool from the configuration; connects lazily up to `min_connections` at once.
pub async fn connect(config: &DbConfig) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(config.pg_connect_options())
        .await?;
    Ok(pool)
}

/// Creates the configured database when it does not exist; returns whether it did so.
pub async fn create_database_if_missing(config: &DbConfig) -> Result<bool, DbError> {
    let url = config.url.expose();
    if Postgres::database_exists(url).await? {
        return Ok(false);
    }
    Postgres::create_database(url).await?;
    Ok(true)
}

/// Applies every pending migration: the application's, then apalis-postgres's job queue schema
/// (`apalis`, with its own bookkeeping table). On error the caller should exit: sqlx keeps its
/// advisory lock on the failed connection, so a retry on the same pool would hang.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    apalis_postgres::PostgresStorage::setup(pool).await?;
    Ok(())
}

/// True when apalis-postgres's migrations are all applied.
pub async fn queue_schema_current(pool: &PgPool) -> Result<bool, DbError> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('apalis._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !table_exists {
        return Ok(false);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM apalis._sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    let migrator = apalis_postgres::PostgresStorage::migrations();
    Ok(migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .all(|m| applied.contains(&m.version)))
}

/// One migration as known to the binary and to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// Version (the timestamp prefix of the file name).
    pub version: i64,
    /// Description (the rest of the file stem).
    pub description: String,
    /// Whether it is recorded as applied successfully.
    pub applied: bool,
    /// Whether the recorded checksum differs from the embedded file (an edited migration).
    pub checksum_mismatch: bool,
}

/// The migration status of a database, for `--verify` and readiness checks.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// Every embedded migration, in order.
    pub migrations: Vec<MigrationState>,
    /// Versions recorded in the database that this binary does not know (a newer deploy ran).
    pub unknown_applied: Vec<i64>,
    /// A version recorded as failed (sqlx calls this dirty), if any.
    pub dirty: Option<i64>,
}

impl MigrationStatus {
    /// True when every embedded migration is applied and nothing is dirty or edited.
    pub fn is_current(&self) -> bool {
        self.dirty.is_none()
            && self
                .migrations
                .iter()
                .all(|m| m.applied && !m.checksum_mismatch)
    }

    /// Migrations not applied yet.
    pub fn pending(&self) -> impl Iterator<Item = &MigrationState> {
        self.migrations.iter().filter(|m| !m.applied)
    }
}

/// Reads the migration status without changing anything (no bookkeeping table is created).
pub async fn migration_status(pool: &PgPool) -> Result<MigrationStatus, DbError> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let rows = if table_exists {
        sqlx::query(
            "SELECT version, success, checksum FROM public._sqlx_migrations ORDER BY version",
        )
        .fetch_all(pool)
        .await?
    } else {
        Vec::new()
    };
    let mut applied = Vec::with_capacity(rows.len());
    let mut dirty = None;
    for row in rows {
        let version: i64 = row.try_get("version")?;
        let success: bool = row.try_get("success")?;
        let checksum: Vec<u8> = row.try_get("checksum")?;
        if success {
            applied.push((version, checksum));
        } else {
            dirty = Some(version);
        }
    }
    let migrations = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            let recorded = applied.iter().find(|(v, _)| *v == m.version);
            MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: recorded.is_some(),
                checksum_mismatch: recorded.is_some_and(|(_, c)| c.as_slice() != &*m.checksum),
            }
        })
        .collect();
    let unknown_applied = applied
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| !MIGRATOR.version_exists(*v))
        .collect();
    Ok(MigrationStatus {
        migrations,
        unknown_applied,
        dirty,
    })
}

/// Fails unless every embedded migration is applied, unedited, and none failed.
pub async fn ensure_current(pool: &PgPool) -> Result<(), DbError> {
    let status = migration_status(pool).await?;
    if status.is_current() {
        if queue_schema_current(pool).await? {
            return Ok(());
        }
        return Err(DbError::NotCurrent(
            "the job queue schema (apalis) is not set up".into(),
        ));
    }
    let pending = status.pending().count();
    let edited = status
        .migrations
        .iter()
        .filter(|m| m.checksum_mismatch)
        .count();
    Err(DbError::NotCurrent(format!(
        "{pending} pending, {edited} edited since applied, failed: {:?}",
        status.dirty
    )))
}

/// An installed extension and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Extension name.
    pub name: String,
    /// Installed version.
    pub version: String,
}

/// Lists the installed extensions other than the always-present plpgsql.
pub async fn installed_extensions(pool: &PgPool) -> Result<Vec<Extension>, DbError> {
    let rows = sqlx::query(
        "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY extname",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Extension {
                name: r.try_get("extname")?,
                version: r.try_get("extversion")?,
            })
        })
        .collect()
}

/// Which UUIDv7 implementation the database uses: the pg_uuidv7 extension or Herald's SQL functions.
pub async fn uuid_v7_provider(pool: &PgPool) -> Result<&'static str, DbError> {
    let ext: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_uuidv7')",
    )
    .fetch_one(pool)
    .await?;
    Ok(if ext {
        "pg_uuidv7 extension"
    } else {
        "SQL functions (migration 1)"
    })
}

/// The server's version string, e.g. `17.11`.
pub async fn server_version(pool: &PgPool) -> Result<String, DbError> {
    Ok(sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await?)
}
