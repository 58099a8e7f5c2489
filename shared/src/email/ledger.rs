//! The send ledger (`email_deliveries`) as a state machine, and the only code that writes it.
//!
//! One row per email job. Every transition is one guarded statement
//! (`... WHERE status IN (<allowed predecessors>)`) that reports whether it happened; a transition
//! that did not happen is an answer ("already sent", "cancelled meanwhile"), not an error. Two rules
//! this module exists for: a `sent` row never changes status again, and every resend after an SES
//! call whose outcome was unknown is counted (`uncertain_resends`).
//!
//! | from → to | by |
//! |---|---|
//! | (none) → pending | [`insert`] at enqueue |
//! | pending, sending → sending | [`claim`], [`claim_clear_many`]; from `sending` the resend is uncertain |
//! | pending, sending, failed, cancelled → sent | [`mark_sent_many`], [`mark_sent_and_record_runs`] (one statement text, [`SENT`]): SES accepted it, whatever happened meanwhile |
//! | pending, sending → pending | [`release`]: refused before SES accepted it |
//! | pending, sending unchanged | [`note_wait`]: held back by a pause or a hold before any call |
//! | sending → sending | [`keep_unknown`]: no answer from SES; the next claim counts the resend |
//! | pending, sending → failed | [`fail`]: refused for good or attempts exhausted |
//! | pending, sending → suppressed | [`suppress`]: the send rule says so |
//! | pending, sending → cancelled | [`cancel`]: a queued email cancelled |
//! | failed, suppressed, cancelled → pending (or sending when the last outcome was unknown) | [`operator_retry`] |
//! | sent → anything | refused |
//!
//! A trigger on this table, `webhook_email_events`, records the webhook events of these
//! transitions (`email.sent`, `email.failed`, `email.suppressed`) and of feedback
//! (`email.delivered`, `email.bounced`, `email.complained`) and of engagement
//! ([`record_engagement`]: `email.opened`, `email.clicked`, `email.delivery_delayed`,
//! `email.rejected`): see [`crate::webhooks::outbox`].
//!
//! Longer than 400 lines on purpose: every statement that writes `email_deliveries` is here, so
//! that the guards can be read and changed together.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Category;
use crate::address;

/// A ledger row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "varchar", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Queued; never claimed, or refused cleanly before SES could accept it.
    Pending,
    /// Claimed: an SES call may be in flight, or may have happened.
    Sending,
    /// SES accepted it. Final.
    Sent,
    /// Given up.
    Failed,
    /// Blocked at send time by a suppression.
    Suppressed,
    /// Cancelled while queued.
    Cancelled,
}

impl Status {
    /// Every status.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Suppressed,
        Self::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Statuses retention may delete: the email's story is over.
    pub const FINISHED: [Self; 4] = [Self::Sent, Self::Suppressed, Self::Failed, Self::Cancelled];
}

/// What an email job records as its answer when it ends without failing, and what
/// `GET /v1/jobs/{id}` shows: `{"outcome": <status>, "ses_message_id": …}`. The grouped `sent`
/// statement builds the same object in SQL (`crate::jobs::RECORD_SENT_RUNS`; a test compares).
pub fn job_result(status: Status, ses_message_id: Option<&str>) -> serde_json::Value {
    serde_json::json!({"outcome": status, "ses_message_id": ses_message_id})
}

impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn names(statuses: &[Status]) -> Vec<String> {
    statuses.iter().map(|s| s.as_str().to_owned()).collect()
}

/// What blocks an email now, as the database's `email_send_blocker` function answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// The address is suppressed for the category: final.
    Suppressed,
    /// Every worker is paused (SES, or an operator).
    Paused,
    /// The compliance guard holds the category.
    Held,
}

impl Blocker {
    /// Reads the function's answer (`NULL` → nothing blocks).
    pub fn from_db(answer: Option<&str>) -> Option<Self> {
        match answer? {
            "suppressed" => Some(Self::Suppressed),
            "paused" => Some(Self::Paused),
            "held" => Some(Self::Held),
            _ => None,
        }
    }
}

/// What blocks sending to `address` in `category` now, if anything: the one send rule.
pub async fn send_blocker(
    conn: &mut PgConnection,
    address: &str,
    category: Category,
) -> Result<Option<Blocker>, sqlx::Error> {
    let answer = sqlx::query_scalar!(
        "SELECT email_send_blocker($1, $2)",
        address,
        category.as_str()
    )
    .fetch_one(conn)
    .await?;
    Ok(Blocker::from_db(answer.as_deref()))
}

