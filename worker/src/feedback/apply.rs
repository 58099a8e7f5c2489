//! Applies parsed feedback to the database, in one transaction per queue message.

use chrono::{DateTime, Utc};
use herald_shared::email::ledger;
use herald_shared::suppressions::{self, Raise, SuppressionType};
use sqlx::{PgConnection, PgPool};

use super::parse::{self, Body, Kind, ParseError, RecipientEvent};

/// The suppression policy's settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Soft bounces within the window that make a `bounce` suppression (default 3).
    pub soft_bounce_threshold: i64,
    /// The window (default 30 days).
    pub soft_bounce_window: chrono::Duration,
    /// `FEEDBACK_REQUIRE_KNOWN_MESSAGE`: apply a bounce, complaint or event-publishing record
    /// (open, click, delay, reject, subscription) only to a recipient of the ledger row whose SES
    /// message id it names; others are recorded as `unmatched`.
    pub require_known_message: bool,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A subscription message: nothing to apply, delete it.
    Control(String),
    /// Applied; `new` events were recorded, `duplicates` had been seen before.
    Applied {
        /// Events recorded and applied now.
        new: usize,
        /// Events already recorded by an earlier delivery of the same message.
        duplicates: usize,
        /// The type of each new event (`bounce`, `complaint`, `delivery`, …).
        kinds: Vec<String>,
    },
}

/// Why a message was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// It cannot be read: a poison message.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The database failed: leave the message for redelivery.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Parses and applies one queue message body. Nothing is committed unless all of it is. The
/// trust checks ([`super::Trust::admit`]) come first, in the consumer.
pub async fn apply(
    pool: &PgPool,
    policy: &Policy,
    body: &str,
    sqs_message_id: Option<&str>,
) -> Result<Outcome, ApplyError> {
    apply_value(pool, policy, parse::json_object(body)?, sqs_message_id).await
}

/// [`apply`] for a body already read as a JSON object.
pub async fn apply_value(
    pool: &PgPool,
    policy: &Policy,
    outer: serde_json::Value,
    sqs_message_id: Option<&str>,
) -> Result<Outcome, ApplyError> {
    let (events, raw) = match parse::parse_value(outer)? {
        Body::Control { kind, .. } => return Ok(Outcome::Control(kind)),
        Body::Feedback { events, raw, .. } => (events, raw),
    };
    let mut tx = pool.begin().await?;
    let (mut new, mut duplicates, mut kinds) = (0, 0, Vec::new());
    for event in &events {
        let unmatched = policy.require_known_message
            && !matches!(event.kind, Kind::Delivery | Kind::Other(_))
            && !is_ours(&mut tx, event).await?;
        let event_type = if unmatched {
            UNMATCHED
        } else {
            event.kind.as_str()
        };
        if record(&mut tx, event, event_type, &raw, sqs_message_id).await? {
            if unmatched {
                tracing::info!(
                    to = %herald_shared::address::mask(&event.recipient),
                    kind = event.kind.as_str(),
                    "feedback for a message Herald did not send to that recipient: recorded, not applied"
                );
            } else {
                apply_event(&mut tx, policy, event).await?;
            }
            new += 1;
            kinds.push(event_type.to_owned());
        } else {
            duplicates += 1;
        }
    }
    tx.commit().await?;
    Ok(Outcome::Applied {
        new,
        duplicates,
        kinds,
    })
}

/// The `event_type` of feedback that names no send of Herald's to that recipient.
pub const UNMATCHED: &str = "unmatched";

/// Whether the event names a message Herald sent to its recipient: the ledger's first recipient,
/// else one of the others the job's envelope lists (while the job is kept: JOB_RETENTION_DAYS).
async fn is_ours(conn: &mut PgConnection, e: &RecipientEvent) -> Result<bool, sqlx::Error> {
    let Some(id) = &e.ses_message_id else {
        return Ok(false);
    };
    if ledger::sent_to(conn, id, &e.recipient).await? {
        return Ok(true);
    }
    let Some(job_id) = ledger::job_of_message(conn, id).await? else {
        return Ok(false);
    };
    let payload = herald_shared::jobs::payload(conn, &job_id)
        .await
        .map_err(herald_shared::jobs::JobError::into_sqlx)?;
    let Some(job) =
        payload.and_then(|p| serde_json::from_slice::<herald_shared::email::EmailJob>(&p).ok())
    else {
        return Ok(false);
    };
    Ok(job
        .envelope
        .addresses()
        .any(|a| herald_shared::address::normalize(a) == e.recipient))
}

/// Stores the event; false if the same event was stored before.
async fn record(
    conn: &mut PgConnection,
    e: &RecipientEvent,
    event_type: &str,
    raw: &serde_json::Value,
    sqs_message_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    herald_shared::feedback::record(
        conn,
        &herald_shared::feedback::NewEvent {
            event_type,
            recipient: &e.recipient,
            ses_message_id: e.ses_message_id.as_deref(),
            feedback_id: e.feedback_id.as_deref(),
            bounce_type: e.bounce_type.as_deref(),
            bounce_sub_type: e.bounce_sub_type.as_deref(),
            complaint_type: e.complaint_type.as_deref(),
            sqs_message_id,
            occurred_at: e.occurred_at,
            raw,
            dedupe_key: &e.dedupe_key,
            detail: e.detail.as_ref(),
        },
    )
    .await
}

