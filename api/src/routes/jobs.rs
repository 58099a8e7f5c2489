//! Job status, retry and cancel.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use herald_shared::email::ledger::Status;
use herald_shared::email::{self, EMAIL_QUEUE};
use herald_shared::jobs::Queue;
use herald_shared::jobs::{self, JobStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Connection;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// A job as the API reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id (ULID).
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String, example = "succeeded")]
    pub status: JobStatus,
    /// Runs so far.
    pub attempts: i32,
    /// Runs allowed.
    pub max_attempts: i32,
    /// When it runs next (or ran last).
    #[serde(serialize_with = "herald_shared::time::ms")]
    pub run_at: DateTime<Utc>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// For email jobs that finished: `{"outcome": "sent"|"suppressed", "ses_message_id"}`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// The filters of a jobs list (all optional; empty values are ignored, as a form sends them).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Queue name.
    pub queue: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: Option<String>,
    /// The email's template (`raw` for content given inline).
    pub template: Option<String>,
    /// `transactional` or `marketing`.
    pub category: Option<String>,
    /// Enqueued at or after (`YYYY-MM-DD` or RFC 3339).
    pub from: Option<String>,
    /// Enqueued before (RFC 3339), or on or before (`YYYY-MM-DD`).
    pub to: Option<String>,
    /// Recipient, exact (case-insensitive).
    pub recipient: Option<String>,
    /// The `next_cursor` of the previous page.
    pub before: Option<String>,
    /// An email tag, `name:value`.
    pub tag: Option<String>,
}

/// A form value, trimmed; `None` when absent or blank.
pub(crate) fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn parse_time(text: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    let day = if end_of_day {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    Ok(day.and_time(chrono::NaiveTime::MIN).and_utc())
}

impl ListQuery {
    /// The filter asked for, or what is wrong with it.
    pub fn parse(&self) -> Result<herald_shared::job_search::JobFilter, String> {
        let state = match given(&self.state) {
            None => None,
            Some(name) => Some(JobStatus::parse(&name).ok_or_else(|| {
                format!(
                    "state must be one of {}",
                    JobStatus::ALL.map(JobStatus::as_str).join(", ")
                )
            })?),
        };
        let queue = match given(&self.queue) {
            None => None,
            Some(name) => Some(Queue::parse(&name).ok_or_else(|| {
                format!(
                    "queue must be one of {}",
                    Queue::ALL.map(Queue::name).join(", ")
                )
            })?),
        };
        let category = match given(&self.category) {
            None => None,
            Some(name) => Some(
                email::Category::parse(&name)
                    .ok_or_else(|| "category must be transactional or marketing".to_owned())?,
            ),
        };
        let before = match given(&self.before) {
            None => None,
            Some(id) => Some(
                id.parse::<herald_shared::jobs::JobId>()
                    .map_err(|_| "before must be a job id".to_owned())?,
            ),
        };
        let recipient = given(&self.recipient).map(|r| herald_shared::address::normalize(&r));
        Ok(herald_shared::job_search::JobFilter {
            queue,
            state,
            template: given(&self.template),
            category,
            from: given(&self.from)
                .map(|t| parse_time(&t, false))
                .transpose()?,
            to: given(&self.to).map(|t| parse_time(&t, true)).transpose()?,
            recipient,
            before,
            email_status: None,
            tag: given(&self.tag)
                .map(|t| herald_shared::job_search::parse_tag_filter(&t))
                .transpose()?,
        })
    }
}

/// Jobs per page of `GET /v1/jobs` and the console's list.
pub const PAGE_SIZE: i64 = 50;

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// The jobs, newest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<herald_shared::job_search::JobListing>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Lists jobs, newest first, filtered (the console's jobs page reads the same function).
#[utoipa::path(get, path = "/v1/jobs", operation_id = "listJobs", tag = "jobs", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of 50 at most", body = JobPage),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Bad filter", body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let filter = q.parse().map_err(ApiError::Validation)?;
    let mut conn = state.db.acquire().await?;
    let items = herald_shared::job_search::search(&mut *conn, &filter, PAGE_SIZE).await?;
    let next_cursor = (items.len() as i64 == PAGE_SIZE)
        .then(|| items.last().map(|j| j.id.clone()))
        .flatten();
    Ok(Json(JobPage { items, next_cursor }))
}

