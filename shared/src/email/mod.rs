//! The email job: its payload, enqueueing it with its ledger row, and the shared sending state.

pub mod templates;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use ulid::Ulid;
use uuid::Uuid;

use crate::address;
use crate::jobs::{self, EnqueueOptions, JobError};

/// The apalis queue (`job_type`) of email jobs. Never rename it: queued jobs would be orphaned.
pub const EMAIL_QUEUE: &str = "herald.email";

/// Transactional mail (accounts, receipts) or marketing mail (newsletters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Sent even to addresses that unsubscribed from marketing.
    #[default]
    Transactional,
    /// Carries List-Unsubscribe headers; suppressed by unsubscribes too.
    Marketing,
}

impl Category {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Marketing => "marketing",
        }
    }
}

/// What to send. Verification and reset jobs carry the user, never a token: the worker issues the
/// token when it sends, so no raw token is ever stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EmailContent {
    /// A named template rendered with `data`.
    Template {
        /// Template name.
        name: String,
        /// Variables (a JSON object).
        data: Value,
    },
    /// Content given by the caller, used as is.
    Raw {
        /// Subject line.
        subject: String,
        /// Plain-text part.
        text: Option<String>,
        /// HTML part.
        html: Option<String>,
    },
    /// The email-verification message with a fresh 24-hour token.
    Verification {
        /// The user to verify.
        user_id: Uuid,
    },
    /// The password-reset message with a fresh one-hour token.
    PasswordReset {
        /// The user who asked.
        user_id: Uuid,
    },
}

impl EmailContent {
    /// The ledger's `template` column.
    pub fn label(&self) -> &str {
        match self {
            Self::Template { name, .. } => name,
            Self::Raw { .. } => "raw",
            Self::Verification { .. } => templates::VERIFICATION,
            Self::PasswordReset { .. } => templates::PASSWORD_RESET,
        }
    }
}

/// The payload of an email job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailJob {
    /// Recipient address (validated).
    pub to: String,
    /// Transactional or marketing.
    pub category: Category,
    /// What to send.
    pub content: EmailContent,
}

/// Enqueues an email job and its ledger row on the caller's transaction; returns the job id.
#[tracing::instrument(skip_all, fields(to = %address::mask(&job.to), template = job.content.label()))]
pub async fn enqueue(
    conn: &mut PgConnection,
    job: &EmailJob,
    options: EnqueueOptions,
) -> Result<Ulid, JobError> {
    let id = jobs::enqueue(&mut *conn, EMAIL_QUEUE, job, options).await?;
    sqlx::query!(
        "INSERT INTO email_deliveries (job_id, recipient, template, category)
         VALUES ($1, $2, $3, $4)",
        id.to_string(),
        address::normalize(&job.to),
        job.content.label(),
        job.category.as_str()
    )
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// Whether `email` is suppressed for `category` (case-insensitive).
pub async fn is_suppressed(
    conn: &mut PgConnection,
    email: &str,
    category: Category,
) -> Result<bool, sqlx::Error> {
    let marketing = category == Category::Marketing;
    sqlx::query_scalar!(
        r#"SELECT EXISTS (
               SELECT 1 FROM email_suppressions
               WHERE email = lower(btrim($1))
                 AND (suppress_transactional OR ($2 AND suppress_marketing))
           ) AS "suppressed!""#,
        email,
        marketing
    )
    .fetch_one(conn)
    .await
}

/// What decides whether a job may send now, read in one round trip.
#[derive(Debug, Clone)]
pub struct SendGate {
    /// SES (or an operator) paused every worker until then.
    pub pause: Option<Pause>,
    /// The compliance guard holds this category.
    pub compliance_paused: bool,
    /// The recipient is suppressed for this category.
    pub suppressed: bool,
    /// Runs of the job so far (apalis counts the current one once it ends).
    pub attempts: i32,
    /// Runs allowed.
    pub max_attempts: i32,
}