/// Whether the send rule refuses `address` in `category` for good (a suppression); pauses and
/// holds only delay, so the API still queues such mail.
pub async fn is_suppressed(
    conn: &mut PgConnection,
    address: &str,
    category: Category,
) -> Result<bool, sqlx::Error> {
    Ok(send_blocker(conn, address, category).await? == Some(Blocker::Suppressed))
}

/// The ledger row of an email job.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Job id (ULID).
    pub job_id: String,
    /// Where the email is in its life.
    pub status: Status,
    /// The id SES gave the message, once accepted.
    pub ses_message_id: Option<String>,
    /// SES calls made.
    pub attempts: i32,
    /// Resends after an attempt whose outcome was unknown.
    pub uncertain_resends: i32,
    /// Whether the last SES call ended without an answer.
    pub outcome_unknown: bool,
    /// Last failure.
    pub last_error: Option<String>,
    /// Token issued for the current attempt.
    pub token_id: Option<Uuid>,
}

/// Everything the ledger knows of one email, for the console's job page.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Recipient (normalised).
    pub recipient: String,
    /// Template label.
    pub template: String,
    /// Category.
    pub category: Category,
    /// Ledger status.
    pub status: Status,
    /// SES's message id, once accepted.
    pub ses_message_id: Option<String>,
    /// SES calls made.
    pub attempts: i32,
    /// Resends after an unanswered call.
    pub uncertain_resends: i32,
    /// Last failure or note.
    pub last_error: Option<String>,
    /// Each run that did not end `sent` (oldest first, the newest 20): `n`, `event`, `error`,
    /// `started_at`, `ended_at`. The run that sent is the row's own columns (`sending_started_at`,
    /// `sent_at`, `ses_message_id`): the send path writes no log.
    pub attempt_log: serde_json::Value,
    /// When the latest SES call began.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub sending_started_at: Option<DateTime<Utc>>,
    /// When SES accepted it.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub sent_at: Option<DateTime<Utc>>,
    /// Delivery reported.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// Bounce reported.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub bounced_at: Option<DateTime<Utc>>,
    /// Bounce type.
    pub bounce_type: Option<String>,
    /// Complaint reported.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub complained_at: Option<DateTime<Utc>>,
    /// SES refused it after accepting it (Reject, Rendering Failure): final.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub rejected_at: Option<DateTime<Utc>>,
    /// Opens, clicks, delays and rejects SES reported.
    pub engagements: i32,
    /// Row written (enqueued).
    #[serde(serialize_with = "crate::time::ms")]
    pub created_at: DateTime<Utc>,
}

/// The ledger row of a job, every column the console shows.
pub async fn record(conn: &mut PgConnection, job_id: &str) -> Result<Option<Record>, sqlx::Error> {
    sqlx::query_as!(
        Record,
        r#"SELECT recipient, template, category AS "category: Category", status AS "status: Status",
                ses_message_id, attempts, uncertain_resends,
                last_error, attempt_log, sending_started_at, sent_at, delivered_at, bounced_at, bounce_type,
                complained_at, rejected_at, engagements, created_at
         FROM email_deliveries WHERE job_id = $1"#,
        job_id
    )
    .fetch_optional(conn)
    .await
}

/// One category's sent emails in two windows (the compliance guard's cohorts), counted by
/// recipient as SES counts them: each recipient counts once as a bounce and once as a complaint,
/// however often SES reports it.
#[derive(Debug, Clone)]
pub struct Cohorts {
    /// Category.
    pub category: Category,
    /// Sent since the short window's start.
    pub short_sends: i64,
    /// Of those, hard bounces.
    pub short_bounces: i64,
    /// Of those, complaints.
    pub short_complaints: i64,
    /// Sent since the long window's start.
    pub long_sends: i64,
    /// Of those, hard bounces.
    pub long_bounces: i64,
    /// Of those, complaints.
    pub long_complaints: i64,
}