async fn apply_event(
    conn: &mut PgConnection,
    policy: &Policy,
    e: &RecipientEvent,
) -> Result<(), sqlx::Error> {
    match e.kind {
        Kind::Bounce => {
            let permanent = e.bounce_type.as_deref() == Some("Permanent");
            update_ledger(conn, e, ledger::Feedback::Bounce).await?;
            if permanent {
                let reason = format!(
                    "hard bounce ({})",
                    e.bounce_sub_type.as_deref().unwrap_or("unknown sub-type")
                );
                suppress_both(
                    conn,
                    e,
                    SuppressionType::Bounce,
                    &reason,
                    0,
                    Some(e.occurred_at),
                )
                .await?;
                tracing::info!(to = %herald_shared::address::mask(&e.recipient), "hard bounce: address suppressed");
            } else {
                let count = herald_shared::feedback::soft_bounces(
                    conn,
                    &e.recipient,
                    e.occurred_at - policy.soft_bounce_window,
                )
                .await?;
                let count_i32 = i32::try_from(count).unwrap_or(i32::MAX);
                suppressions::note_soft_bounce(conn, &e.recipient, count_i32, e.occurred_at)
                    .await?;
                if count >= policy.soft_bounce_threshold {
                    let reason = format!(
                        "{count} soft bounces within {} days",
                        policy.soft_bounce_window.num_days()
                    );
                    suppress_both(
                        conn,
                        e,
                        SuppressionType::Bounce,
                        &reason,
                        count_i32,
                        Some(e.occurred_at),
                    )
                    .await?;
                    tracing::info!(to = %herald_shared::address::mask(&e.recipient), count, "soft bounces reached the threshold: address suppressed");
                }
            }
        }
        // `not-spam` says the message was wrongly marked as spam: not a complaint, so it neither
        // suppresses nor counts toward the complaint rate.
        Kind::Complaint if e.complaint_type.as_deref() == Some("not-spam") => {}
        Kind::Complaint => {
            update_ledger(conn, e, ledger::Feedback::Complaint).await?;
            let reason = format!(
                "complaint ({})",
                e.complaint_type.as_deref().unwrap_or("unspecified")
            );
            suppress_both(conn, e, SuppressionType::Complaint, &reason, 0, None).await?;
            tracing::info!(to = %herald_shared::address::mask(&e.recipient), "complaint: address suppressed");
        }
        Kind::Delivery => update_ledger(conn, e, ledger::Feedback::Delivery).await?,
        Kind::Open => engage(conn, e, ledger::Engagement::Open).await?,
        Kind::Click => engage(conn, e, ledger::Engagement::Click).await?,
        Kind::DeliveryDelay => engage(conn, e, ledger::Engagement::DeliveryDelay).await?,
        Kind::Reject => engage(conn, e, ledger::Engagement::Reject).await?,
        Kind::RenderingFailure => engage(conn, e, ledger::Engagement::RenderingFailure).await?,
        // Leaving every topic through SES's own list management is an unsubscribe: marketing
        // mail stops, transactional mail still goes, as with Herald's own unsubscribe link.
        Kind::Subscription
            if e.detail
                .as_ref()
                .is_some_and(|d| d["unsubscribe_all"] == true) =>
        {
            suppressions::raise(
                conn,
                &Raise::unsubscribe(&e.recipient, "unsubscribed through SES list management"),
            )
            .await?;
            tracing::info!(to = %herald_shared::address::mask(&e.recipient), "unsubscribed through SES: marketing suppressed");
        }
        Kind::Subscription | Kind::Other(_) => {}
    }
    Ok(())
}

/// Suppresses the event's recipient for transactional and marketing mail (raising, never lowering).
async fn suppress_both(
    conn: &mut PgConnection,
    e: &RecipientEvent,
    suppression_type: SuppressionType,
    reason: &str,
    bounce_count: i32,
    bounce_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    suppressions::raise(
        conn,
        &Raise {
            email: &e.recipient,
            suppression_type,
            reason: Some(reason),
            transactional: true,
            marketing: true,
            bounce_count,
            bounce_at,
        },
    )
    .await?;
    Ok(())
}

/// Notes an engagement on the ledger row of the SES message (the webhook trigger makes its event).
async fn engage(
    conn: &mut PgConnection,
    e: &RecipientEvent,
    kind: ledger::Engagement,
) -> Result<(), sqlx::Error> {
    if let Some(message_id) = &e.ses_message_id {
        let empty = serde_json::json!({});
        ledger::record_engagement(
            conn,
            message_id,
            kind,
            e.occurred_at,
            &e.recipient,
            e.detail.as_ref().unwrap_or(&empty),
        )
        .await?;
        if kind.is_final() {
            tracing::warn!(
                ses_message_id = %message_id,
                kind = kind.as_str(),
                "SES refused a message it had accepted: final, not resent"
            );
        }
    }
    Ok(())
}

/// Notes delivery, bounce or complaint on the ledger row of the SES message, if it is ours.
async fn update_ledger(
    conn: &mut PgConnection,
    e: &RecipientEvent,
    kind: ledger::Feedback,
) -> Result<(), sqlx::Error> {
    if let Some(message_id) = &e.ses_message_id {
        ledger::record_feedback(
            conn,
            message_id,
            kind,
            e.occurred_at,
            e.bounce_type.as_deref(),
            &e.recipient,
        )
        .await?;
    }
    Ok(())
}
