//! `POST /v1/emails/batch`: up to 1,000 emails in one request and one transaction, each checked as
//! `POST /v1/emails` checks it and answered on its own, in request order. Each item runs in a
//! savepoint, so a refused item leaves the others untouched.

use axum::Json;
use axum::extract::State;
use herald_shared::{address, tokens};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Connection;
use utoipa::ToSchema;

use super::emails::{SendEmailRequest, queue, replay, store_key};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// Most emails one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// A batch of emails.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Each the body `POST /v1/emails` takes, plus an optional `idempotency_key` (1-255
    /// characters): the same key with the same item answers its first job again.
    #[schema(value_type = Vec<Object>)]
    pub emails: Vec<Value>,
}

/// One item's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemResult {
    /// 202 queued, 200 replayed (same idempotency key and item), 409 suppressed or key reused
    /// with another item, 422 invalid.
    pub status: u16,
    /// The job, for 202 and 200.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The error's stable code, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// The error's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Every item's answer, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// The answers.
    pub results: Vec<ItemResult>,
}

/// What happened to one item.
enum Done {
    Queued(String),
    Replayed(String),
}

/// Queues a batch of emails.
#[utoipa::path(post, path = "/v1/emails/batch", tag = "emails", security(("bearer" = [])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Each item answered in order (202, 200, 409 or 422 each)", body = BatchResponse),
        (status = 422, description = "No emails, or more than 1,000", body = ErrorBody)))]
pub async fn send_batch(
    State(state): State<AppState>,
    body: JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    let items = body.value.emails;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::Validation(format!(
            "a batch holds 1 to {MAX_BATCH} emails, got {}",
            items.len()
        )));
    }
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let mut savepoint = tx.begin().await?;
        match one(&state, &mut savepoint, item).await {
            Ok(done) => {
                savepoint.commit().await?;
                results.push(match done {
                    Done::Queued(id) => ItemResult {
                        status: 202,
                        job_id: Some(id),
                        code: None,
                        message: None,
                    },
                    Done::Replayed(id) => ItemResult {
                        status: 200,
                        job_id: Some(id),
                        code: None,
                        message: None,
                    },
                });
            }
            // The database itself failing ends the whole batch (nothing is committed).
            Err(e @ (ApiError::DatabaseUnavailable(_) | ApiError::Internal(_))) => return Err(e),
            Err(e) => {
                savepoint.rollback().await?;
                let (status, code) = e.parts();
                results.push(ItemResult {
                    status: status.as_u16(),
                    job_id: None,
                    code: Some(code),
                    message: Some(e.to_string()),
                });
            }
        }
    }
    tx.commit().await?;
    let queued = results.iter().filter(|r| r.status == 202).count();
    tracing::info!(items = results.len(), queued, "email batch queued");
    Ok(Json(BatchResponse { results }))
}

async fn one(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    mut item: Value,
) -> Result<Done, ApiError> {
    let fields = item
        .as_object_mut()
        .ok_or_else(|| ApiError::Validation("each email is a JSON object".into()))?;
    let key = match fields.remove("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if (1..=255).contains(&k.len()) => Some(k),
        Some(_) => {
            return Err(ApiError::Validation(
                "idempotency_key must be a string of 1 to 255 characters".into(),
            ));
        }
    };
    let item_hash = tokens::sha256_hex(&item.to_string());
    if let Some(key) = &key
        && let Some(job_id) = replay(conn, key, &item_hash).await?
    {
        return Ok(Done::Replayed(job_id));
    }
    let req: SendEmailRequest =
        serde_json::from_value(item).map_err(|e| ApiError::Validation(e.to_string()))?;
    let (job_id, job) = queue(state, conn, req).await?;
    // Another request holding the key meanwhile: this item's savepoint is rolled back.
    if let Some(key) = &key
        && !store_key(conn, key, &item_hash, &job_id).await?
    {
        return Err(ApiError::IdempotencyConflict);
    }
    tracing::debug!(job_id, to = %address::mask(&job.to), "batch item queued");
    Ok(Done::Queued(job_id))
}