/// The cohorts of emails sent since `short` and since `long`, per category, in one scan (the
/// short window is counted with FILTERs inside the long one's rows).
pub async fn sent_cohorts(
    conn: &mut PgConnection,
    short: DateTime<Utc>,
    long: DateTime<Utc>,
) -> Result<Vec<Cohorts>, sqlx::Error> {
    sqlx::query_as!(
        Cohorts,
        r#"SELECT category AS "category!: Category",
                  coalesce(sum(recipients) FILTER (WHERE sent_at >= $1), 0)::bigint AS "short_sends!",
                  coalesce(sum(bounced) FILTER (WHERE sent_at >= $1), 0)::bigint AS "short_bounces!",
                  coalesce(sum(complained) FILTER (WHERE sent_at >= $1), 0)::bigint AS "short_complaints!",
                  coalesce(sum(recipients) FILTER (WHERE sent_at >= $2), 0)::bigint AS "long_sends!",
                  coalesce(sum(bounced) FILTER (WHERE sent_at >= $2), 0)::bigint AS "long_bounces!",
                  coalesce(sum(complained) FILTER (WHERE sent_at >= $2), 0)::bigint AS "long_complaints!"
           FROM (SELECT category, sent_at, recipients,
                        least(recipients, greatest(coalesce(cardinality(hard_bounced_recipients), 0),
                                                   (bounce_type = 'Permanent')::int)) AS bounced,
                        least(recipients, greatest(coalesce(cardinality(complained_recipients), 0),
                                                   (complained_at IS NOT NULL)::int)) AS complained
                 FROM email_deliveries
                 WHERE status = 'sent' AND sent_at >= least($1::timestamptz, $2::timestamptz)) AS d
           GROUP BY category"#,
        short,
        long
    )
    .fetch_all(conn)
    .await
}

/// Emails still to be sent with template `name` (their rows are `pending` or `sending`).
pub async fn queued_with_template(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM email_deliveries
           WHERE template = $1 AND status IN ('pending', 'sending')"#,
        name
    )
    .fetch_one(conn)
    .await
}

/// Emails that reached `sent`, `failed` or `suppressed` in one hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HourCounts {
    /// The hour's start.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub hour: Option<DateTime<Utc>>,
    /// Accepted by SES.
    pub sent: i64,
    /// Failed for good.
    pub failed: i64,
    /// Refused by the send rule.
    pub suppressed: i64,
}

/// Per hour of the last 24 (oldest first, 24 entries, empty hours included), the emails that
/// ended `sent`, `failed` or `suppressed` in it. Reads rows created in the last 48 hours only.
pub async fn hourly_outcomes(conn: &mut PgConnection) -> Result<Vec<HourCounts>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH ended AS (
               SELECT date_trunc('hour', coalesce(sent_at, updated_at)) AS hour,
                      count(*) FILTER (WHERE status = 'sent') AS sent,
                      count(*) FILTER (WHERE status = 'failed') AS failed,
                      count(*) FILTER (WHERE status = 'suppressed') AS suppressed
               FROM email_deliveries
               WHERE created_at >= now() - interval '48 hours'
                 AND status IN ('sent', 'failed', 'suppressed')
                 AND coalesce(sent_at, updated_at) >= date_trunc('hour', now()) - interval '23 hours'
               GROUP BY 1
           )
           SELECT h.hour AS "hour!", coalesce(e.sent, 0) AS "sent!", coalesce(e.failed, 0) AS "failed!",
                  coalesce(e.suppressed, 0) AS "suppressed!"
           FROM generate_series(date_trunc('hour', now()) - interval '23 hours',
                                date_trunc('hour', now()), interval '1 hour') AS h(hour)
           LEFT JOIN ended e ON e.hour = h.hour
           ORDER BY h.hour"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| HourCounts {
            hour: Some(r.hour),
            sent: r.sent,
            failed: r.failed,
            suppressed: r.suppressed,
        })
        .collect())
}

/// Creates the row of a new email job (`pending`); a second insert for the same job is a no-op.
/// Returns whether a row was created.
pub async fn insert(
    conn: &mut PgConnection,
    job_id: &str,
    recipient: &str,
    template: &str,
    category: Category,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "INSERT INTO email_deliveries (job_id, recipient, template, category)
         VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO NOTHING",
        job_id,
        address::normalize(recipient),
        template,
        category.as_str()
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// New emails for [`enqueue`], column by column.
#[derive(Debug, Default)]
pub struct NewRows {
    /// Job ids (ULIDs).
    pub ids: Vec<String>,
    /// Job payloads (JSON).
    pub payloads: Vec<Vec<u8>>,
    /// Normalised recipients.
    pub recipients: Vec<String>,
    /// Template labels.
    pub templates: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Earliest runs (`None`: now).
    pub run_at: Vec<Option<DateTime<Utc>>>,
    /// Runs allowed.
    pub max_attempts: Vec<i32>,
    /// Idempotency keys.
    pub keys: Vec<Option<String>>,
    /// Request hashes, beside their keys.
    pub hashes: Vec<Option<String>>,
}

impl NewRows {
    /// Room for `n` emails.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            recipients: Vec::with_capacity(n),
            templates: Vec::with_capacity(n),
            categories: Vec::with_capacity(n),
            run_at: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
        }
    }
}

