//! The email job: its payload, enqueueing it with its ledger row, and the shared sending state.

pub mod attachments;
pub mod group;
pub mod keys;
pub mod ledger;
pub mod message;
pub mod templates;
pub mod view;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::address;
use crate::jobs::{self, EnqueueOptions, JobError, JobId};

/// The apalis queue (`job_type`) of email jobs. Never rename it: queued jobs would be orphaned.
pub const EMAIL_QUEUE: &str = crate::jobs::Queue::Email.name();

/// Transactional mail (accounts, receipts) or marketing mail (newsletters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, sqlx::Type)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sqlx(type_name = "varchar", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Sent even to addresses that unsubscribed from marketing.
    #[default]
    Transactional,
    /// Carries List-Unsubscribe headers; suppressed by unsubscribes too.
    Marketing,
}

impl Category {
    /// Both categories.
    pub const ALL: [Self; 2] = [Self::Transactional, Self::Marketing];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Marketing => "marketing",
        }
    }

    /// The category named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
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
        /// The locale chosen at enqueue (after fallback); jobs queued before templates were
        /// versioned have none and use the newest English version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<String>,
        /// The version pinned at enqueue.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<i32>,
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

impl jobs::QueueJob for EmailJob {
    const QUEUE: &'static str = EMAIL_QUEUE;
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
    /// Names, more recipients, the sender, reply-to, headers and tags; empty (and absent from
    /// the payload) for one plain recipient.
    #[serde(default, skip_serializing_if = "message::Envelope::is_plain")]
    pub envelope: message::Envelope,
}

/// Enqueues an email job and its ledger row on the caller's connection (one statement, so no
/// transaction is needed for it alone); returns the job id. Suppressed recipients are queued too:
/// the worker's send gate refuses them and records why.
#[tracing::instrument(skip_all, fields(to = %address::mask(&job.to), template = job.content.label()))]
pub async fn enqueue(
    conn: &mut PgConnection,
    job: &EmailJob,
    options: EnqueueOptions,
) -> Result<JobId, JobError> {
    let item = NewEmail {
        job,
        run_at: options.run_at,
        max_attempts: options.max_attempts,
        idempotency: None,
    };
    match enqueue_many(conn, &[item], false).await?.pop() {
        Some(Queued::New(id)) => Ok(id),
        other => Err(JobError::Db(sqlx::Error::Protocol(format!(
            "an email without a key or suppression check was answered {other:?}"
        )))),
    }
}

/// One email for [`enqueue_many`].
#[derive(Debug, Clone, Copy)]
pub struct NewEmail<'a> {
    /// The payload.
    pub job: &'a EmailJob,
    /// Earliest send; `None` means now. Stored in whole seconds, as apalis does.
    pub run_at: Option<DateTime<Utc>>,
    /// Total runs allowed.
    pub max_attempts: u32,
    /// The API's idempotency key and the SHA-256 (hex) of the request it came with.
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// What [`enqueue_many`] did with one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Queued as this new job.
    New(JobId),
    /// Its key was used before with the same request: that request's job.
    Replayed(JobId),
    /// Its key was used before with another request, or by a transaction that committed meanwhile.
    KeyConflict,
    /// The send rule suppresses the recipient in its category; nothing was queued.
    Suppressed,
}

/// Queues emails in one statement (the `enqueue_emails` function): for each, in order, its
/// idempotency key, its job and its pending ledger row, or why not. With `refuse_suppressed`,
/// recipients the send rule suppresses are answered [`Queued::Suppressed`] instead of queued.
/// Keys must be distinct within one call.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    emails: &[NewEmail<'_>],
    refuse_suppressed: bool,
) -> Result<Vec<Queued>, JobError> {
    let n = emails.len();
    let mut rows = ledger::NewRows::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for email in emails {
        let id = JobId::generate();
        ids.push(id);
        rows.ids.push(id.to_string());
        rows.payloads.push(serde_json::to_vec(email.job)?);
        rows.recipients.push(address::normalize(&email.job.to));
        rows.templates.push(email.job.content.label().to_owned());
        rows.categories.push(email.job.category.as_str().to_owned());
        rows.run_at.push(
            email
                .run_at
                .and_then(|at| DateTime::from_timestamp(at.timestamp(), 0)),
        );
        rows.max_attempts
            .push(i32::try_from(email.max_attempts.max(1)).unwrap_or(i32::MAX));
        rows.keys
            .push(email.idempotency.map(|(key, _)| key.to_owned()));
        rows.hashes
            .push(email.idempotency.map(|(_, hash)| hash.to_owned()));
    }
    let answers = ledger::enqueue(conn, EMAIL_QUEUE, refuse_suppressed, &rows).await?;
    if answers.len() != n {
        return Err(JobError::Db(sqlx::Error::Protocol(format!(
            "enqueue_emails answered {} of {n} emails",
            answers.len()
        ))));
    }
    Ok(answers
        .into_iter()
        .zip(ids)
        .map(|((outcome, job_id), id)| match outcome.as_str() {
            "queued" => Queued::New(id),
            "replayed" => match job_id.as_deref().map(str::parse) {
                Some(Ok(id)) => Queued::Replayed(id),
                // A key whose job id is not one cannot be replayed: answer a conflict, not a lie.
                _ => Queued::KeyConflict,
            },
            "suppressed" => Queued::Suppressed,
            _ => Queued::KeyConflict,
        })
        .collect())
}

