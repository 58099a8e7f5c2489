//! `POST /v1/emails`: validate, check suppressions, enqueue (idempotently).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use herald_shared::email::{self, Category, EmailContent, EmailJob, templates};
use herald_shared::jobs::EnqueueOptions;
use herald_shared::{address, tokens};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Connection;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// An email to send: a template with data, or a subject with a text and/or HTML part.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEmailRequest {
    /// Recipient address.
    #[schema(example = "ada@example.com")]
    pub to: String,
    /// Template name (`welcome`, `notification`, or any stored with `PUT /v1/templates/{name}`);
    /// or give `subject` and `text`/`html`.
    pub template: Option<String>,
    /// The recipient's locale (`de-AT`): the template's version in `de-AT`, else `de`, else `en`.
    pub locale: Option<String>,
    /// Template variables (a JSON object).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Subject, when no template is used.
    pub subject: Option<String>,
    /// Plain-text part, when no template is used.
    pub text: Option<String>,
    /// HTML part, when no template is used.
    pub html: Option<String>,
    /// `transactional` (default) or `marketing`.
    #[schema(value_type = Option<String>, example = "transactional")]
    pub category: Option<Category>,
    /// Send no earlier than this time (RFC 3339).
    pub send_at: Option<DateTime<Utc>>,
}

/// The accepted job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enqueued {
    /// Job id (ULID): poll `GET /v1/jobs/{job_id}`.
    pub job_id: String,
    /// Always `queued`.
    pub status: &'static str,
}

impl Enqueued {
    /// The response body for a job id.
    pub fn new(job_id: String) -> Self {
        Self {
            job_id,
            status: "queued",
        }
    }
}

/// Turns the request into a job, rendering templates now so that bad data fails here, not later.
fn build_job(req: SendEmailRequest) -> Result<(EmailJob, Option<DateTime<Utc>>), ApiError> {
    let to = address::validate(&req.to).map_err(|e| ApiError::Validation(e.to_string()))?;
    let category = req.category.unwrap_or_default();
    let content = match (req.template, req.subject) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Validation(
                "give either template (with data) or subject with text/html, not both".into(),
            ));
        }
        (Some(name), None) => {
            if req.text.is_some() || req.html.is_some() {
                return Err(ApiError::Validation(
                    "text and html go with subject, not template".into(),
                ));
            }
            if templates::INTERNAL_TEMPLATES.contains(&name.as_str())
                || !templates::valid_name(&name)
            {
                return Err(ApiError::UnknownTemplate(format!(
                    "unknown template {name:?}"
                )));
            }
            let locale = req
                .locale
                .unwrap_or_else(|| templates::DEFAULT_LOCALE.into());
            if !templates::valid_locale(&locale) {
                return Err(ApiError::Validation(format!(
                    "locale {locale:?} is not a BCP 47 tag such as en or de-AT"
                )));
            }
            let data = req
                .data
                .unwrap_or_else(|| Value::Object(Default::default()));
            // Resolved, checked and pinned in `pin_template`, with the database at hand.
            EmailContent::Template {
                name,
                data,
                locale: Some(locale),
                version: None,
            }
        }
        (None, Some(subject)) => {
            if req.data.is_some() || req.locale.is_some() {
                return Err(ApiError::Validation(
                    "data and locale go with template".into(),
                ));
            }
            herald_shared::email::check_subject(&subject)
                .map_err(|reason| ApiError::Validation(format!("subject: {reason}")))?;
            if req.text.as_deref().unwrap_or("").is_empty()
                && req.html.as_deref().unwrap_or("").is_empty()
            {
                return Err(ApiError::Validation("give text, html or both".into()));
            }
            EmailContent::Raw {
                subject,
                text: req.text,
                html: req.html,
            }
        }
        (None, None) => {
            return Err(ApiError::Validation(
                "give template, or subject with text/html".into(),
            ));
        }
    };
    Ok((
        EmailJob {
            to,
            category,
            content,
        },
        req.send_at,
    ))
}