/// The ledger's first step, with the job and the key in the same statement (`enqueue_emails`, in
/// the migrations): each email's outcome (`queued`, `replayed`, `key_conflict`, `suppressed`) and
/// job id, in order.
pub async fn enqueue(
    conn: &mut PgConnection,
    queue: &str,
    refuse_suppressed: bool,
    rows: &NewRows,
) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    let answers = sqlx::query!(
        r#"SELECT outcome AS "outcome!", job_id FROM enqueue_emails($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"#,
        queue,
        refuse_suppressed,
        &rows.ids,
        &rows.payloads,
        &rows.recipients,
        &rows.templates,
        &rows.categories,
        &rows.run_at as &[Option<DateTime<Utc>>],
        &rows.max_attempts,
        &rows.keys as &[Option<String>],
        &rows.hashes as &[Option<String>],
    )
    .fetch_all(conn)
    .await?;
    Ok(answers.into_iter().map(|a| (a.outcome, a.job_id)).collect())
}

/// Loads a job's ledger row.
pub async fn find(conn: &mut PgConnection, job_id: &str) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT job_id, status AS "status: Status", ses_message_id, attempts, uncertain_resends,
                  outcome_unknown, last_error, token_id
           FROM email_deliveries WHERE job_id = $1"#,
        job_id
    )
    .fetch_optional(conn)
    .await
}

/// Loads and locks a job's ledger row for the duration of the caller's transaction.
pub async fn lock(conn: &mut PgConnection, job_id: &str) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT job_id, status AS "status: Status", ses_message_id, attempts, uncertain_resends,
                  outcome_unknown, last_error, token_id
           FROM email_deliveries WHERE job_id = $1 FOR UPDATE"#,
        job_id
    )
    .fetch_optional(conn)
    .await
}

const CLAIMABLE: [Status; 2] = [Status::Pending, Status::Sending];

/// pending/sending → sending before an SES call (committed before the call). From `sending` the
/// resend is counted as uncertain. Returns false when the row was in no state to send from.
pub async fn claim(
    conn: &mut PgConnection,
    job_id: &str,
    token_id: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE email_deliveries
         SET status = 'sending', attempts = attempts + 1, sending_started_at = now(),
             uncertain_resends = uncertain_resends + CASE WHEN status = 'sending' THEN 1 ELSE 0 END,
             outcome_unknown = false, token_id = $2
         WHERE job_id = $1 AND status = ANY($3)",
        job_id,
        token_id,
        &names(&CLAIMABLE)
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How long a grouped statement may wait for a row lock before PostgreSQL gives up on it.
///
/// Set inside the statement itself (`set_config(.., true)` in a joined CTE, evaluated before any row
/// reaches the update and so before any lock wait), so bounding it costs no extra round trip and
/// no transaction; it ends with the statement's implicit transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// The connection's own `lock_timeout`.
    Session,
    /// At most this long (at least 1 ms).
    AtMost(std::time::Duration),
}

impl LockWait {
    /// As the value of `lock_timeout` (`None`: leave the session's).
    pub(crate) fn setting(self) -> Option<String> {
        match self {
            Self::Session => None,
            Self::AtMost(bound) => Some(format!("{}ms", bound.as_millis().max(1))),
        }
    }
}

/// What [`claim_clear_many`] saw when it moved a ledger row to `sending`.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The ledger row as it was before (always `pending`, with a known outcome).
    pub before: Delivery,
}

/// [`claim`] for many emails in one statement, for the common case only: a `pending` row whose
/// last SES call has a known outcome and that nothing blocks (the send rule). The answer says, by
/// job id, what each claimed row was. A job missing from the answer was not changed; its caller
/// takes the step-by-step path, which says why (a `sending` row left by a crash is claimed there,
/// with its uncertain resend counted). Only for content without a token (`token_id` is cleared).
///
/// Because only such rows are claimed, the row as it was follows from the row as it is: no
/// second lookup of each row for its old values (it cost 15-33 % of the statement).
pub async fn claim_clear_many(
    conn: &mut PgConnection,
    job_ids: &[String],
    emails: &[String],
    categories: &[String],
    lock_wait: LockWait,
) -> Result<Vec<(String, Claim)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH lock_wait AS MATERIALIZED (
               SELECT set_config('lock_timeout', COALESCE($4, current_setting('lock_timeout')), true)
           )
           UPDATE email_deliveries AS d
           SET status = 'sending', attempts = d.attempts + 1, sending_started_at = now(),
               token_id = NULL
           FROM unnest($1::text[], $2::text[], $3::text[]) AS v(job_id, email, category)
                CROSS JOIN LATERAL email_send_blocks(v.email, v.category) AS rule, lock_wait
           WHERE d.job_id = v.job_id
             AND d.status = 'pending' AND NOT d.outcome_unknown
             AND rule.blocker IS NULL
           RETURNING d.job_id, d.attempts - 1 AS "attempts!", d.ses_message_id, d.last_error,
                     d.uncertain_resends"#,
        job_ids,
        emails,
        categories,
        lock_wait.setting()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let claim = Claim {
                before: Delivery {
                    job_id: r.job_id.clone(),
                    status: Status::Pending,
                    ses_message_id: r.ses_message_id,
                    attempts: r.attempts,
                    uncertain_resends: r.uncertain_resends,
                    outcome_unknown: false,
                    last_error: r.last_error,
                    token_id: None,
                },
            };
            (r.job_id, claim)
        })
        .collect())
}