fn parse_id(id: &str) -> Result<String, ApiError> {
    id.parse::<jobs::JobId>()
        .map(|id| id.to_string())
        .map_err(|_| ApiError::NotFound("job"))
}

async fn load(state: &AppState, id: &str) -> Result<JobView, ApiError> {
    let id = parse_id(id)?;
    let mut conn = state.db.acquire().await?;
    let row = jobs::find(&mut conn, &id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let mut result = None;
    let mut last_error = row.last_error();
    if row.queue == EMAIL_QUEUE
        && let Some(d) = email::ledger::find(&mut conn, &id).await?
    {
        if matches!(d.status, Status::Sent | Status::Suppressed) {
            result = Some(email::ledger::job_result(
                d.status,
                d.ses_message_id.as_deref(),
            ));
        }
        if d.last_error.is_some() {
            last_error = d.last_error;
        }
    }
    Ok(JobView {
        status: row.status(),
        id: row.id,
        queue: row.queue,
        attempts: row.attempts,
        max_attempts: row.max_attempts,
        run_at: row.run_at,
        last_error,
        result,
    })
}

/// A job's status.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "getJob", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID)")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown or malformed id", body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(load(&state, &id).await?))
}

/// Puts a failed job back in the queue with a fresh budget of attempts.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", operation_id = "retryJob", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID)")),
    responses(
        (status = 200, description = "Queued again", body = JobView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job has not failed (`invalid_job_state`), or the email was sent already (`already_sent`; nothing changes)", body = ErrorBody)))]
pub async fn retry_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let budget = i32::try_from(state.config.email_max_attempts).unwrap_or(i32::MAX);
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    jobs::find(&mut tx, &id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    match retry(&mut tx, &id, budget).await? {
        Retried::Yes => {}
        Retried::NotFailed => {
            return Err(ApiError::InvalidJobState(
                "only a failed job can be retried".into(),
            ));
        }
        Retried::AlreadySent => return Err(ApiError::AlreadySent),
    }
    tx.commit().await?;
    Ok(Json(load(&state, &id).await?))
}

/// Cancels a job that has not started.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancelJob", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID)")),
    responses(
        (status = 200, description = "Cancelled", body = JobView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job is not waiting", body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    jobs::find(&mut tx, &id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    if !cancel(&mut tx, &id).await? {
        return Err(ApiError::InvalidJobState(
            "only a queued job can be cancelled".into(),
        ));
    }
    tx.commit().await?;
    Ok(Json(load(&state, &id).await?))
}

/// Cancels a job that has not started, with its ledger row; false when it is not waiting. Shared
/// by the API and the console; the caller commits.
pub(crate) async fn cancel(tx: &mut sqlx::PgConnection, id: &str) -> Result<bool, ApiError> {
    if !jobs::cancel(tx, id).await? {
        return Ok(false);
    }
    // Not an email job, or its row is gone: nothing to record.
    email::ledger::cancel(tx, id).await?;
    Ok(true)
}

/// What an operator's retry did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Retried {
    /// Queued again.
    Yes,
    /// The job has not failed for good.
    NotFailed,
    /// SES accepted the email already: nothing changed.
    AlreadySent,
}

/// Puts a failed job back in the queue, with its ledger row: refused when the email was sent
/// (retrying it would send it twice), counted as uncertain when the last SES call went
/// unanswered. Shared by the API and the dashboard; the caller commits.
pub(crate) async fn retry(
    tx: &mut sqlx::PgConnection,
    id: &str,
    budget: i32,
) -> Result<Retried, ApiError> {
    use email::ledger::RetryAnswer;
    // The ledger first: a `sent` email must not even reach the queue again.
    let answer = email::ledger::operator_retry(tx, id).await?;
    if answer == RetryAnswer::AlreadySent {
        return Ok(Retried::AlreadySent);
    }
    if !jobs::retry(tx, id, budget).await? {
        return Ok(Retried::NotFailed);
    }
    if answer == RetryAnswer::InFlight {
        tracing::warn!(
            job_id = id,
            "retried a failed job whose ledger row was still pending"
        );
    }
    Ok(Retried::Yes)
}