/// Resolves a template email's locale (with fallback) to the newest version there, checks `data`
/// against it and renders it once, so bad data fails here, not later; pins that version.
async fn pin_template(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    job: &mut EmailJob,
) -> Result<(), ApiError> {
    let EmailContent::Template {
        name,
        data,
        locale,
        version,
    } = &mut job.content
    else {
        return Ok(());
    };
    let wanted = locale.as_deref().unwrap_or(templates::DEFAULT_LOCALE);
    let (found, newest) = templates::store::resolve(conn, name, wanted)
        .await?
        .ok_or_else(|| ApiError::UnknownTemplate(format!("unknown template {name:?}")))?;
    let compiled = state
        .templates
        .get(conn, name, &found, newest)
        .await
        .map_err(ApiError::from_template_store)?;
    let rendered = compiled
        .render(data, "")
        .map_err(|e| ApiError::TemplateData(e.to_string()))?;
    // The data can put a line break into the subject: the same check as a raw one.
    herald_shared::email::check_subject(&rendered.subject).map_err(|reason| {
        ApiError::TemplateData(format!("the rendered subject is refused: {reason}"))
    })?;
    *locale = Some(found);
    *version = Some(newest);
    Ok(())
}

/// Queues an email.
#[utoipa::path(post, path = "/v1/emails", tag = "emails", security(("bearer" = [])),
    request_body = SendEmailRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: same job")),
    responses(
        (status = 202, description = "Queued", body = Enqueued),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "Recipient suppressed, or Idempotency-Key reused with another body", body = ErrorBody),
        (status = 422, description = "Invalid address, unknown template, missing variable or unknown field", body = ErrorBody)))]
pub async fn send_email(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<SendEmailRequest>,
) -> Result<(StatusCode, Json<Enqueued>), ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::Validation("Idempotency-Key must be ASCII".into()))?;
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::Validation(
                    "Idempotency-Key must be 1 to 255 characters".into(),
                ));
            }
            Some(k.to_owned())
        }
    };
    let body_hash = tokens::sha256_hex(&String::from_utf8_lossy(&body.raw));
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    if let Some(key) = &key
        && let Some(job_id) = replay(&mut tx, key, &body_hash).await?
    {
        return Ok((StatusCode::ACCEPTED, Json(Enqueued::new(job_id))));
    }
    let (job_id, job) = queue(&state, &mut tx, body.value).await?;
    if let Some(key) = &key
        && !store_key(&mut tx, key, &body_hash, &job_id).await?
    {
        // A concurrent request with this key won: drop our job and answer with theirs.
        tx.rollback().await?;
        let job_id = replay(&mut conn, key, &body_hash)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency key vanished".into()))?;
        return Ok((StatusCode::ACCEPTED, Json(Enqueued::new(job_id))));
    }
    tx.commit().await?;
    tracing::info!(job_id, to = %address::mask(&job.to), template = job.content.label(), "email queued");
    Ok((StatusCode::ACCEPTED, Json(Enqueued::new(job_id))))
}

/// Checks a request as every enqueue route does (address, content, the marketing switch, template
/// pinning, suppression) and queues it in `conn`'s transaction; returns the job id and the job.
pub(crate) async fn queue(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    req: SendEmailRequest,
) -> Result<(String, EmailJob), ApiError> {
    let (mut job, send_at) = build_job(req)?;
    if job.category == Category::Marketing && state.config.marketing.is_none() {
        return Err(ApiError::Validation(
            "marketing email is disabled (MARKETING_EMAIL_ENABLED=false)".into(),
        ));
    }
    pin_template(state, conn, &mut job).await?;
    if email::ledger::is_suppressed(conn, &job.to, job.category).await? {
        return Err(ApiError::RecipientSuppressed(job.category.as_str()));
    }
    let options = EnqueueOptions {
        max_attempts: state.config.email_max_attempts,
        run_at: send_at,
        idempotency_key: None,
    };
    let job_id = email::enqueue(conn, &job, options).await?.to_string();
    Ok((job_id, job))
}

/// Records `key` for `job_id`; false when another request holds the key already.
pub(crate) async fn store_key(
    conn: &mut sqlx::PgConnection,
    key: &str,
    body_hash: &str,
    job_id: &str,
) -> Result<bool, ApiError> {
    let stored = sqlx::query_scalar!(
        "INSERT INTO api_idempotency_keys (idempotency_key, request_sha256, job_id)
         VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING RETURNING job_id",
        key,
        body_hash,
        job_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(stored.is_some())
}

/// The job of an earlier request with this key, or a conflict if its body differed.
pub(crate) async fn replay(
    conn: &mut sqlx::PgConnection,
    key: &str,
    body_hash: &str,
) -> Result<Option<String>, ApiError> {
    let row = sqlx::query!(
        "SELECT request_sha256, job_id FROM api_idempotency_keys WHERE idempotency_key = $1",
        key
    )
    .fetch_optional(conn)
    .await?;
    match row {
        None => Ok(None),
        Some(r) if r.request_sha256 == body_hash => Ok(Some(r.job_id)),
        Some(_) => Err(ApiError::IdempotencyConflict),
    }
}
