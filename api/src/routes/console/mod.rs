//! The operator's console under `/admin`, one module and one template per page: [`overview`],
//! [`jobs`] (the list), [`job`] (a job's timeline, retry and cancel), [`suppressions`],
//! [`schedules`], [`feedback`] and [`webhooks`]. Server-rendered from minijinja templates compiled
//! into the binary; no script (a page refreshes itself with `?refresh=N`). Every query goes
//! through the shared crate's owners and read models; the console holds no SQL. Sessions, CSRF and
//! headers: [`super::admin`]. This module holds what the pages share.

pub mod feedback;
pub mod job;
pub mod jobs;
pub mod overview;
pub mod schedules;
pub mod suppressions;
pub mod webhooks;

use std::sync::LazyLock;

use axum::Form;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use herald_shared::address;
use minijinja::Environment;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::{Access, access, csrf_token, page, same_origin};
use crate::AppState;

pub use feedback::feedback_page;
pub use job::{cancel, job_page, retry};
pub use jobs::jobs_page;
pub use overview::overview;
pub use schedules::schedules_page;
pub use suppressions::{add_suppression, remove_suppression, suppressions_page};
pub use webhooks::{redeliver, webhooks_page};

/// The console's stylesheet; its hash is the only style the pages' CSP allows.
pub(crate) const STYLE: &str = include_str!("../../../templates/console/console.css");

/// Every template, by name (one per page, the shared layout, the confirmation and the message).
const TEMPLATES: [(&str, &str); 10] = [
    (
        "base.html",
        include_str!("../../../templates/console/base.html"),
    ),
    (
        "message.html",
        include_str!("../../../templates/console/message.html"),
    ),
    (
        "confirm.html",
        include_str!("../../../templates/console/confirm.html"),
    ),
    (
        "overview.html",
        include_str!("../../../templates/console/overview.html"),
    ),
    (
        "jobs.html",
        include_str!("../../../templates/console/jobs.html"),
    ),
    (
        "job.html",
        include_str!("../../../templates/console/job.html"),
    ),
    (
        "suppressions.html",
        include_str!("../../../templates/console/suppressions.html"),
    ),
    (
        "schedules.html",
        include_str!("../../../templates/console/schedules.html"),
    ),
    (
        "feedback.html",
        include_str!("../../../templates/console/feedback.html"),
    ),
    (
        "webhooks.html",
        include_str!("../../../templates/console/webhooks.html"),
    ),
];

/// Times as the pages print them: RFC 3339 in, `YYYY-MM-DD HH:MM:SS` (UTC) out.
fn when(value: String) -> String {
    DateTime::parse_from_rfc3339(&value)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or(value)
}

/// Seconds as a short age: `42s`, `3m 12s`, `5h 3m`, `2d 4h`.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

static ENV: LazyLock<Result<Environment<'static>, minijinja::Error>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    env.add_filter("when", when);
    env.add_filter("age", age);
    env.add_filter("mask", |a: String| address::mask(&a));
    env.add_filter("pct", |v: f64| format!("{:.2} %", v * 100.0));
    env.add_global(
        "style",
        minijinja::Value::from_safe_string(STYLE.to_owned()),
    );
    Ok(env)
});

/// Renders `name` with `ctx` into a page (a template error is logged and answered 500).
pub(super) fn render(name: &str, ctx: Value) -> Response {
    let html = match ENV.as_ref() {
        Ok(env) => env.get_template(name).and_then(|t| t.render(ctx)),
        Err(error) => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            error.to_string(),
        )),
    };
    match html {
        Ok(html) => page(StatusCode::OK, html),
        Err(error) => {
            tracing::error!(%error, template = name, "console page did not render");
            // The one page not from a template: the templates are what failed.
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<p>The page did not render.</p>".to_owned(),
            )
        }
    }
}

