//! Console sessions the server can end (`admin_sessions`): a sign-in opens one, sign-out ends it,
//! every console request checks it is still open. The cookie carries the session's id under the
//! console's MAC; this table is what makes a copied cookie stop working after sign-out.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Opens a session for the admin token with `fingerprint`, until `expires_at`; returns its id.
#[tracing::instrument(skip_all)]
pub async fn open(
    conn: &mut PgConnection,
    fingerprint: &str,
    expires_at: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO admin_sessions (token_fingerprint, expires_at) VALUES ($1, $2) RETURNING id",
        fingerprint,
        expires_at
    )
    .fetch_one(conn)
    .await
}

/// Whether session `id`, opened by the token with `fingerprint`, is neither ended nor expired.
#[tracing::instrument(skip_all)]
pub async fn is_open(
    conn: &mut PgConnection,
    id: Uuid,
    fingerprint: &str,
) -> Result<bool, sqlx::Error> {
    let open = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM admin_sessions
                  WHERE id = $1 AND token_fingerprint = $2 AND ended_at IS NULL
                    AND expires_at > now()) AS "open!""#,
        id,
        fingerprint
    )
    .fetch_one(conn)
    .await?;
    Ok(open)
}

/// Ends session `id`; returns whether it was open.
#[tracing::instrument(skip_all)]
pub async fn end(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query!(
        "UPDATE admin_sessions SET ended_at = now() WHERE id = $1 AND ended_at IS NULL",
        id
    )
    .execute(conn)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// Deletes sessions that expired more than a day ago (at most 1,000 per call).
#[tracing::instrument(skip_all)]
pub async fn prune(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM admin_sessions WHERE id IN (
             SELECT id FROM admin_sessions WHERE expires_at < now() - interval '1 day' LIMIT 1000)"
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
