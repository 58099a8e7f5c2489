//! The email as a resource (`GET /v1/emails/{id}`): a read model over the job's payload
//! ([`crate::jobs`]), its ledger row ([`super::ledger`]) and the feedback on its message
//! ([`crate::feedback`]), each read through its owner's helpers. Writes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::message::Mailbox;
use super::{Category, EMAIL_QUEUE, EmailContent, EmailJob};
use crate::jobs::{self, JobError, JobId};

/// A template email's template as pinned when it was queued.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateUsed {
    /// Name.
    pub name: String,
    /// Version pinned at enqueue (absent for emails queued before templates were versioned).
    pub version: Option<i32>,
    /// Locale chosen (after fallback).
    pub locale: Option<String>,
}

/// An attachment as the resource shows it (no bytes).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttachmentSummary {
    /// Filename.
    pub filename: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Bytes.
    pub size: usize,
    /// Inline id, if inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// One step in an email's life.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineEntry {
    /// When (absent for an end state the ledger does not time).
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub at: Option<DateTime<Utc>>,
    /// `queued`, `attempt`, `sent`, then SES's `delivery`, `bounce`, `complaint`,
    /// `delivery_delay`, `open`, `click`, `reject`, `rendering_failure`, `subscription` (or
    /// `unmatched`); or the end states `failed`, `cancelled`, `suppressed`.
    pub event: String,
    /// The recipient an SES event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// More: an attempt's number and error, a bounce's type, a click's link, a reject's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub detail: Option<serde_json::Value>,
}

/// An email as `GET /v1/emails/{id}` answers it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmailView {
    /// The id `POST /v1/emails` answered (the job's).
    pub id: String,
    /// The sender.
    pub from: Mailbox,
    /// `To` recipients.
    pub to: Vec<Mailbox>,
    /// `Cc` recipients.
    pub cc: Vec<Mailbox>,
    /// `Bcc` recipients.
    pub bcc: Vec<Mailbox>,
    /// `Reply-To`.
    pub reply_to: Vec<Mailbox>,
    /// The subject (a template's rendered; absent if it cannot be rendered now).
    pub subject: Option<String>,
    /// `transactional` or `marketing`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub category: Category,
    /// The template, for template emails.
    pub template: Option<TemplateUsed>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Custom headers.
    pub headers: BTreeMap<String, String>,
    /// Attachments (names, types, sizes).
    pub attachments: Vec<AttachmentSummary>,
    /// The ledger's status: `pending`, `sending`, `sent`, `suppressed`, `failed`, `cancelled`.
    pub status: String,
    /// When it was queued.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub created_at: Option<DateTime<Utc>>,
    /// When it is (or was) due.
    #[serde(serialize_with = "crate::time::ms")]
    pub send_at: DateTime<Utc>,
    /// When SES accepted it.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When SES refused it after accepting it (a Reject or Rendering Failure): final, never
    /// resent.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub rejected_at: Option<DateTime<Utc>>,
    /// SES's message id.
    pub ses_message_id: Option<String>,
    /// Queued, each run, sent, then per recipient delivered, bounced, complained; oldest first.
    pub timeline: Vec<TimelineEntry>,
}

fn mailbox(email: &str) -> Mailbox {
    Mailbox {
        email: email.to_owned(),
        name: None,
    }
}

