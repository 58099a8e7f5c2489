//! `POST /v1/emails`: validate, check suppressions, enqueue (idempotently).
//!
//! Longer than 450 lines on purpose: the request type, its checks and the handler are one path; the
//! envelope's own rules live in `herald_shared::email::message`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use herald_shared::email::attachments::{self, AttachmentInput, AttachmentRef};
use herald_shared::email::group::GroupedEmail;
use herald_shared::email::message::{self, AllowedSenders, MailboxInput, OneOrMany};
use herald_shared::email::{Category, EmailContent, EmailJob, NewEmail, Queued, templates};
use herald_shared::{address, tokens};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// An email to send: a template with data, or a subject with a text and/or HTML part.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEmailRequest {
    /// Recipients: `"Ada Lovelace <ada@example.com>"`, `"ada@example.com"`,
    /// `{"email", "name"}`, or an array of them; at most 50 with `cc` and `bcc`.
    #[schema(example = "Ada Lovelace <ada@example.com>")]
    pub to: OneOrMany,
    /// Carbon-copy recipients.
    #[schema(max_items = 49)]
    pub cc: Option<Vec<MailboxInput>>,
    /// Blind-copy recipients: in SES's envelope, never in a header.
    #[schema(max_items = 49)]
    pub bcc: Option<Vec<MailboxInput>>,
    /// The sender, with a display name if wanted; it must match `EMAIL_FROM_ALLOWED` (default:
    /// `EMAIL_FROM` alone, which is also the sender when this is absent).
    pub from: Option<MailboxInput>,
    /// `Reply-To`: one mailbox or several.
    pub reply_to: Option<OneOrMany>,
    /// Custom headers (at most 20): ASCII names, no line breaks; From, To, Cc, Bcc, Reply-To,
    /// Subject, Date, Message-ID, MIME-Version, Content-*, List-Unsubscribe(-Post), Return-Path
    /// and Sender are Herald's.
    pub headers: Option<BTreeMap<String, String>>,
    /// Tags (at most 10): names and values of ASCII letters, digits, `_` and `-`; sent to SES as
    /// message tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// Attachments (at most 20, 10 MB decoded in all): `filename`, `content` (base64),
    /// `content_type`, and `content_id` for an inline part the HTML refers to as `cid:…`. Types
    /// SES refuses (.exe, .js, …) are refused here.
    #[schema(max_items = 20)]
    pub attachments: Option<Vec<AttachmentInput>>,
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
    #[schema(example = "transactional")]
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
    /// Recipients left out because they are suppressed for the email's category.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
}

impl Enqueued {
    /// The response body for a job id.
    pub fn new(job_id: String) -> Self {
        Self {
            job_id,
            status: "queued",
            suppressed: Vec::new(),
        }
    }
}