/// Why a console page could not be built.
#[derive(Debug, thiserror::Error)]
pub(super) enum PageError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Jobs(#[from] herald_shared::jobs::JobError),
    #[error(transparent)]
    Api(#[from] crate::error::ApiError),
}

pub(super) fn unavailable(error: &PageError) -> Response {
    tracing::error!(%error, "console query failed");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database did not answer.",
        None,
    )
}

/// A short page that says what happened, with a way back (`message.html`).
pub(super) fn message(status: StatusCode, text: &str, back: Option<(&str, &str)>) -> Response {
    let mut response = render(
        "message.html",
        json!({"title": text, "nav": "", "text": text,
               "back": back.map(|(href, label)| json!({"href": href, "label": label}))}),
    );
    *response.status_mut() = status;
    response
}

/// `k=v&…` for a link, encoded by `serde_urlencoded`.
pub(super) fn query_string(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The session's CSRF token (empty for a bearer request); `None` when not signed in.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<String> {
    match access(state, headers).await? {
        Access::Bearer => Some(String::new()),
        Access::Session(session) => Some(csrf_token(state, &session)),
    }
}

/// A signed-in operator, with the session's CSRF token for the page's forms (empty for a bearer
/// request); without a session the browser is sent to the login form.
#[derive(Debug)]
pub struct Operator(String);

impl axum::extract::FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Response> {
        signed_in(state, &parts.headers)
            .await
            .map(Operator)
            .ok_or_else(|| Redirect::to("/admin/login").into_response())
    }
}

/// The page `name` from what was built, or 503 when the database did not answer.
pub(super) fn answer(name: &str, built: Result<Value, PageError>) -> Response {
    match built {
        Ok(ctx) => render(name, ctx),
        Err(error) => unavailable(&error),
    }
}

/// A state-changing request must be signed in and, from a browser session, carry the session's
/// CSRF token and come from this origin.
pub(super) async fn allowed(
    state: &AppState,
    headers: &HeaderMap,
    sent_csrf: &str,
) -> Result<(), StatusCode> {
    match access(state, headers).await {
        None => Err(StatusCode::UNAUTHORIZED),
        Some(Access::Bearer) => Ok(()),
        Some(Access::Session(session)) => {
            let expected = csrf_token(state, &session);
            let csrf_ok = bool::from(subtle::ConstantTimeEq::ct_eq(
                sent_csrf.as_bytes(),
                expected.as_bytes(),
            ));
            if csrf_ok && same_origin(headers) {
                Ok(())
            } else {
                Err(StatusCode::FORBIDDEN)
            }
        }
    }
}

/// `?refresh=N`: the page reloads itself every N seconds (5 to 300), without script.
#[derive(Debug, Default, Deserialize)]
pub struct Refresh {
    /// Seconds between reloads.
    pub refresh: Option<u32>,
}

pub(super) fn refresh_of(r: &Refresh) -> Option<u32> {
    r.refresh.map(|s| s.clamp(5, 300))
}

/// A console action's form: the session's CSRF token and, once the operator confirmed, `confirm`.
#[derive(Debug, Default, Deserialize)]
pub struct Action {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `yes` once confirmed; without it the action asks first.
    #[serde(default)]
    pub confirm: String,
}

/// A posted form, once the request may change something ([`allowed`]).
pub(super) async fn checked_form<T: Default + HasCsrf>(
    state: &AppState,
    headers: &HeaderMap,
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, StatusCode> {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    allowed(state, headers, form.csrf()).await?;
    Ok(form)
}

/// A form carrying the session's CSRF token.
pub(super) trait HasCsrf {
    fn csrf(&self) -> &str;
}

impl HasCsrf for Action {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A task's report as `key value · key value` (nested keys joined with `.`, fractions rounded).
pub(super) fn report_text(report: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Number(n) if n.is_f64() => {
                out.push(format!("{prefix} {:.1}", n.as_f64().unwrap_or(0.0)));
            }
            Value::String(t) => out.push(format!("{prefix} {t}")),
            other => out.push(format!("{prefix} {other}")),
        }
    }
    let mut out = Vec::new();
    walk("", report, &mut out);
    out.join(" · ")
}
