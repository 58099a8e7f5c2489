//! The message itself: rendering (with a fresh token for verification and reset emails) and the
//! headers SES gets.

use chrono::Utc;
use herald_shared::email::{Category, EmailContent, EmailJob, templates};
use herald_shared::tokens::{self, TokenKind};
use serde_json::json;

use super::{EmailContext, JobFailure};
use crate::ses::OutgoingEmail;

/// Renders the message; verification and reset emails get a fresh token, stored as a hash.
pub(super) async fn build(
    ctx: &EmailContext,
    id: &str,
    job: &EmailJob,
    tx: &mut sqlx::PgConnection,
) -> Result<(OutgoingEmail, Option<uuid::Uuid>), JobFailure> {
    let content_error = |e: templates::TemplateError| JobFailure::Content(e.to_string());
    let (rendered, token_id) = match &job.content {
        EmailContent::Template { .. } | EmailContent::Raw { .. } => match render_plain(job) {
            Some(rendered) => (rendered.map_err(content_error)?, None),
            None => return Err(JobFailure::Content("no content".into())),
        },
        EmailContent::Verification { user_id } | EmailContent::PasswordReset { user_id } => {
            let (kind, template, path) = match job.content {
                EmailContent::Verification { .. } => (
                    TokenKind::Verification,
                    templates::VERIFICATION,
                    "verify-email",
                ),
                _ => (
                    TokenKind::PasswordReset,
                    templates::PASSWORD_RESET,
                    "reset-password",
                ),
            };
            let name = sqlx::query_scalar!(
                "SELECT display_name FROM users WHERE id = $1 AND active",
                user_id
            )
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                JobFailure::Content("the user no longer exists or is inactive".into())
            })?;
            let (token_id, token) = tokens::issue(tx, kind, *user_id, Utc::now()).await?;
            let link = format!("{}/{path}?token={}", ctx.frontend_url, token.raw);
            let rendered = templates::render(template, &json!({"name": name, "link": link}))
                .map_err(content_error)?;
            (rendered, Some(token_id))
        }
    };
    Ok((outgoing(ctx, id, job, rendered), token_id))
}

/// Renders content that needs no token (`None` for verification and reset emails).
pub(super) fn render_plain(
    job: &EmailJob,
) -> Option<Result<templates::Rendered, templates::TemplateError>> {
    match &job.content {
        EmailContent::Template { name, data } => Some(templates::render(name, data)),
        EmailContent::Raw {
            subject,
            text,
            html,
        } => Some(Ok(templates::Rendered {
            subject: subject.clone(),
            text: text.clone().unwrap_or_default(),
            html: html.clone().unwrap_or_default(),
        })),
        EmailContent::Verification { .. } | EmailContent::PasswordReset { .. } => None,
    }
}

/// The message SES gets: the rendered content, with unsubscribe headers on marketing mail.
pub(super) fn outgoing(
    ctx: &EmailContext,
    id: &str,
    job: &EmailJob,
    rendered: templates::Rendered,
) -> OutgoingEmail {
    let mut headers = Vec::new();
    if job.category == Category::Marketing {
        // RFC 8058 one-click unsubscribe; the frontend resolves the job id to the address.
        headers.push((
            "List-Unsubscribe".to_owned(),
            format!("<{}/unsubscribe?job={id}>", ctx.frontend_url),
        ));
        headers.push((
            "List-Unsubscribe-Post".to_owned(),
            "List-Unsubscribe=One-Click".to_owned(),
        ));
    }
    OutgoingEmail {
        to: job.to.clone(),
        subject: rendered.subject,
        text: Some(rendered.text).filter(|t| !t.is_empty()),
        html: Some(rendered.html).filter(|h| !h.is_empty()),
        headers,
        job_id: id.to_owned(),
    }
}
