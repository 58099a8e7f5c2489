//! The connection pool and the embedded migrator, the schema check and the app role's grants.
//!
//! About 470 lines on purpose (a third of them tests): connecting, migrating and granting are the
//! one question "can this process use this database", and their rules refer to each other.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::pool::PoolConnection;
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

/// True for failures that say the database is out of reach, not that the query was wrong:
/// lost or refused connections, an exhausted pool, and the server shutting down or starting.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// How long a pooled connection may sit idle before it is pinged on its way out of the pool.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Builds the pool from the configuration; connects lazily up to `min_connections` at once.
pub async fn connect(config: &DbConfig) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        // sqlx pings a connection as it comes back to the pool; one that has sat idle since may
        // have died with a restarted server, so it is pinged again before it is handed out. One
        // back within PING_AFTER_IDLE is not: under load that saves every query a round trip.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(config.pg_connect_options())
        .await?;
    Ok(pool)
}

/// Longest single try at a connection inside [`Db::acquire`]. sqlx bounds a connection attempt
/// only by the whole acquire timeout and, while the server refuses, sleeps a backoff that doubles
/// up to a fifth of it (6 s at 30 s); a fresh try restarts that backoff at 10 ms.
pub const ACQUIRE_ATTEMPT: Duration = Duration::from_secs(2);

/// Pause between tries after the server refused or dropped the connection.
const ACQUIRE_PAUSE: Duration = Duration::from_millis(100);

/// The pool, handing out connections in bounded tries so a caller waiting through a database
/// restart gets its connection within about a second of the server accepting again, not after
/// sqlx's backoff (up to `DB_ACQUIRE_TIMEOUT / 5`) or a hung connection attempt.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    acquire_timeout: Duration,
}

impl Db {
    /// Wraps `pool`; [`Db::acquire`] gives up after `acquire_timeout` (`DB_ACQUIRE_TIMEOUT`).
    pub fn new(pool: PgPool, acquire_timeout: Duration) -> Self {
        Self {
            pool,
            acquire_timeout,
        }
    }