/// Reads the pause, the compliance hold, the recipient's suppression and the job's attempts at
/// once: the checks every send makes, in one statement instead of four.
pub async fn send_gate(
    conn: &mut PgConnection,
    job_id: &str,
    email: &str,
    category: Category,
) -> Result<SendGate, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT p.paused_until, p.pause_reason,
                  coalesce((SELECT paused FROM compliance_pauses WHERE category = $3), false)
                      AS "compliance_paused!",
                  EXISTS (SELECT 1 FROM email_suppressions
                          WHERE email = lower(btrim($2))
                            AND (suppress_transactional OR ($3 = 'marketing' AND suppress_marketing)))
                      AS "suppressed!",
                  coalesce(j.attempts, 0) AS "attempts!", coalesce(j.max_attempts, 1) AS "max_attempts!"
           FROM (SELECT 1) AS one
           LEFT JOIN email_sending_control p ON p.paused_until > now()
           LEFT JOIN apalis.jobs j ON j.id = $1"#,
        job_id,
        email,
        category.as_str()
    )
    .fetch_one(conn)
    .await?;
    Ok(SendGate {
        pause: row.paused_until.map(|until| Pause {
            until,
            reason: row.pause_reason,
        }),
        compliance_paused: row.compliance_paused,
        suppressed: row.suppressed,
        attempts: row.attempts,
        max_attempts: row.max_attempts,
    })
}

/// What [`claim_clear_many`] saw when it moved a ledger row to `sending`.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The ledger row as it was before (status `pending` or `sending`).
    pub before: Delivery,
    /// Runs of the job so far.
    pub job_attempts: i32,
    /// Runs allowed.
    pub max_attempts: i32,
}

/// The common case in one statement, for many emails at once: each email that nothing holds back
/// (no pause, no compliance hold, no suppression) and whose row is `pending` or `sending` is marked
/// `sending`; the answer says, by job id, what each claimed row was. A job missing from the answer
/// was not changed; its caller takes the step-by-step path, which says why. Only for content
/// without a token (`token_id` is cleared, as that path does for such content).
pub async fn claim_clear_many(
    conn: &mut PgConnection,
    job_ids: &[String],
    emails: &[String],
    categories: &[String],
) -> Result<Vec<(String, Claim)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"UPDATE email_deliveries AS d
           SET status = 'sending', attempts = d.attempts + 1, sending_started_at = now(),
               uncertain_resends = d.uncertain_resends + CASE WHEN d.status = 'sending' THEN 1 ELSE 0 END,
               token_id = NULL
           FROM (SELECT v.job_id, v.email, v.category,
                        coalesce(j.attempts, 0) AS job_attempts, coalesce(j.max_attempts, 1) AS max_attempts
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS v(job_id, email, category)
                 LEFT JOIN apalis.jobs j ON j.id = v.job_id) AS v
           WHERE d.job_id = v.job_id
             AND d.status IN ('pending', 'sending')
             AND NOT EXISTS (SELECT 1 FROM email_sending_control WHERE paused_until > now())
             AND NOT coalesce((SELECT paused FROM compliance_pauses c WHERE c.category = v.category), false)
             AND NOT EXISTS (SELECT 1 FROM email_suppressions s
                             WHERE s.email = lower(btrim(v.email))
                               AND (s.suppress_transactional OR (v.category = 'marketing' AND s.suppress_marketing)))
           -- The subquery reads the statement's snapshot: the row as it was before this update.
           RETURNING d.job_id,
                     (SELECT b.status FROM email_deliveries b WHERE b.job_id = d.job_id) AS "status!",
                     d.attempts - 1 AS "attempts!", d.ses_message_id, d.last_error,
                     d.uncertain_resends, v.job_attempts AS "job_attempts!",
                     v.max_attempts AS "max_attempts!""#,
        job_ids,
        emails,
        categories
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let claim = Claim {
                before: Delivery {
                    job_id: r.job_id.clone(),
                    uncertain_resends: r.uncertain_resends - i32::from(r.status == "sending"),
                    status: r.status,
                    ses_message_id: r.ses_message_id,
                    attempts: r.attempts,
                    last_error: r.last_error,
                    token_id: None,
                },
                job_attempts: r.job_attempts,
                max_attempts: r.max_attempts,
            };
            (r.job_id, claim)
        })
        .collect())
}