/// Turns the request into a job, rendering templates now so that bad data fails here, not later.
fn build_job(req: SendEmailRequest, senders: &AllowedSenders) -> Result<Built, ApiError> {
    let message::Checked {
        to,
        envelope,
        blobs,
    } = message::check(
        message::EnvelopeInput {
            to: Some(req.to),
            cc: req.cc.unwrap_or_default(),
            bcc: req.bcc.unwrap_or_default(),
            from: req.from,
            reply_to: req.reply_to,
            headers: req.headers.unwrap_or_default(),
            tags: req.tags.unwrap_or_default(),
            attachments: req.attachments.unwrap_or_default(),
        },
        senders,
    )
    .map_err(|e| ApiError::Validation(e.to_string()))?;
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
            if let Some(html) = &req.html {
                attachments::check_cid_references(html, &envelope.attachments)
                    .map_err(|e| ApiError::Validation(e.to_string()))?;
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
    Ok(Built {
        job: EmailJob {
            to,
            category,
            content,
            envelope,
        },
        send_at: req.send_at,
        blobs,
    })
}

/// A request turned into a job, with its attachments' bytes to store before it is queued.
struct Built {
    job: EmailJob,
    send_at: Option<DateTime<Utc>>,
    blobs: Vec<(AttachmentRef, Vec<u8>)>,
}

/// Templates already resolved in this request: (name, locale asked) → (locale found, newest version).
pub(crate) type Resolved = std::collections::HashMap<(String, String), Option<(String, i32)>>;

/// Resolves a template email's locale (with fallback) to the newest version there, checks `data`
/// against it and renders it once, so bad data fails here, not later; pins that version.
async fn pin_template(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    job: &mut EmailJob,
    resolved: &mut Resolved,
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
    let asked = (name.clone(), wanted.to_owned());
    let (found, newest) = match resolved.get(&asked) {
        Some(hit) => hit.clone(),
        None => {
            let found = templates::store::resolve(conn, name, wanted).await?;
            resolved.insert(asked, found.clone());
            found
        }
    }
    .ok_or_else(|| ApiError::UnknownTemplate(format!("unknown template {name:?}")))?;
    let compiled = state
        .templates
        .get(conn, name, &found, newest)
        .await
        .map_err(ApiError::from_template_store)?;
    let rendered = templates::render_blocking(compiled, data.clone(), String::new())
        .await
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
#[utoipa::path(post, path = "/v1/emails", operation_id = "sendEmail", tag = "emails", security(("bearer" = [])),
    request_body = SendEmailRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: same job")),
    responses(
        (status = 202, description = "Queued; a replay of an earlier request with the same Idempotency-Key and body answers the same, with `Idempotent-Replayed: true`", body = Enqueued,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is an earlier request's"))),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "Recipient suppressed, or Idempotency-Key reused with another body", body = ErrorBody),
        (status = 422, description = "Invalid address, unknown template, missing variable or unknown field", body = ErrorBody)))]
pub async fn send_email(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<SendEmailRequest>,
) -> Result<(StatusCode, HeaderMap, Json<Enqueued>), ApiError> {
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
    // The 16 MiB limit is for attachments: the rest of the email stays within the usual 256 KiB,
    // so that no large text ends up in the queue's rows.
    let attachment_chars: usize = body
        .value
        .attachments
        .iter()
        .flatten()
        .map(|a| a.content.len())
        .sum();
    if body.raw.len().saturating_sub(attachment_chars) > crate::extract::BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge);
    }
    let body_hash = tokens::sha256_hex(&String::from_utf8_lossy(&body.raw));
    // A connection only where this request reads the database itself (a key's replay, a
    // template's version): the enqueue shares a statement with concurrent requests.
    let mut conn = None;
    if let Some(key) = &key {
        let conn = conn.insert(state.db.acquire().await?);
        if let Some(job_id) = replay(conn, key, &body_hash).await? {
            return Ok((
                StatusCode::ACCEPTED,
                replayed(),
                Json(Enqueued::new(job_id)),
            ));
        }
    }
    let Built {
        mut job,
        send_at,
        blobs,
    } = precheck(&state, body.value)?;
    if matches!(job.content, EmailContent::Template { .. }) || !blobs.is_empty() {
        let conn = match &mut conn {
            Some(conn) => conn,
            None => conn.insert(state.db.acquire().await?),
        };
        pin_template(&state, conn, &mut job, &mut Resolved::new()).await?;
        attachments::store(conn, &blobs).await?;
    }
    let mut suppressed = Vec::new();
    if job.envelope.lists_recipients() {
        let conn = match &mut conn {
            Some(conn) => conn,
            None => conn.insert(state.db.acquire().await?),
        };
        suppressed = drop_suppressed(conn, &mut job).await?;
    }
    drop(conn);
    let (to, category, label) = (
        address::mask(&job.to).to_string(),
        job.category,
        job.content.label().to_owned(),
    );
    let queued = state
        .enqueue
        .queue(GroupedEmail {
            job,
            run_at: send_at,
            max_attempts: state.config.email_max_attempts,
            idempotency: key.clone().map(|k| (k, body_hash.clone())),
        })
        .await?;
    let mut was_replayed = HeaderMap::new();
    let job_id = match queued {
        Queued::New(id) => id.to_string(),
        Queued::Replayed(job_id) => {
            was_replayed = replayed();
            job_id.to_string()
        }
        Queued::Suppressed => {
            return Err(ApiError::RecipientSuppressed(category.as_str()));
        }
        // A concurrent request with this key committed first: answer with its job.
        Queued::KeyConflict => match &key {
            Some(key) => {
                let mut conn = state.db.acquire().await?;
                was_replayed = replayed();
                replay(&mut conn, key, &body_hash)
                    .await?
                    .ok_or(ApiError::IdempotencyConflict)?
            }
            None => return Err(ApiError::Internal("no answer for the email".into())),
        },
    };
    tracing::info!(job_id, to = %to, template = label, "email queued");
    let mut answer = Enqueued::new(job_id);
    answer.suppressed = suppressed;
    Ok((StatusCode::ACCEPTED, was_replayed, Json(answer)))
}