const UNSENT: [Status; 4] = [
    Status::Pending,
    Status::Sending,
    Status::Failed,
    Status::Cancelled,
];

/// The ledger's one `sent` write, as a CTE named `sent(job_id, ses_message_id, run)` over the
/// rows it moved: `$1` job ids, `$2` SES message ids, `$3` notes (`last_error`), `$4` run numbers,
/// `$5` the states it moves from ([`UNSENT`]), `$6` the lock wait. SES accepted these emails, so
/// the ledger says so whatever it said meanwhile; a row already `sent` keeps its first message id.
const SENT: &str = "WITH lock_wait AS MATERIALIZED (
         SELECT set_config('lock_timeout', COALESCE($6, current_setting('lock_timeout')), true)
     ),
     sent AS (
         UPDATE email_deliveries AS d
         SET status = 'sent', ses_message_id = v.ses_message_id, sent_at = now(),
             last_error = v.note, outcome_unknown = false
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[])
                  AS v(job_id, ses_message_id, note, run),
              lock_wait
         WHERE d.job_id = v.job_id AND d.status = ANY($5)
         RETURNING d.job_id, v.ses_message_id, v.run
     ) ";

/// One email SES accepted, for [`mark_sent_many`] and [`mark_sent_and_record_runs`].
#[derive(Debug, Clone, Default)]
pub struct Accepted {
    /// The email's job id.
    pub job_id: String,
    /// SES's message id; `None` for a 2xx without one, or one the database refused.
    pub ses_message_id: Option<String>,
    /// Why the row is incomplete (kept as `last_error`), if it is.
    pub note: Option<String>,
    /// The job's run that sent it.
    pub run: i32,
}

/// [`SENT`] answering the ids of the rows it moved.
static MARK_SENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SENT}SELECT job_id FROM sent"));

/// [`SENT`] with the queue door's record of their jobs' runs.
static MARK_SENT_AND_RECORD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SENT}{}", crate::jobs::RECORD_SENT_RUNS));

impl Accepted {
    /// Accepted emails from their job ids and message ids (first runs, no notes).
    pub fn many(job_ids: &[String], ses_message_ids: &[Option<String>]) -> Vec<Self> {
        job_ids
            .iter()
            .zip(ses_message_ids)
            .map(|(job_id, ses_message_id)| Self {
                job_id: job_id.clone(),
                ses_message_id: ses_message_id.clone(),
                note: None,
                run: 1,
            })
            .collect()
    }
}

async fn write_sent(
    conn: &mut PgConnection,
    rows: &[Accepted],
    lock_wait: LockWait,
    sql: &'static str,
) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<&str> = rows.iter().map(|r| r.job_id.as_str()).collect();
    let messages: Vec<Option<&str>> = rows.iter().map(|r| r.ses_message_id.as_deref()).collect();
    let notes: Vec<Option<&str>> = rows.iter().map(|r| r.note.as_deref()).collect();
    let runs: Vec<i32> = rows.iter().map(|r| r.run).collect();
    sqlx::query_scalar(sql)
        .bind(ids)
        .bind(messages)
        .bind(notes)
        .bind(runs)
        .bind(names(&UNSENT))
        .bind(lock_wait.setting())
        .fetch_all(conn)
        .await
}

/// → sent for one email or many in one statement. Returns how many rows changed.
pub async fn mark_sent_many(
    conn: &mut PgConnection,
    rows: &[Accepted],
    lock_wait: LockWait,
) -> Result<u64, sqlx::Error> {
    let moved = write_sent(conn, rows, lock_wait, MARK_SENT.as_str()).await?;
    Ok(moved.len() as u64)
}