/// The ledger row of an email job.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Job id (ULID).
    pub job_id: String,
    /// `pending`, `sending`, `sent`, `suppressed` or `failed`.
    pub status: String,
    /// The id SES gave the message, once accepted.
    pub ses_message_id: Option<String>,
    /// SES calls made.
    pub attempts: i32,
    /// Resends after an attempt whose outcome was unknown.
    pub uncertain_resends: i32,
    /// Last failure.
    pub last_error: Option<String>,
    /// Token issued for the current attempt.
    pub token_id: Option<Uuid>,
}

/// Loads a job's ledger row.
pub async fn delivery(
    conn: &mut PgConnection,
    job_id: &str,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as!(
        Delivery,
        "SELECT job_id, status, ses_message_id, attempts, uncertain_resends, last_error, token_id
         FROM email_deliveries WHERE job_id = $1",
        job_id
    )
    .fetch_optional(conn)
    .await
}

/// Loads and locks a job's ledger row for the duration of the caller's transaction.
pub async fn lock_delivery(
    conn: &mut PgConnection,
    job_id: &str,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as!(
        Delivery,
        "SELECT job_id, status, ses_message_id, attempts, uncertain_resends, last_error, token_id
         FROM email_deliveries WHERE job_id = $1 FOR UPDATE",
        job_id
    )
    .fetch_optional(conn)
    .await
}

/// Records that an SES call is about to start (committed before the call).
pub async fn mark_sending(
    conn: &mut PgConnection,
    job_id: &str,
    uncertain: bool,
    token_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE email_deliveries
         SET status = 'sending', attempts = attempts + 1, sending_started_at = now(),
             uncertain_resends = uncertain_resends + CASE WHEN $2 THEN 1 ELSE 0 END, token_id = $3
         WHERE job_id = $1",
        job_id,
        uncertain,
        token_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records SES's acceptance of one email or many in one statement (one commit for all of them).
pub async fn mark_sent_many(
    conn: &mut PgConnection,
    job_ids: &[String],
    ses_message_ids: &[String],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE email_deliveries AS d
         SET status = 'sent', ses_message_id = v.ses_message_id, sent_at = now(), last_error = NULL
         FROM unnest($1::text[], $2::text[]) AS v(job_id, ses_message_id)
         WHERE d.job_id = v.job_id",
        job_ids,
        ses_message_ids
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Records a final outcome without an SES message: `suppressed` or `failed`, or `pending` again
/// for a retry later.
pub async fn mark_outcome(
    conn: &mut PgConnection,
    job_id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE email_deliveries SET status = $2, last_error = $3 WHERE job_id = $1",
        job_id,
        status,
        error
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The pause every worker honours, if one is in force.
#[derive(Debug, Clone)]
pub struct Pause {
    /// Until when.
    pub until: DateTime<Utc>,
    /// Why (SES's error code).
    pub reason: Option<String>,
}

/// Pauses sending for every worker until `until` (never shortens a longer pause).
pub async fn pause_sending(
    conn: &mut PgConnection,
    until: DateTime<Utc>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE email_sending_control
         SET paused_until = GREATEST(coalesce(paused_until, now()), $1), pause_reason = $2",
        until,
        reason
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Reserves `count` consecutive send slots of the shared rate limiter: slots are `1/rate` seconds
/// apart across every worker process. Returns the first slot's time (now or later).
pub async fn reserve_send_slots(
    conn: &mut PgConnection,
    per_second: f64,
    count: u32,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let spacing_us = (1_000_000.0 / per_second.max(0.001)).round();
    let block_us = spacing_us * f64::from(count.max(1));
    // The limiter's position need not survive a database crash (the worst case is a burst at the
    // configured rate right after one), so this commit does not wait for the WAL flush: that saves
    // an fsync before the first send after every idle spell.
    sqlx::query_scalar!(
        r#"UPDATE email_sending_control
           SET next_send_slot = GREATEST(next_send_slot, clock_timestamp()) + make_interval(secs => $1::float8 / 1000000)
           FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait
           RETURNING next_send_slot - make_interval(secs => $1::float8 / 1000000) AS "slot!""#,
        block_us
    )
    .fetch_one(conn)
    .await
}
