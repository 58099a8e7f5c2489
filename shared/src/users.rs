//! `users`: the reads Herald makes of the application's accounts, and the one write it makes
//! (repairing search vectors). The application owns the rest of the table's life. A trigger keeps
//! `search_vector` current (`users_compute_search_vector`); the repair uses the same function.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An active user, as the verification endpoint needs it.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Their address.
    pub email: String,
    /// Whether it is verified already.
    pub verified: bool,
}

/// The active user `id`'s address and whether it is verified; `None` for an unknown or inactive user.
pub async fn verification(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Verification>, sqlx::Error> {
    sqlx::query_as!(
        Verification,
        r#"SELECT u.email, user_email_verified(u.id) AS "verified!"
           FROM users u WHERE u.id = $1 AND u.active"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// The active user with this address (case-insensitive): id and stored address.
pub async fn active_by_email(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT id, email FROM users WHERE lower(email) = lower($1) AND active",
        email
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.id, r.email)))
}

/// The active user `id`'s display name; `None` for an unknown or inactive user.
pub async fn display_name(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT display_name FROM users WHERE id = $1 AND active",
        id
    )
    .fetch_optional(conn)
    .await
}

/// Recomputes up to `limit` missing or stale search vectors after `cursor` (id order); returns
/// the ids fixed.
pub async fn refresh_search_vectors(
    pool: &PgPool,
    cursor: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "WITH stale AS (SELECT id FROM users
                        WHERE id > $1
                          AND search_vector IS DISTINCT FROM users_compute_search_vector(display_name, email, slug)
                        ORDER BY id LIMIT $2)
         UPDATE users u SET search_vector = users_compute_search_vector(u.display_name, u.email, u.slug)
         FROM stale WHERE u.id = stale.id RETURNING u.id",
        cursor,
        limit
    )
    .fetch_all(pool)
    .await
}
