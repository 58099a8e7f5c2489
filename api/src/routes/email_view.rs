//! The email as a resource: `GET /v1/emails/{id}`, `GET /v1/emails`, `PATCH /v1/emails/{id}`
//! (its `send_at` before it is sent), `POST /v1/emails/{id}/cancel`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use herald_shared::email::Category;
use herald_shared::email::ledger::Status;
use herald_shared::email::view::{self, EmailView};
use herald_shared::jobs::{JobId, Queue};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use utoipa::{IntoParams, ToSchema};

use super::jobs::{PAGE_SIZE, given};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("email"))
}

async fn load(state: &AppState, id: JobId) -> Result<EmailView, ApiError> {
    let mut conn = state.db.acquire().await?;
    view::find(&mut conn, id, &state.config.email_from)
        .await?
        .ok_or(ApiError::NotFound("email"))
}

/// An email: its envelope, content, tags, attachments, status and timeline.
#[utoipa::path(get, path = "/v1/emails/{id}", tag = "emails", operation_id = "getEmail",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The id `POST /v1/emails` answered")),
    responses(
        (status = 200, description = "The email", body = EmailView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such email", body = ErrorBody)))]
pub async fn get_email(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EmailView>, ApiError> {
    Ok(Json(load(&state, parse_id(&id)?).await?))
}

/// The filters of `GET /v1/emails` (all optional).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EmailListQuery {
    /// The (first) recipient, exact (case-insensitive).
    pub to: Option<String>,
    /// `pending`, `sending`, `sent`, `suppressed`, `failed` or `cancelled`.
    pub status: Option<String>,
    /// A tag, `name:value`.
    pub tag: Option<String>,
    /// `transactional` or `marketing`.
    pub category: Option<String>,
    /// Queued at or after (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Queued before (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    pub before: Option<String>,
}

/// An email in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailSummary {
    /// Id.
    pub id: String,
    /// The (first) recipient.
    pub to: Option<String>,
    /// The ledger's status.
    pub status: Option<String>,
    /// Category.
    #[schema(value_type = Option<String>)]
    pub category: Option<Category>,
    /// Template name (`raw` for content given inline).
    pub template: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// When it was queued.
    #[serde(serialize_with = "herald_shared::time::ms_opt")]
    pub created_at: Option<DateTime<Utc>>,
    /// When it is (or was) due.
    #[serde(serialize_with = "herald_shared::time::ms")]
    pub send_at: DateTime<Utc>,
}

/// A page of emails.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailPage {
    /// Newest first.
    pub items: Vec<EmailSummary>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl EmailListQuery {
    fn parse(&self) -> Result<herald_shared::job_search::JobFilter, String> {
        let email_status = match given(&self.status) {
            None => None,
            Some(s) => Some(Status::parse(&s).ok_or_else(|| {
                "status must be pending, sending, sent, suppressed, failed or cancelled".to_owned()
            })?),
        };
        let category = match given(&self.category) {
            None => None,
            Some(c) => Some(
                Category::parse(&c)
                    .ok_or_else(|| "category must be transactional or marketing".to_owned())?,
            ),
        };
        let before = given(&self.before)
            .map(|b| {
                b.parse::<JobId>()
                    .map_err(|_| "before must be an email id".to_owned())
            })
            .transpose()?;
        Ok(herald_shared::job_search::JobFilter {
            queue: Some(Queue::Email),
            category,
            from: self.created_after,
            to: self.created_before,
            recipient: given(&self.to).map(|r| herald_shared::address::normalize(&r)),
            before,
            email_status,
            tag: given(&self.tag)
                .map(|t| herald_shared::job_search::parse_tag_filter(&t))
                .transpose()?,
            ..Default::default()
        })
    }
}

/// Emails, newest first, filtered; 50 a page.
#[utoipa::path(get, path = "/v1/emails", tag = "emails", operation_id = "listEmails",
    security(("bearer" = [])),
    params(EmailListQuery),
    responses(
        (status = 200, description = "A page of 50 at most", body = EmailPage),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Bad filter", body = ErrorBody)))]
pub async fn list_emails(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<EmailListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EmailPage>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let filter = q.parse().map_err(ApiError::Validation)?;
    let mut conn = state.db.acquire().await?;
    let rows = herald_shared::job_search::search(&mut *conn, &filter, PAGE_SIZE).await?;
    let next_cursor = (rows.len() as i64 == PAGE_SIZE)
        .then(|| rows.last().map(|j| j.id.clone()))
        .flatten();
    let items = rows
        .into_iter()
        .map(|r| EmailSummary {
            id: r.id,
            to: r.recipient,
            status: r.email_status,
            category: r.category,
            template: r.template,
            tags: r.tags,
            created_at: r.enqueued_at,
            send_at: r.run_at,
        })
        .collect();
    Ok(Json(EmailPage { items, next_cursor }))
}

/// What `PATCH /v1/emails/{id}` may change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEmail {
    /// Send no earlier than this time (RFC 3339; whole seconds).
    pub send_at: DateTime<Utc>,
}

/// Moves the `send_at` of an email not sent yet.
#[utoipa::path(patch, path = "/v1/emails/{id}", tag = "emails", operation_id = "updateEmail",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The email's id")),
    request_body = UpdateEmail,
    responses(
        (status = 200, description = "Rescheduled", body = EmailView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such email", body = ErrorBody),
        (status = 409, description = "Sending or sent already, or finished (`invalid_job_state`)", body = ErrorBody),
        (status = 422, description = "Bad body", body = ErrorBody)))]
pub async fn update_email(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<UpdateEmail>,
) -> Result<Json<EmailView>, ApiError> {
    let id = parse_id(&id)?;
    let key = id.to_string();
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    // The ledger row locked first: a worker claiming it now waits, or has claimed it already.
    let delivery = herald_shared::email::ledger::lock(&mut tx, &key)
        .await?
        .ok_or(ApiError::NotFound("email"))?;
    if delivery.status != Status::Pending
        || !herald_shared::jobs::set_run_at(&mut tx, &key, body.value.send_at).await?
    {
        return Err(ApiError::InvalidJobState(
            "only an email that is still waiting can be rescheduled".into(),
        ));
    }
    tx.commit().await?;
    drop(conn);
    Ok(Json(load(&state, id).await?))
}

/// Cancels an email that has not started sending.
#[utoipa::path(post, path = "/v1/emails/{id}/cancel", tag = "emails", operation_id = "cancelEmail",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The email's id")),
    responses(
        (status = 200, description = "Cancelled", body = EmailView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such email", body = ErrorBody),
        (status = 409, description = "Not waiting (`invalid_job_state`)", body = ErrorBody)))]
pub async fn cancel_email(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EmailView>, ApiError> {
    let id = parse_id(&id)?;
    let key = id.to_string();
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    herald_shared::email::ledger::lock(&mut tx, &key)
        .await?
        .ok_or(ApiError::NotFound("email"))?;
    if !super::jobs::cancel(&mut tx, &key).await? {
        return Err(ApiError::InvalidJobState(
            "only an email that is still waiting can be cancelled".into(),
        ));
    }
    tx.commit().await?;
    drop(conn);
    Ok(Json(load(&state, id).await?))
}
