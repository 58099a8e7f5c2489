//! Read model: the job lists of `GET /v1/jobs` and the console. Joins `apalis.jobs` (owned by
//! [`crate::jobs`]) with `email_deliveries` (owned by [`crate::email::ledger`]) and writes
//! neither: a job with its email's ledger columns when it is an email job.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::email::Category;
use crate::jobs::{JobError, JobStatus, Queue, enqueued_at};

/// What [`search`] keeps; every field narrows, none given lists every job.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Queue.
    pub queue: Option<Queue>,
    /// Herald state.
    pub state: Option<JobStatus>,
    /// The email's template (the ledger's label: a template name, `raw`, …).
    pub template: Option<String>,
    /// `transactional` or `marketing`.
    pub category: Option<Category>,
    /// Enqueued at or after.
    pub from: Option<DateTime<Utc>>,
    /// Enqueued before.
    pub to: Option<DateTime<Utc>>,
    /// Recipient, normalised (exact match).
    pub recipient: Option<String>,
    /// Keyset cursor: only jobs older than this id.
    pub before: Option<crate::jobs::JobId>,
    /// The ledger's status of the email.
    pub email_status: Option<crate::email::ledger::Status>,
    /// An email tag, name and value (read from the job's payload: narrow by other filters too
    /// where the list is long).
    pub tag: Option<(String, String)>,
}

/// Parses a `tag=name:value` filter; names and values in SES's tag alphabet.
pub fn parse_tag_filter(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| "tag is name:value".to_owned())?;
    let tag = std::collections::BTreeMap::from([(name.to_owned(), value.to_owned())]);
    crate::email::message::check_tags(&tag).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), value.to_owned()))
}

/// A job as lists show it, with its email's ledger columns when it is an email job.
#[derive(Debug, Clone, Serialize)]
pub struct JobListing {
    /// Job id (ULID: its time is when it was enqueued).
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// Herald state.
    pub status: JobStatus,
    /// Runs made.
    pub attempts: i32,
    /// Runs allowed.
    pub max_attempts: i32,
    /// When it was enqueued (the time in its id).
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Next (or last) start.
    #[serde(serialize_with = "crate::time::ms")]
    pub run_at: DateTime<Utc>,
    /// When its last run ended.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub done_at: Option<DateTime<Utc>>,
    /// The last run's error, if it failed.
    pub last_error: Option<String>,
    /// Recipient (email jobs only; normalised).
    pub recipient: Option<String>,
    /// Template label.
    pub template: Option<String>,
    /// Category.
    pub category: Option<Category>,
    /// The ledger's status.
    pub email_status: Option<String>,
    /// The email's tags.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The smallest id of time `at`: a bound on ids, so a time range reads the primary key.
fn ulid_floor(at: DateTime<Utc>) -> crate::jobs::JobId {
    crate::jobs::JobId::floor(at)
}

/// Up to `limit` jobs matching `filter`, newest first (by id, so pages are stable keysets).
pub async fn search<'e>(
    db: impl sqlx::PgExecutor<'e>,
    filter: &JobFilter,
    limit: i64,
) -> Result<Vec<JobListing>, JobError> {
    let lower = filter.from.map(ulid_floor).map(|id| id.to_string());
    let upper = match (filter.to.map(ulid_floor), filter.before) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .map(|id| id.to_string());
    let rows = sqlx::query!(
        r#"SELECT j.id, j.job_type AS "queue!", j.status, j.attempts, j.max_attempts, j.run_at,
                  j.done_at, j.last_result -> 'Err' AS last_error, d.recipient AS "recipient?", d.template AS "template?",
                  d.category AS "category?: Category", d.status AS "email_status?",
                  CASE WHEN d.job_id IS NOT NULL
                       THEN convert_from(j.job, 'UTF8')::jsonb -> 'envelope' -> 'tags' END AS tags
           FROM apalis.jobs j LEFT JOIN email_deliveries d ON d.job_id = j.id
           WHERE ($1::text IS NULL OR j.job_type = $1)
             AND ($2::text IS NULL OR CASE
                   WHEN j.status = 'Done' THEN 'succeeded'
                   WHEN j.status = 'Killed' THEN 'cancelled'
                   WHEN j.status IN ('Queued', 'Running') THEN 'running'
                   WHEN j.status = 'Failed' AND j.attempts >= j.max_attempts THEN 'failed'
                   ELSE 'queued' END = $2)
             AND ($3::text IS NULL OR d.template = $3)
             AND ($4::text IS NULL OR d.category = $4)
             AND ($5::text IS NULL OR j.id >= $5)
             AND ($6::text IS NULL OR j.id < $6)
             AND ($7::text IS NULL OR d.recipient = $7)
             AND ($9::text IS NULL OR d.status = $9)
             AND ($10::text IS NULL OR (d.job_id IS NOT NULL
                  AND convert_from(j.job, 'UTF8')::jsonb -> 'envelope' -> 'tags' ->> $10 = $11))
           ORDER BY j.id DESC LIMIT $8"#,
        filter.queue.map(Queue::name),
        filter.state.map(JobStatus::as_str),
        filter.template,
        filter.category.map(Category::as_str),
        lower,
        upper,
        filter.recipient,
        limit,
        filter.email_status.map(crate::email::ledger::Status::as_str),
        filter.tag.as_ref().map(|(n, _)| n.as_str()),
        filter.tag.as_ref().map(|(_, v)| v.as_str()),
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| JobListing {
            status: JobStatus::from_apalis(&r.status, r.attempts, r.max_attempts),
            enqueued_at: enqueued_at(&r.id),
            id: r.id,
            queue: r.queue,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            run_at: r.run_at,
            done_at: r.done_at,
            last_error: r
                .last_error
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned)),
            recipient: r.recipient,
            template: r.template,
            category: r.category,
            email_status: r.email_status,
            tags: r
                .tags
                .and_then(|t| serde_json::from_value(t).ok())
                .unwrap_or_default(),
        })
        .collect())
}
