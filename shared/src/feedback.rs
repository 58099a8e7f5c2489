//! SES feedback as stored: `email_feedback_events` (the audit trail of bounces, complaints and
//! suppression changes), `feedback_rejections` (messages refused, per reason) and
//! `feedback_queue_depths`. The only code that reads or writes those tables: the worker's consumer
//! records here, the API records operators' suppression changes here, the console reads here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// One recorded feedback event or suppression change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Row id (UUIDv7).
    pub id: Uuid,
    /// `bounce`, `complaint`, `delivery`, …, or `suppression_added` / `suppression_removed`.
    pub event_type: String,
    /// Recipient (normalised).
    pub recipient: String,
    /// The message it is about.
    pub ses_message_id: Option<String>,
    /// Bounce type.
    pub bounce_type: Option<String>,
    /// Bounce subtype.
    pub bounce_sub_type: Option<String>,
    /// Complaint type.
    pub complaint_type: Option<String>,
    /// When it happened.
    #[serde(serialize_with = "crate::time::ms")]
    pub occurred_at: DateTime<Utc>,
    /// A suppression change's detail (type, reason, via), or what an SES event-publishing record
    /// adds (a click's link, a reject's reason); none for bounces, complaints and deliveries.
    pub detail: Option<serde_json::Value>,
}

/// The events about one SES message, oldest first.
pub async fn for_message(
    conn: &mut PgConnection,
    ses_message_id: &str,
) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as!(
        Event,
        r#"SELECT id, event_type, recipient, ses_message_id, bounce_type, bounce_sub_type,
                  complaint_type, occurred_at, detail
           FROM email_feedback_events WHERE ses_message_id = $1
           ORDER BY occurred_at, id LIMIT 100"#,
        ses_message_id
    )
    .fetch_all(conn)
    .await
}

/// The newest events, SES feedback or (with `changes`) suppression changes only, optionally for
/// one address.
pub async fn recent(
    conn: &mut PgConnection,
    changes: bool,
    recipient: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as!(
        Event,
        r#"SELECT id, event_type, recipient, ses_message_id, bounce_type, bounce_sub_type,
                  complaint_type, occurred_at,
                  CASE WHEN event_type LIKE 'suppression\_%' THEN raw ELSE detail END AS detail
           FROM email_feedback_events
           WHERE (event_type LIKE 'suppression\_%') = $1
             AND ($2::text IS NULL OR recipient = lower(btrim($2)))
           ORDER BY id DESC LIMIT $3"#,
        changes,
        recipient,
        limit
    )
    .fetch_all(conn)
    .await
}

/// Refused or unparsable feedback messages of one reason.
#[derive(Debug, Clone, Serialize)]
pub struct RejectionCount {
    /// The trust check that refused them, or `poison` for messages that did not parse.
    pub reason: String,
    /// How many (first receives only).
    pub count: i64,
    /// The latest.
    #[serde(serialize_with = "crate::time::ms")]
    pub last_at: DateTime<Utc>,
}

/// Counts a refused message under `reason`.
pub async fn count_rejection(conn: &mut PgConnection, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO feedback_rejections (reason, count) VALUES ($1, 1)
         ON CONFLICT (reason) DO UPDATE SET count = feedback_rejections.count + 1, last_at = now()",
        reason
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Every reason's count, largest first.
pub async fn rejection_counts(conn: &mut PgConnection) -> Result<Vec<RejectionCount>, sqlx::Error> {
    sqlx::query_as!(
        RejectionCount,
        "SELECT reason, count, last_at FROM feedback_rejections ORDER BY count DESC, reason"
    )
    .fetch_all(conn)
    .await
}

/// A feedback queue's depth as a worker last read it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    /// `feedback` or `dead_letter`.
    pub queue: String,
    /// Messages waiting (SQS's approximate count).
    pub messages: i64,
    /// When it was read.
    #[serde(serialize_with = "crate::time::ms")]
    pub observed_at: DateTime<Utc>,
}