/// What decides whether a job may send now, read in one round trip.
#[derive(Debug, Clone)]
pub struct SendGate {
    /// What blocks the email, by the one send rule (`email_send_blocker`).
    pub blocker: Option<ledger::Blocker>,
    /// The pause in force, when `blocker` is [`ledger::Blocker::Paused`].
    pub pause: Option<Pause>,
}

/// Asks the send rule about this email and reads the pause in force, at once.
pub async fn send_gate(
    conn: &mut PgConnection,
    email: &str,
    category: Category,
) -> Result<SendGate, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT email_send_blocker($1, $2) AS blocker, p.paused_until, p.pause_reason
           FROM (SELECT 1) AS one
           LEFT JOIN email_sending_control p ON p.paused_until > now()"#,
        email,
        category.as_str()
    )
    .fetch_one(conn)
    .await?;
    let blocker = ledger::Blocker::from_db(row.blocker.as_deref());
    Ok(SendGate {
        pause: row
            .paused_until
            .filter(|_| blocker == Some(ledger::Blocker::Paused))
            .map(|until| Pause {
                until,
                reason: row.pause_reason,
            }),
        blocker,
    })
}

/// The addresses among `emails` (normalised) that the send rule suppresses in `category`: the
/// same rule as [`send_gate`], for an email with several recipients.
pub async fn suppressed_among(
    conn: &mut PgConnection,
    emails: &[String],
    category: Category,
) -> Result<Vec<String>, sqlx::Error> {
    let normalised: Vec<String> = emails.iter().map(|e| address::normalize(e)).collect();
    sqlx::query_scalar!(
        r#"SELECT e AS "e!" FROM unnest($1::text[]) AS e
           WHERE email_send_blocker(e, $2) = 'suppressed'"#,
        &normalised,
        category.as_str()
    )
    .fetch_all(conn)
    .await
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

/// The longest subject accepted, in bytes (RFC 5322's line limit).
pub const MAX_SUBJECT_BYTES: usize = 998;

/// A subject must be one non-empty line of at most [`MAX_SUBJECT_BYTES`], without control or
/// invisible characters: a CR or LF in it would start a new header. Raw subjects and rendered
/// template subjects get the same check, at enqueue.
pub fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.trim().is_empty() {
        return Err("the subject is empty");
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err("the subject is longer than 998 bytes");
    }
    if subject.contains(['\r', '\n']) {
        return Err("the subject must be one line (no CR or LF)");
    }
    if subject
        .chars()
        .any(|c| c.is_control() || crate::address::is_invisible(c))
    {
        return Err("the subject contains a control or invisible character");
    }
    Ok(())
}

/// The subject an email job's content renders to, as the worker would render it (a verification or
/// reset email's own data, its user name and link, are not stored: placeholders stand in). `Err`
/// says why it cannot be rendered (unknown template, data it refuses).
pub async fn subject_of(
    conn: &mut sqlx::PgConnection,
    content: &EmailContent,
) -> Result<String, templates::store::StoreError> {
    let (name, data, locale, version) = match content {
        EmailContent::Raw { subject, .. } => return Ok(subject.clone()),
        EmailContent::Template {
            name,
            data,
            locale,
            version,
        } => (name.as_str(), data.clone(), locale.as_deref(), *version),
        other => (
            other.label(),
            serde_json::json!({"name": "…", "link": "…"}),
            None,
            None,
        ),
    };
    let locale = locale.unwrap_or(templates::DEFAULT_LOCALE);
    let (locale, version) = match version {
        Some(version) => (locale.to_owned(), version),
        None => templates::store::resolve(conn, name, locale)
            .await?
            .ok_or_else(|| templates::TemplateError::Unknown(name.to_owned()))?,
    };
    let stored = templates::store::load(conn, name, &locale, version)
        .await?
        .ok_or_else(|| templates::TemplateError::Unknown(format!("{name} {locale} v{version}")))?;
    let compiled = templates::Compiled::compile(&stored.sources)?;
    Ok(compiled.render(&data, "")?.subject)
}

/// The sending pause in force (after SES throttled or paused the account), if any.
pub async fn sending_pause(conn: &mut PgConnection) -> Result<Option<Pause>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT paused_until, pause_reason FROM email_sending_control WHERE paused_until > now()"
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|r| {
        r.paused_until.map(|until| Pause {
            until,
            reason: r.pause_reason,
        })
    }))
}
