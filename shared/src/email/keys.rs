//! `api_idempotency_keys`: which request an `Idempotency-Key` was first used with. Written only by
//! the `enqueue_emails` SQL function (with the job and the ledger row, in one statement,
//! [`super::ledger::enqueue`]); read and pruned here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The earlier requests of these keys: key → (request body's SHA-256, job id).
pub async fn earlier(
    conn: &mut PgConnection,
    keys: &[String],
) -> Result<HashMap<String, (String, String)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query!(
        "SELECT idempotency_key, request_sha256, job_id FROM api_idempotency_keys
         WHERE idempotency_key = ANY($1)",
        keys
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.idempotency_key, (r.request_sha256, r.job_id)))
        .collect())
}

/// Deletes up to `limit` keys stored before `before` (retention); returns how many.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT idempotency_key FROM api_idempotency_keys WHERE created_at < $1
                         ORDER BY created_at LIMIT $2)
         DELETE FROM api_idempotency_keys k USING doomed WHERE k.idempotency_key = doomed.idempotency_key",
        before,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}