/// → sent when SES accepted the email but its message id could not be stored (the database refused
/// it); `note` says so. Returns whether the row changed.
pub async fn mark_sent_without_id(
    conn: &mut PgConnection,
    job_id: &str,
    note: &str,
) -> Result<bool, sqlx::Error> {
    let row = Accepted {
        job_id: job_id.to_owned(),
        note: Some(note.to_owned()),
        ..Accepted::default()
    };
    Ok(mark_sent_many(conn, &[row], LockWait::Session).await? == 1)
}

/// → sent, as [`mark_sent_many`], and each moved email's job recorded `Done` by the queue door's
/// [`RECORD_SENT_RUNS`] in the same statement, so that a busy worker pays no separate ack for them.
/// Returns the ids of the jobs recorded, whose own acks are then redundant.
///
/// [`RECORD_SENT_RUNS`]: crate::jobs::RECORD_SENT_RUNS
pub async fn mark_sent_and_record_runs(
    conn: &mut PgConnection,
    rows: &[Accepted],
    lock_wait: LockWait,
) -> Result<Vec<String>, sqlx::Error> {
    write_sent(conn, rows, lock_wait, MARK_SENT_AND_RECORD.as_str()).await
}

/// One guarded status change with a reason, logged on the row as `event` (the job's timeline).
async fn transition(
    conn: &mut PgConnection,
    job_id: &str,
    from: &[Status],
    (to, event): (Status, &str),
    reason: Option<&str>,
    outcome_unknown: Option<bool>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE email_deliveries
         SET status = $2, last_error = $3, outcome_unknown = coalesce($4, outcome_unknown),
             attempt_log = email_attempt_log_append(attempt_log, jsonb_build_object(
                 'n', attempts, 'event', $6::text, 'error', $3::text,
                 'started_at', CASE WHEN status = 'sending' THEN sending_started_at END,
                 'ended_at', now()))
         WHERE job_id = $1 AND status = ANY($5)",
        job_id,
        to.as_str(),
        reason,
        outcome_unknown,
        &names(from),
        event
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// pending/sending → pending: this run's call was refused before SES accepted it (throttled, 5xx,
/// sending paused, a failure before the request was written); the job runs again later.
pub async fn release(
    conn: &mut PgConnection,
    job_id: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    transition(
        conn,
        job_id,
        &CLAIMABLE,
        (Status::Pending, "released"),
        Some(reason),
        Some(false),
    )
    .await
}

/// pending/sending stay as they are, with `reason` noted: held back (a pause, a compliance hold)
/// before any SES call of this run, so what is known about earlier calls must not change (a row
/// left `sending` keeps counting its next resend as uncertain).
pub async fn note_wait(
    conn: &mut PgConnection,
    job_id: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE email_deliveries SET last_error = $2,
                attempt_log = email_attempt_log_append(attempt_log, jsonb_build_object(
                    'n', attempts, 'event', 'held', 'error', $2::text, 'ended_at', now()))
         WHERE job_id = $1 AND status = ANY($3)",
        job_id,
        reason,
        &names(&CLAIMABLE)
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// sending stays sending: SES gave no answer, so the next claim counts its resend as uncertain.
pub async fn keep_unknown(
    conn: &mut PgConnection,
    job_id: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    transition(
        conn,
        job_id,
        &[Status::Sending],
        (Status::Sending, "unknown"),
        Some(reason),
        Some(true),
    )
    .await
}

/// pending/sending → failed for good; `outcome_unknown` says whether the last SES call went
/// unanswered (an operator's retry then counts its resend).
pub async fn fail(
    conn: &mut PgConnection,
    job_id: &str,
    reason: &str,
    outcome_unknown: bool,
) -> Result<bool, sqlx::Error> {
    transition(
        conn,
        job_id,
        &CLAIMABLE,
        (Status::Failed, "failed"),
        Some(reason),
        Some(outcome_unknown),
    )
    .await
}

/// pending/sending → suppressed: the recipient is suppressed for the email's category.
pub async fn suppress(conn: &mut PgConnection, job_id: &str) -> Result<bool, sqlx::Error> {
    transition(
        conn,
        job_id,
        &CLAIMABLE,
        (Status::Suppressed, "suppressed"),
        None,
        None,
    )
    .await
}

/// pending/sending → cancelled: the queued job was cancelled.
pub async fn cancel(conn: &mut PgConnection, job_id: &str) -> Result<bool, sqlx::Error> {
    transition(
        conn,
        job_id,
        &CLAIMABLE,
        (Status::Cancelled, "cancelled"),
        Some("cancelled"),
        None,
    )
    .await
}

/// What an operator's retry did to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAnswer {
    /// Back to `pending`: the next send is a first try.
    Requeued,
    /// Back to `sending`: the last SES call went unanswered, so the resend is counted as uncertain.
    RequeuedUncertain,
    /// SES accepted it already; nothing changed.
    AlreadySent,
    /// No ledger row (not an email job, or pruned).
    NoRow,
    /// The row is in flight (`pending` or `sending`); nothing changed.
    InFlight,
}

/// failed/suppressed/cancelled → pending (or → sending when the last outcome was unknown); a
/// `sent` row is refused. Lock order: call it after locking the job.
pub async fn operator_retry(
    conn: &mut PgConnection,
    job_id: &str,
) -> Result<RetryAnswer, sqlx::Error> {
    let Some(row) = lock(conn, job_id).await? else {
        return Ok(RetryAnswer::NoRow);
    };
    let to = match row.status {
        Status::Sent => return Ok(RetryAnswer::AlreadySent),
        Status::Pending => return Ok(RetryAnswer::InFlight),
        // Left `sending` by a run that died or gave up without an answer: allowed, and counted.
        Status::Sending => return Ok(RetryAnswer::RequeuedUncertain),
        Status::Failed | Status::Suppressed | Status::Cancelled if row.outcome_unknown => {
            Status::Sending
        }
        Status::Failed | Status::Suppressed | Status::Cancelled => Status::Pending,
    };
    transition(
        conn,
        job_id,
        &[Status::Failed, Status::Suppressed, Status::Cancelled],
        (to, "retried"),
        None,
        None,
    )
    .await?;
    Ok(if to == Status::Sending {
        RetryAnswer::RequeuedUncertain
    } else {
        RetryAnswer::Requeued
    })
}

/// What SES later told about a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// Delivered to the recipient's server.
    Delivery,
    /// Bounced (`bounce_type` says how).
    Bounce,
    /// The recipient complained (never `not-spam`).
    Complaint,
}

