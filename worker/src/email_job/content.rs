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
    let unsubscribe = unsubscribe_link(ctx, job)?;
    let (rendered, token_id) = match &job.content {
        EmailContent::Template { .. } | EmailContent::Raw { .. } => {
            match render_plain(ctx, job, unsubscribe.as_deref()).await {
                Some(rendered) => (rendered?, None),
                None => return Err(JobFailure::Content("no content".into())),
            }
        }
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
            let name = herald_shared::users::display_name(&mut *tx, *user_id)
                .await?
                .ok_or_else(|| {
                    JobFailure::Content("the user no longer exists or is inactive".into())
                })?;
            let (token_id, token) = tokens::issue(tx, kind, *user_id, Utc::now()).await?;
            let link = format!("{}/{path}?token={}", ctx.frontend_url, token.raw);
            let compiled = compiled_for(ctx, template, None, None).await?;
            let rendered = compiled
                .render(&json!({"name": name, "link": link}), "")
                .map_err(content_error)?;
            (rendered, Some(token_id))
        }
    };
    Ok((
        outgoing(ctx, id, job, rendered, unsubscribe.as_deref()),
        token_id,
    ))
}

/// The unsubscribe link a marketing email carries (`None` for transactional mail); an error when
/// marketing mail is disabled (`MARKETING_EMAIL_ENABLED=false`), so such a job fails for good.
pub(super) fn unsubscribe_link(
    ctx: &EmailContext,
    job: &EmailJob,
) -> Result<Option<String>, JobFailure> {
    if job.category != Category::Marketing {
        return Ok(None);
    }
    match &ctx.marketing {
        Some(marketing) => Ok(Some(marketing.link(&job.to, Category::Marketing))),
        None => Err(JobFailure::Content(
            "marketing email is disabled (MARKETING_EMAIL_ENABLED=false)".into(),
        )),
    }
}

/// The compiled template version an email renders with: the one pinned at enqueue, else (jobs
/// queued before templates were versioned, and the token flows) the newest in its locale. The
/// database is read only when the version is not cached yet.
async fn compiled_for(
    ctx: &EmailContext,
    name: &str,
    locale: Option<&str>,
    version: Option<i32>,
) -> Result<std::sync::Arc<templates::Compiled>, JobFailure> {
    let locale = locale.unwrap_or(templates::DEFAULT_LOCALE);
    if let Some(version) = version
        && let Some(hit) = ctx.templates.cached(name, locale, version)
    {
        return Ok(hit);
    }
    let mut conn = ctx.pool.acquire().await?;
    let (locale, version) = match version {
        Some(version) => (locale.to_owned(), version),
        None => templates::store::resolve(&mut conn, name, locale)
            .await?
            .ok_or_else(|| JobFailure::Content(format!("unknown template {name:?}")))?,
    };
    ctx.templates
        .get(&mut conn, name, &locale, version)
        .await
        .map_err(|e| match e {
            templates::store::StoreError::Db(e) => JobFailure::Db(e),
            templates::store::StoreError::Template(e) => JobFailure::Content(e.to_string()),
        })
}

/// Renders content that needs no token (`None` for verification and reset emails); templates of
/// marketing mail get `unsubscribe_url`.
pub(super) async fn render_plain(
    ctx: &EmailContext,
    job: &EmailJob,
    unsubscribe_url: Option<&str>,
) -> Option<Result<templates::Rendered, JobFailure>> {
    match &job.content {
        EmailContent::Template {
            name,
            data,
            locale,
            version,
        } => Some(
            match compiled_for(ctx, name, locale.as_deref(), *version).await {
                Ok(compiled) => compiled
                    .render(data, unsubscribe_url.unwrap_or(""))
                    .map_err(|e| JobFailure::Content(e.to_string())),
                Err(e) => Err(e),
            },
        ),
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

/// The message SES gets: the rendered content; marketing mail (`unsubscribe` set) carries the
/// RFC 8058 one-click headers and the link in a footer of each part that does not show it yet.
pub(super) fn outgoing(
    ctx: &EmailContext,
    id: &str,
    job: &EmailJob,
    mut rendered: templates::Rendered,
    unsubscribe: Option<&str>,
) -> OutgoingEmail {
    let mut headers = Vec::new();
    if let Some(url) = unsubscribe {
        let mut list = format!("<{url}>");
        if let Some(mailto) = ctx.marketing.as_ref().and_then(|m| m.mailto.as_deref()) {
            list.push_str(&format!(", <mailto:{mailto}?subject=unsubscribe>"));
        }
        headers.push(("List-Unsubscribe".to_owned(), list));
        headers.push((
            "List-Unsubscribe-Post".to_owned(),
            "List-Unsubscribe=One-Click".to_owned(),
        ));
        if !rendered.text.is_empty() && !rendered.text.contains(url) {
            rendered.text = format!(
                "{}\n\n--\nTo stop receiving these emails: {url}\n",
                rendered.text.trim_end()
            );
        }
        if !rendered.html.is_empty() && !rendered.html.contains(url) {
            rendered.html = with_footer(&rendered.html, url);
        }
    }
    OutgoingEmail {
        to: job.to.clone(),
        subject: rendered.subject,
        text: Some(rendered.text).filter(|t| !t.is_empty()),
        html: Some(rendered.html).filter(|h| !h.is_empty()),
        headers,
        job_id: id.to_owned(),
        envelope: job.envelope.clone(),
        attachment_bytes: Vec::new(),
        category: job.category,
    }
}

/// `html` with an unsubscribe paragraph before its closing `</body>` (or at its end).
fn with_footer(html: &str, url: &str) -> String {
    let escaped = url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let footer = format!(
        "<p style=\"font-size:12px;color:#666\"><a href=\"{escaped}\">Unsubscribe</a> from these emails.</p>"
    );
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(at) => format!("{}{footer}{}", &html[..at], &html[at..]),
        None => format!("{html}{footer}"),
    }
}
