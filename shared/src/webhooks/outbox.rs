//! `webhook_events`: the outbox, and the only Rust that writes it (retention). Events are recorded
//! by triggers, in the transaction of the change that causes them, so an event exists exactly when
//! its change committed (migrations `20251206000000_herald_webhook_outbox` and
//! `20251207000000_herald_webhook_relay`; the names they record are [`super::EventType`]'s, a test
//! checks that):
//! - `webhook_email_events` on `email_deliveries` (owned by [`crate::email::ledger`]): `email.sent`,
//!   `email.failed`, `email.suppressed` when the status becomes one of them; `email.delivered`,
//!   `email.bounced`, `email.complained` when feedback first names a recipient; `email.opened`,
//!   `email.clicked`, `email.delivery_delayed`, `email.rejected` for each engagement SES publishes
//!   (migration `20251215000000_herald_engagement_events`);
//! - `webhook_suppression_events` on `email_suppressions` ([`crate::suppressions`]):
//!   `suppression.created` and `suppression.removed`;
//! - `webhook_compliance_events` on `compliance_pauses` ([`crate::compliance`]):
//!   `compliance.paused` and `compliance.resumed`.
//!
//! Nothing is recorded for a type no enabled endpoint subscribes to. The relay ([`fan_out`], the
//! `webhook_fan_out` SQL function) turns recorded events into one delivery and one job per
//! subscribed endpoint.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Makes the deliveries (and their jobs) of up to `batch` events the triggers recorded; returns
/// how many events it took. Workers call it in a loop; concurrent callers take different events.
pub async fn fan_out(conn: &mut PgConnection, batch: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT webhook_fan_out($1) AS "taken!""#, batch)
        .fetch_one(conn)
        .await
}

/// Deletes up to `limit` events recorded before `before`, their deliveries and attempts with them
/// (retention: far past the three days a delivery is retried); returns how many events.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    // Events are keyed by UUIDv7, which begins with its time in ms: the smallest id of `before`'s
    // millisecond bounds the older ones, so the primary key serves.
    let ms = u128::try_from(before.timestamp_millis()).unwrap_or(0);
    let bound = Uuid::from_u128(ms << 80);
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM webhook_events WHERE id < $1 ORDER BY id LIMIT $2)
         DELETE FROM webhook_events e USING doomed WHERE e.id = doomed.id",
        bound,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}
