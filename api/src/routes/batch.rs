//! `POST /v1/emails/batch`: up to 1,000 emails in one request, each checked as `POST /v1/emails`
//! checks it and answered on its own, in request order. Set-based: one read of the idempotency
//! keys, the checks in memory (a template resolved once per name and locale), then one statement
//! (`enqueue_emails`) that checks suppression and writes every key, job and ledger row at once.

use axum::Json;
use axum::extract::State;
use herald_shared::email::{self, NewEmail, Queued};
use herald_shared::tokens;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use utoipa::ToSchema;

use super::emails::{Checked, Resolved, SendEmailRequest, answer_earlier, check, replay_many};
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
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
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
    /// Recipients left out as suppressed (202), or every recipient (409).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
}

/// Every item's answer, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// The answers.
    pub results: Vec<ItemResult>,
}

impl ItemResult {
    fn job(status: u16, job_id: String) -> Self {
        Self {
            status,
            job_id: Some(job_id),
            code: None,
            message: None,
            suppressed: Vec::new(),
        }
    }

    fn error(e: &ApiError) -> Self {
        let (status, code) = e.parts();
        Self {
            status: status.as_u16(),
            job_id: None,
            code: Some(code),
            message: Some(e.to_string()),
            suppressed: match e {
                ApiError::RecipientsSuppressed(_, list) => list.clone(),
                _ => Vec::new(),
            },
        }
    }
}

/// An item on its way: answered already, or checked and waiting for the statement that queues.
enum Item {
    Answered(ItemResult),
    Checked {
        checked: Box<Checked>,
        key: Option<(String, String)>,
    },
    /// Repeats the key of item `first` in this batch, with the same item (`same`) or another.
    Repeat {
        first: usize,
        same: bool,
    },
}

/// Queues a batch of emails.
#[utoipa::path(post, path = "/v1/emails/batch", operation_id = "sendEmailBatch", tag = "emails", security(("bearer" = [])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Each item answered in order (202, 200, 409 or 422 each)", body = BatchResponse),
        (status = 422, description = "No emails, or more than 1,000", body = ErrorBody)))]
pub async fn send_batch(
    State(state): State<AppState>,
    body: JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    let raw = body.value.emails;
    if raw.is_empty() || raw.len() > MAX_BATCH {
        return Err(ApiError::Validation(format!(
            "a batch holds 1 to {MAX_BATCH} emails, got {}",
            raw.len()
        )));
    }
    let mut conn = state.db.acquire().await?;
    // Keys and hashes first: an earlier request's replay is answered before the item is checked
    // again, as POST /v1/emails does.
    let mut parsed = Vec::with_capacity(raw.len());
    for item in raw {
        parsed.push(split_key(item));
    }
    let keys: Vec<String> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().and_then(|(k, _, _)| k.clone()))
        .collect();
    let earlier = replay_many(&mut conn, &keys).await?;
    let mut first_with_key: HashMap<String, (usize, String)> = HashMap::new();
    let mut resolved = Resolved::new();
    let mut items = Vec::with_capacity(parsed.len());
    for (i, p) in parsed.into_iter().enumerate() {
        let (key, hash, req) = match p {
            Ok(p) => p,
            Err(e) => {
                items.push(Item::Answered(ItemResult::error(&e)));
                continue;
            }
        };
        if let Some(key) = &key {
            if let Some(stored) = earlier.get(key).cloned() {
                items.push(Item::Answered(match answer_earlier(stored, &hash) {
                    Ok(job_id) => ItemResult::job(200, job_id),
                    Err(e) => ItemResult::error(&e),
                }));
                continue;
            }
            if let Some((first, first_hash)) = first_with_key.get(key) {
                items.push(Item::Repeat {
                    first: *first,
                    same: *first_hash == hash,
                });
                continue;
            }
            first_with_key.insert(key.clone(), (i, hash.clone()));
        }
        let item = match req {
            Err(e) => Item::Answered(ItemResult::error(&e)),
            Ok(req) => match check(&state, &mut conn, req, &mut resolved).await {
                Ok(checked) => Item::Checked {
                    checked: Box::new(checked),
                    key: key.map(|k| (k, hash)),
                },
                // The database itself failing ends the whole batch (nothing was queued).
                Err(e @ (ApiError::DatabaseUnavailable(_) | ApiError::Internal(_))) => {
                    return Err(e);
                }
                Err(e) => Item::Answered(ItemResult::error(&e)),
            },
        };
        items.push(item);
    }
    let to_queue: Vec<(usize, NewEmail<'_>)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| match item {
            Item::Checked { checked, key } => Some((
                i,
                checked.item(&state, key.as_ref().map(|(k, h)| (k.as_str(), h.as_str()))),
            )),
            _ => None,
        })
        .collect();
    let emails: Vec<NewEmail<'_>> = to_queue.iter().map(|(_, e)| *e).collect();
    let queued = email::enqueue_many(&mut conn, &emails, true).await?;
    let mut answers: HashMap<usize, ItemResult> = HashMap::with_capacity(queued.len());
    for ((i, email), outcome) in to_queue.iter().zip(queued) {
        let answer = match outcome {
            Queued::New(id) => ItemResult::job(202, id.to_string()),
            Queued::Replayed(job_id) => ItemResult::job(200, job_id.to_string()),
            Queued::KeyConflict => ItemResult::error(&ApiError::IdempotencyConflict),
            Queued::Suppressed => {
                ItemResult::error(&ApiError::RecipientSuppressed(email.job.category.as_str()))
            }
        };
        answers.insert(*i, answer);
    }
    let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let answer = match item {
            Item::Answered(answer) => answer,
            Item::Checked { checked, .. } => {
                let mut answer = answers
                    .remove(&i)
                    .ok_or_else(|| ApiError::Internal("a batch item was not answered".into()))?;
                if answer.status == 202 {
                    answer.suppressed = checked.suppressed;
                }
                answer
            }
            Item::Repeat { first, same } => {
                let first = results
                    .get(first)
                    .ok_or_else(|| ApiError::Internal("a repeated key came first".into()))?;
                match (&first.job_id, same) {
                    (Some(job_id), true) => ItemResult::job(200, job_id.clone()),
                    (None, true) => ItemResult {
                        status: first.status,
                        job_id: None,
                        code: first.code,
                        message: first.message.clone(),
                        suppressed: first.suppressed.clone(),
                    },
                    (_, false) => ItemResult::error(&ApiError::IdempotencyConflict),
                }
            }
        };
        results.push(answer);
    }
    let accepted = results.iter().filter(|r| r.status == 202).count();
    tracing::info!(
        items = results.len(),
        queued = accepted,
        "email batch queued"
    );
    Ok(Json(BatchResponse { results }))
}

/// An item's idempotency key, the hash of the item without it, and the request it holds.
type Split = (Option<String>, String, Result<SendEmailRequest, ApiError>);

fn split_key(mut item: Value) -> Result<Split, ApiError> {
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
    let hash = tokens::sha256_hex(&item.to_string());
    let req = serde_json::from_value(item).map_err(|e| ApiError::Validation(e.to_string()));
    Ok((key, hash, req))
}