/// Stores a queue's depth (`queue` is `feedback` or `dead_letter`).
pub async fn record_depth(
    conn: &mut PgConnection,
    queue: &str,
    messages: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO feedback_queue_depths (queue, messages) VALUES ($1, $2)
         ON CONFLICT (queue) DO UPDATE SET messages = $2, observed_at = now()",
        queue,
        messages
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The depths last read.
pub async fn queue_depths(conn: &mut PgConnection) -> Result<Vec<QueueDepth>, sqlx::Error> {
    sqlx::query_as!(
        QueueDepth,
        "SELECT queue, messages, observed_at FROM feedback_queue_depths ORDER BY queue"
    )
    .fetch_all(conn)
    .await
}

/// A bounce, complaint, delivery or event-publishing record as the feedback consumer stores it.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// `bounce`, `complaint`, `delivery`, `open`, `click`, `delivery_delay`, `reject`,
    /// `rendering_failure`, `subscription`, … or `unmatched`.
    pub event_type: &'a str,
    /// The address, normalised.
    pub recipient: &'a str,
    /// SES's message id, if the notification names one.
    pub ses_message_id: Option<&'a str>,
    /// SES's feedback id.
    pub feedback_id: Option<&'a str>,
    /// Bounce type.
    pub bounce_type: Option<&'a str>,
    /// Bounce sub-type.
    pub bounce_sub_type: Option<&'a str>,
    /// Complaint type.
    pub complaint_type: Option<&'a str>,
    /// The SQS message it came in.
    pub sqs_message_id: Option<&'a str>,
    /// When SES says it happened.
    pub occurred_at: DateTime<Utc>,
    /// The notification as received.
    pub raw: &'a serde_json::Value,
    /// What makes a redelivered notification the same event.
    pub dedupe_key: &'a str,
    /// What an event-publishing record adds, in Herald's names.
    pub detail: Option<&'a serde_json::Value>,
}

/// Stores the event; false if the same event was stored before.
pub async fn record(conn: &mut PgConnection, e: &NewEvent<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query_scalar!(
        "INSERT INTO email_feedback_events
             (event_type, recipient, ses_message_id, feedback_id, bounce_type, bounce_sub_type,
              complaint_type, sqs_message_id, occurred_at, raw, dedupe_key, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (dedupe_key) DO NOTHING
         RETURNING id",
        e.event_type,
        e.recipient,
        e.ses_message_id,
        e.feedback_id,
        e.bounce_type,
        e.bounce_sub_type,
        e.complaint_type,
        e.sqs_message_id,
        e.occurred_at,
        e.raw,
        e.dedupe_key,
        e.detail
    )
    .fetch_optional(conn)
    .await?;
    Ok(inserted.is_some())
}

/// Records an operator's suppression change (made through the API or the console) as an event.
pub async fn record_admin_event(
    conn: &mut PgConnection,
    event_type: &str,
    email: &str,
    detail: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO email_feedback_events (event_type, recipient, occurred_at, raw)
         VALUES ($1, lower(btrim($2)), now(), $3)",
        event_type,
        email,
        detail
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Soft (transient or undetermined) bounces recorded for an address since `since`, each SES
/// feedback counted once.
pub async fn soft_bounces(
    conn: &mut PgConnection,
    email: &str,
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(DISTINCT coalesce(feedback_id, dedupe_key)) AS "n!" FROM email_feedback_events
           WHERE recipient = $1 AND event_type = 'bounce'
             AND coalesce(bounce_type, '') <> 'Permanent' AND occurred_at >= $2"#,
        email,
        since
    )
    .fetch_one(conn)
    .await
}

/// Deletes up to `limit` events older than `before` (retention); returns how many. The app role
/// may not delete the audit trail itself: the `prune_email_feedback_events` function does.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let n = sqlx::query_scalar!(
        r#"SELECT prune_email_feedback_events($1, $2) AS "n!""#,
        before,
        limit
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