/// Records feedback on the row of the message SES named (the row's times are the first report's;
/// a permanent bounce type is never lowered), and per recipient: each recipient's first delivery,
/// bounce or complaint joins its list, which is what makes the webhook trigger record an event
/// naming that recipient, with this report's time and bounce type. Status does not change: feedback comes after `sent`. Returns whether a
/// row was found.
pub async fn record_feedback(
    conn: &mut PgConnection,
    ses_message_id: &str,
    kind: Feedback,
    at: DateTime<Utc>,
    bounce_type: Option<&str>,
    recipient: &str,
) -> Result<bool, sqlx::Error> {
    let what = match kind {
        Feedback::Delivery => "delivery",
        Feedback::Bounce => "bounce",
        Feedback::Complaint => "complaint",
    };
    let done = sqlx::query!(
        "UPDATE email_deliveries SET
             delivered_at = CASE WHEN $2 = 'delivery' THEN coalesce(delivered_at, $3) ELSE delivered_at END,
             bounced_at = CASE WHEN $2 = 'bounce' THEN coalesce(bounced_at, $3) ELSE bounced_at END,
             bounce_type = CASE WHEN $2 = 'bounce' AND coalesce(bounce_type, '') <> 'Permanent'
                                THEN $4 ELSE bounce_type END,
             complained_at = CASE WHEN $2 = 'complaint' THEN coalesce(complained_at, $3) ELSE complained_at END,
             delivered_recipients = CASE
                 WHEN $2 = 'delivery' AND NOT ($5 = ANY (coalesce(delivered_recipients, '{}')))
                 THEN array_append(delivered_recipients, $5) ELSE delivered_recipients END,
             bounced_recipients = CASE
                 WHEN $2 = 'bounce' AND NOT ($5 = ANY (coalesce(bounced_recipients, '{}')))
                 THEN array_append(bounced_recipients, $5) ELSE bounced_recipients END,
             feedback_at = $3,
             feedback_bounce_type = CASE WHEN $2 = 'bounce' THEN $4 ELSE feedback_bounce_type END,
             hard_bounced_recipients = CASE
                 WHEN $2 = 'bounce' AND $4 = 'Permanent'
                      AND NOT ($5 = ANY (coalesce(hard_bounced_recipients, '{}')))
                 THEN array_append(hard_bounced_recipients, $5) ELSE hard_bounced_recipients END,
             complained_recipients = CASE
                 WHEN $2 = 'complaint' AND NOT ($5 = ANY (coalesce(complained_recipients, '{}')))
                 THEN array_append(complained_recipients, $5) ELSE complained_recipients END,
             feedback_recipient = $5
         WHERE ses_message_id = $1",
        ses_message_id,
        what,
        at,
        bounce_type,
        recipient
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// What SES's event publishing told about a sent message besides delivery and feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engagement {
    /// The open-tracking image was loaded.
    Open,
    /// A tracked link was followed.
    Click,
    /// The receiving server has not taken it yet.
    DeliveryDelay,
    /// SES refused it after accepting the call (a virus): final.
    Reject,
    /// SES could not render its template: final.
    RenderingFailure,
}

impl Engagement {
    /// The name stored in `last_engagement.type` (the feedback events' `event_type` too).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Click => "click",
            Self::DeliveryDelay => "delivery_delay",
            Self::Reject => "reject",
            Self::RenderingFailure => "rendering_failure",
        }
    }

    /// Whether it ends the email: SES will not deliver it. The row stays `sent`, so nothing
    /// resends it (an operator's retry answers "already sent"), and `rejected_at` records it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Reject | Self::RenderingFailure)
    }
}

