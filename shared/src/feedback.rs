//! What the console reads of SES feedback: the events recorded, the messages refused per reason
//! and the feedback queues' depths (the worker writes the last two).

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
    pub occurred_at: DateTime<Utc>,
    /// A suppression change's detail (type, reason, via); none for SES events.
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
                  complaint_type, occurred_at, NULL::jsonb AS detail
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
                  CASE WHEN event_type LIKE 'suppression\_%' THEN raw END AS detail
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