/// `Idempotent-Replayed: true`: the answer is the first request's, nothing new was queued.
fn replayed() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    headers
}

/// Leaves out of an email with listed recipients those the send rule suppresses in its category
/// (the statement that queues checks the first one again); returns them, normalised. Every
/// recipient suppressed is a 409 listing them.
pub(crate) async fn drop_suppressed(
    conn: &mut sqlx::PgConnection,
    job: &mut EmailJob,
) -> Result<Vec<String>, ApiError> {
    if !job.envelope.lists_recipients() {
        return Ok(Vec::new());
    }
    let all: Vec<String> = job.envelope.addresses().map(str::to_owned).collect();
    let gone = herald_shared::email::suppressed_among(conn, &all, job.category).await?;
    if gone.is_empty() {
        return Ok(gone);
    }
    job.envelope.without(&gone);
    match job.envelope.primary() {
        Some(first) => job.to = first.to_owned(),
        None => return Err(ApiError::RecipientsSuppressed(job.category.as_str(), gone)),
    }
    Ok(gone)
}

/// An email that passed every check an enqueue route makes before the database's own.
pub(crate) struct Checked {
    /// The job to queue.
    pub job: EmailJob,
    /// Its earliest send.
    pub send_at: Option<DateTime<Utc>>,
    /// Recipients left out as suppressed.
    pub suppressed: Vec<String>,
}

impl Checked {
    /// The email as `email::enqueue_many` takes it.
    pub fn item<'a>(&'a self, state: &AppState, key: Option<(&'a str, &'a str)>) -> NewEmail<'a> {
        NewEmail {
            job: &self.job,
            run_at: self.send_at,
            max_attempts: state.config.email_max_attempts,
            idempotency: key,
        }
    }
}

/// Checks a request as every enqueue route does (address, content, the marketing switch, template
/// pinning); suppression is checked by the statement that queues it.
pub(crate) async fn check(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    req: SendEmailRequest,
    resolved: &mut Resolved,
) -> Result<Checked, ApiError> {
    let Built {
        mut job,
        send_at,
        blobs,
    } = precheck(state, req)?;
    pin_template(state, conn, &mut job, resolved).await?;
    let suppressed = drop_suppressed(conn, &mut job).await?;
    attachments::store(conn, &blobs).await?;
    Ok(Checked {
        job,
        send_at,
        suppressed,
    })
}

/// The checks of [`check`] that need no database.
fn precheck(state: &AppState, req: SendEmailRequest) -> Result<Built, ApiError> {
    let built = build_job(req, &state.config.email_from_allowed)?;
    let job = &built.job;
    if job.category == Category::Marketing && state.config.marketing.is_none() {
        return Err(ApiError::Validation(
            "marketing email is disabled (MARKETING_EMAIL_ENABLED=false)".into(),
        ));
    }
    Ok(built)
}

/// Earlier requests' keys among `keys`: key → (request hash, job id).
pub(crate) async fn replay_many(
    conn: &mut sqlx::PgConnection,
    keys: &[String],
) -> Result<std::collections::HashMap<String, (String, String)>, ApiError> {
    Ok(herald_shared::email::keys::earlier(conn, keys).await?)
}

/// The job of an earlier request with this key, or a conflict if its body differed.
pub(crate) async fn replay(
    conn: &mut sqlx::PgConnection,
    key: &str,
    body_hash: &str,
) -> Result<Option<String>, ApiError> {
    replay_many(conn, &[key.to_owned()])
        .await?
        .remove(key)
        .map(|earlier| answer_earlier(earlier, body_hash))
        .transpose()
}

/// An earlier request's (hash, job id) for the same key: its job when this request is the same,
/// else a conflict.
pub(crate) fn answer_earlier(
    (earlier_hash, job_id): (String, String),
    hash: &str,
) -> Result<String, ApiError> {
    if earlier_hash == hash {
        Ok(job_id)
    } else {
        Err(ApiError::IdempotencyConflict)
    }
}