    /// The underlying pool, for code that manages its own waiting (apalis, start-up checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection, tried for at most [`ACQUIRE_ATTEMPT`] at a time until `DB_ACQUIRE_TIMEOUT`.
    /// Ends with `PoolTimedOut` (or the last refusal) when the database stays out of reach.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        let mut last = sqlx::Error::PoolTimedOut;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(last);
            }
            // Dropping an unfinished acquire is safe: sqlx gives back its slot.
            match tokio::time::timeout(ACQUIRE_ATTEMPT.min(left), self.pool.acquire()).await {
                Ok(Ok(conn)) => return Ok(conn),
                // Nothing ran yet, so trying again is safe.
                Ok(Err(e)) if is_unavailable(&e) && !matches!(e, sqlx::Error::PoolClosed) => {
                    last = e;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(ACQUIRE_PAUSE.min(left)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => last = sqlx::Error::PoolTimedOut,
            }
        }
    }
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
pub async fn queue_schema_current(conn: &mut sqlx::PgConnection) -> Result<bool, DbError> {
    let Some(applied) = crate::jobs::queue_migrations_applied(conn).await? else {
        return Ok(false);
    };
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
pub async fn migration_status(conn: &mut sqlx::PgConnection) -> Result<MigrationStatus, DbError> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    let rows = if table_exists {
        sqlx::query(
            "SELECT version, success, checksum FROM public._sqlx_migrations ORDER BY version",
        )
        .fetch_all(&mut *conn)
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
pub async fn ensure_current(conn: &mut sqlx::PgConnection) -> Result<(), DbError> {
    let status = migration_status(conn).await?;
    if status.is_current() {
        if queue_schema_current(conn).await? {
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

/// What the application role may do on each table of `public`; any other table (user_roles,
/// roles, the app's own tables) it cannot touch. Columns are listed where a table holds more than
/// Herald reads: no `password_hash`, no token hashes.
pub const APP_ROLE_GRANTS: &[(&str, &str)] = &[
    ("_sqlx_migrations", "SELECT"),
    // Console sessions: opened, ended and pruned by the API.
    ("admin_sessions", "SELECT, INSERT, UPDATE, DELETE"),
    ("api_idempotency_keys", "SELECT, INSERT, DELETE"),
    ("compliance_pauses", "SELECT, UPDATE"),
    // Attachment bytes: stored by the API (marked used again on a repeat), read by the worker,
    // pruned by retention.
    ("email_attachment_blobs", "SELECT, INSERT, UPDATE, DELETE"),
    ("email_deliveries", "SELECT, INSERT, UPDATE, DELETE"),
    // The audit trail: pruned only through prune_email_feedback_events().
    ("email_feedback_events", "SELECT, INSERT"),
    ("email_sending_control", "SELECT, UPDATE"),
    ("email_suppressions", "SELECT, INSERT, UPDATE, DELETE"),
    // Versions are immutable: published (INSERT) and deleted, never edited.
    ("email_templates", "SELECT, INSERT, DELETE"),
    ("feedback_queue_depths", "SELECT, INSERT, UPDATE"),
    ("feedback_rejections", "SELECT, INSERT, UPDATE"),
    ("maintenance_schedules", "SELECT, INSERT, UPDATE"),
    (
        "password_reset_tokens",
        "SELECT (id, user_id, expires_at, used_at), INSERT, DELETE",
    ),
    (
        "phrases",
        "SELECT (id, phrase_text, active, search_vector), UPDATE (search_vector)",
    ),
    ("refresh_tokens", "SELECT (id, expires_at), DELETE"),
    (
        "users",
        "SELECT (id, email, display_name, slug, active, search_vector), UPDATE (search_vector)",
    ),
    (
        "verification_tokens",
        "SELECT (id, user_id, expires_at), INSERT, DELETE",
    ),
    // The outbox triggers write events as the role that made the change; the worker's relay
    // marks them taken and writes their deliveries.
    ("webhook_attempts", "SELECT, INSERT, DELETE"),
    ("webhook_deliveries", "SELECT, INSERT, UPDATE, DELETE"),
    ("webhook_endpoints", "SELECT, INSERT, UPDATE, DELETE"),
    ("webhook_events", "SELECT, INSERT, UPDATE, DELETE"),
];

/// The security-definer functions the application role may call (see their migration).
pub const APP_ROLE_FUNCTIONS: &[&str] = &[
    "public.user_email_verified(uuid)",
    "public.prune_email_feedback_events(timestamptz, bigint)",
    "public.enqueue_emails(text, boolean, text[], bytea[], text[], text[], text[], timestamptz[], integer[], text[], text[])",
];

/// Creates or narrows the login role the API and worker use: exactly [`APP_ROLE_GRANTS`] in
/// `public` (earlier, wider grants are revoked first), data rights on apalis's tables but not its
/// bookkeeping, no DDL, no TEMPORARY (revoked from PUBLIC on this database too, which otherwise
/// grants it to everyone), MAINTAIN on the search tables on PostgreSQL 17+. Run it as the owner
/// after migrating, and again after an upgrade. `role` must be a plain lower-case SQL name.
pub async fn grant_app_role(
    pool: &PgPool,
    role: &str,
    password: Option<&str>,
) -> Result<(), DbError> {
    let valid = !role.is_empty()
        && role.len() <= 63
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(DbError::NotCurrent(format!(
            "{role:?} is not a plain lower-case role name"
        )));
    }
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    let database = database.replace('"', "\"\"");
    let major: i32 =
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int / 10000")
            .fetch_one(pool)
            .await?;
    let mut tx = pool.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *tx)
            .await?;
    let mut statements = Vec::new();
    if !exists {
        statements.push(format!("CREATE ROLE \"{role}\" LOGIN"));
    }
    statements.extend([
        format!("ALTER ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"),
        format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{role}\""),
        format!("REVOKE TEMPORARY ON DATABASE \"{database}\" FROM PUBLIC, \"{role}\""),
        format!("REVOKE CREATE ON SCHEMA public FROM \"{role}\""),
        format!("GRANT USAGE ON SCHEMA public, apalis TO \"{role}\""),
        // Start from nothing in public, so that re-running narrows a role an older Herald granted.
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM \"{role}\""),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM \"{role}\""),
        format!("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM \"{role}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM \"{role}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM \"{role}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON FUNCTIONS FROM \"{role}\""),
        // apalis's queue tables are the worker's and the API's to change, its bookkeeping is not.
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA apalis TO \"{role}\""),
        format!("REVOKE INSERT, UPDATE, DELETE ON {} FROM \"{role}\"", crate::jobs::QUEUE_MIGRATIONS_TABLE),
        format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA apalis TO \"{role}\""),
        format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA apalis TO \"{role}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA apalis GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"{role}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA apalis GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO \"{role}\""),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA apalis GRANT EXECUTE ON FUNCTIONS TO \"{role}\""),
    ]);
    for (table, privileges) in APP_ROLE_GRANTS {
        statements.push(format!(
            "GRANT {privileges} ON public.{table} TO \"{role}\""
        ));
    }
    for function in APP_ROLE_FUNCTIONS {
        statements.push(format!(
            "GRANT EXECUTE ON FUNCTION {function} TO \"{role}\""
        ));
    }
    if major >= 17 {
        // Lets the role ANALYZE and REINDEX the tables the search repair job maintains.
        statements.push(format!(
            "GRANT MAINTAIN ON public.users, public.phrases TO \"{role}\""
        ));
    }
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        let alter: String =
            sqlx::query_scalar("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)")
                .bind(role)
                .bind(password)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(sqlx::AssertSqlSafe(alter))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