/// The email with this id, or `None` if there is no such email job. `default_from` is
/// `EMAIL_FROM`, the sender of emails that name none.
pub async fn find(
    conn: &mut PgConnection,
    id: JobId,
    default_from: &str,
) -> Result<Option<EmailView>, JobError> {
    let id = id.to_string();
    let Some(row) = jobs::find(conn, &id).await? else {
        return Ok(None);
    };
    if row.queue != EMAIL_QUEUE {
        return Ok(None);
    }
    let Some(payload) = jobs::payload(conn, &id).await? else {
        return Ok(None);
    };
    let job: EmailJob = serde_json::from_slice(&payload)?;
    let record = super::ledger::record(conn, &id).await?;
    let env = &job.envelope;
    let (to, cc, bcc) = if env.lists_recipients() {
        (env.to.clone(), env.cc.clone(), env.bcc.clone())
    } else {
        (vec![mailbox(&job.to)], Vec::new(), Vec::new())
    };
    let subject = super::subject_of(conn, &job.content).await.ok();
    let template = match &job.content {
        EmailContent::Template {
            name,
            version,
            locale,
            ..
        } => Some(TemplateUsed {
            name: name.clone(),
            version: *version,
            locale: locale.clone(),
        }),
        EmailContent::Raw { .. } => None,
        other => Some(TemplateUsed {
            name: other.label().to_owned(),
            version: None,
            locale: None,
        }),
    };
    let mut timeline = Vec::new();
    let created_at = record
        .as_ref()
        .map(|r| r.created_at)
        .or_else(|| jobs::enqueued_at(&id));
    timeline.push(TimelineEntry {
        at: created_at,
        event: "queued".into(),
        recipient: None,
        detail: None,
    });
    let (mut status, mut sent_at, mut ses_message_id) = ("pending".to_owned(), None, None);
    let mut rejected_at = None;
    if let Some(r) = &record {
        status = r.status.as_str().to_owned();
        sent_at = r.sent_at;
        rejected_at = r.rejected_at;
        ses_message_id = r.ses_message_id.clone();
        for run in r.attempt_log.as_array().into_iter().flatten() {
            let time = |k: &str| {
                run[k]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            // The log is written in SQL: its times are put in the one format here.
            let mut detail = run.clone();
            for k in ["started_at", "ended_at"] {
                if let Some(t) = time(k) {
                    detail[k] = serde_json::json!(crate::time::format(&t));
                }
            }
            timeline.push(TimelineEntry {
                at: time("started_at"),
                event: "attempt".into(),
                recipient: None,
                detail: Some(detail),
            });
        }
        if let Some(at) = r.sent_at {
            timeline.push(TimelineEntry {
                at: Some(at),
                event: "sent".into(),
                recipient: None,
                detail: r
                    .ses_message_id
                    .as_ref()
                    .map(|m| serde_json::json!({"ses_message_id": m})),
            });
        }
        if let Some(message) = &r.ses_message_id {
            for e in crate::feedback::for_message(conn, message).await? {
                let detail = match (&e.bounce_type, &e.complaint_type) {
                    (Some(t), _) => Some(serde_json::json!({
                        "bounce_type": t, "bounce_sub_type": e.bounce_sub_type
                    })),
                    (None, Some(t)) => Some(serde_json::json!({"complaint_type": t})),
                    (None, None) => e.detail,
                };
                timeline.push(TimelineEntry {
                    at: Some(e.occurred_at),
                    event: e.event_type,
                    recipient: Some(e.recipient),
                    detail,
                });
            }
        }
        if matches!(r.status.as_str(), "failed" | "cancelled" | "suppressed") {
            timeline.push(TimelineEntry {
                at: None,
                event: r.status.as_str().to_owned(),
                recipient: None,
                detail: r
                    .last_error
                    .as_ref()
                    .map(|e| serde_json::json!({"error": e})),
            });
        }
    }
    // Stable: entries without a time (end states) stay last.
    timeline.sort_by_key(|e| (e.at.is_none(), e.at));
    Ok(Some(EmailView {
        id,
        from: env.from.clone().unwrap_or_else(|| mailbox(default_from)),
        to,
        cc,
        bcc,
        reply_to: env.reply_to.clone(),
        subject,
        category: job.category,
        template,
        tags: env.tags.clone(),
        headers: env.headers.clone(),
        attachments: env
            .attachments
            .iter()
            .map(|a| AttachmentSummary {
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
                content_id: a.content_id.clone(),
            })
            .collect(),
        status,
        created_at,
        send_at: row.run_at,
        sent_at,
        rejected_at,
        ses_message_id,
        timeline,
    }))
}