/// Records an engagement on the row of the message SES named: counts it (`engagements`) and keeps
/// it as the row's latest (`last_engagement`), which is what makes the webhook trigger record
/// `email.opened`, `email.clicked`, `email.delivery_delayed` or `email.rejected` for it; a final one
/// also sets `rejected_at` (the first's). Status does not change. Returns whether a row was found.
pub async fn record_engagement(
    conn: &mut PgConnection,
    ses_message_id: &str,
    kind: Engagement,
    at: DateTime<Utc>,
    recipient: &str,
    detail: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE email_deliveries SET
             engagements = engagements + 1,
             last_engagement = jsonb_build_object('type', $2::text, 'at', api_time($3),
                                                  'recipient', $4::text, 'data', $5::jsonb),
             rejected_at = CASE WHEN $6 THEN coalesce(rejected_at, $3) ELSE rejected_at END
         WHERE ses_message_id = $1",
        ses_message_id,
        kind.as_str(),
        at,
        recipient,
        detail,
        kind.is_final()
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Records how many recipients an email with several is sent to (the compliance rates count
/// recipients); the caller holds the row's lock.
pub async fn set_recipients(
    conn: &mut PgConnection,
    job_id: &str,
    recipients: usize,
) -> Result<(), sqlx::Error> {
    let n = i16::try_from(recipients.clamp(1, 50)).unwrap_or(1);
    sqlx::query!(
        "UPDATE email_deliveries SET recipients = $2 WHERE job_id = $1 AND recipients <> $2",
        job_id,
        n
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The job id of the email SES gave this message id.
pub async fn job_of_message(
    conn: &mut PgConnection,
    ses_message_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT job_id FROM email_deliveries WHERE ses_message_id = $1",
        ses_message_id
    )
    .fetch_optional(conn)
    .await
}

/// Whether the email with this SES message id went to `recipient` (normalised) as its first
/// recipient: feedback naming it is about one of Herald's own sends. (The others are in the job's
/// envelope: `feedback::apply` looks there next.)
pub async fn sent_to(
    conn: &mut PgConnection,
    ses_message_id: &str,
    recipient: &str,
) -> Result<bool, sqlx::Error> {
    let found = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM email_deliveries
                          WHERE ses_message_id = $1 AND recipient = $2) AS "found!""#,
        ses_message_id,
        recipient
    )
    .fetch_one(conn)
    .await?;
    Ok(found)
}

/// The whole ledger in three numbers: what a fault run or a benchmark counts at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Rows.
    pub rows: i64,
    /// Rows SES accepted (`sent`).
    pub sent: i64,
    /// Resends after an unanswered SES call, summed.
    pub uncertain_resends: i64,
}

/// Counts every row, the sent ones and the uncertain resends, in one scan.
pub async fn totals<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<Totals, sqlx::Error> {
    let t = sqlx::query!(
        r#"SELECT count(*) AS "rows!", count(*) FILTER (WHERE status = 'sent') AS "sent!",
                  coalesce(sum(uncertain_resends), 0)::bigint AS "uncertain_resends!"
           FROM email_deliveries"#
    )
    .fetch_one(db)
    .await?;
    Ok(Totals {
        rows: t.rows,
        sent: t.sent,
        uncertain_resends: t.uncertain_resends,
    })
}

/// Deletes up to `limit` finished rows created before `before` (retention); returns how many.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM email_deliveries
                         WHERE created_at < $1 AND status = ANY($3)
                         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         DELETE FROM email_deliveries d USING doomed WHERE d.id = doomed.id",
        before,
        limit,
        &names(&Status::FINISHED)
    )
    .execute(pool)
    .await?
    .rows_affected())
}
