//! The operator's console under `/admin`: overview, jobs and a job's timeline, suppressions,
//! schedules and feedback. Server-rendered from minijinja templates compiled into the binary; no
//! script (a page refreshes itself with `?refresh=N`). Every query goes through the same shared
//! functions the API uses; this module holds no SQL. Sessions, CSRF and headers: [`super::admin`].

use std::sync::LazyLock;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use herald_shared::email::{self, EmailJob, ledger};
use herald_shared::jobs::{self, JobFilter, JobStatus};

use super::jobs::{PAGE_SIZE, given};
use herald_shared::suppressions::{self, SuppressionType};
use herald_shared::{address, compliance, feedback, maintenance};
use minijinja::Environment;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Connection;

use super::admin::{Access, access, csrf_token, page, same_origin};
use crate::AppState;

/// The console's stylesheet; its hash is the only style the pages' CSP allows.
pub(crate) const STYLE: &str = include_str!("../../templates/console/console.css");

const TEMPLATES: [(&str, &str); 8] = [
    (
        "base.html",
        include_str!("../../templates/console/base.html"),
    ),
    (
        "overview.html",
        include_str!("../../templates/console/overview.html"),
    ),
    (
        "jobs.html",
        include_str!("../../templates/console/jobs.html"),
    ),
    ("job.html", include_str!("../../templates/console/job.html")),
    (
        "confirm.html",
        include_str!("../../templates/console/confirm.html"),
    ),
    (
        "suppressions.html",
        include_str!("../../templates/console/suppressions.html"),
    ),
    (
        "schedules.html",
        include_str!("../../templates/console/schedules.html"),
    ),
    (
        "feedback.html",
        include_str!("../../templates/console/feedback.html"),
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
fn render(name: &str, ctx: Value) -> Response {
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
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<p>The page did not render.</p>".to_owned(),
            )
        }
    }
}

/// Why a console page could not be built.
#[derive(Debug, thiserror::Error)]
enum PageError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Jobs(#[from] jobs::JobError),
    #[error(transparent)]
    Api(#[from] crate::error::ApiError),
}

fn unavailable(error: &PageError) -> Response {
    tracing::error!(%error, "console query failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "<p>The database did not answer.</p>".to_owned(),
    )
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
fn answer(name: &str, built: Result<Value, PageError>) -> Response {
    match built {
        Ok(ctx) => render(name, ctx),
        Err(error) => unavailable(&error),
    }
}

/// A state-changing request must be signed in and, from a browser session, carry the session's
/// CSRF token and come from this origin.
async fn allowed(state: &AppState, headers: &HeaderMap, sent_csrf: &str) -> Result<(), StatusCode> {
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

fn refresh_of(r: &Refresh) -> Option<u32> {
    r.refresh.map(|s| s.clamp(5, 300))
}

/// Bars of the 24-hour chart: stacked sent / failed / suppressed per hour, scaled to 100 px.
fn hour_bars(hours: &[ledger::HourCounts]) -> Value {
    const HEIGHT: f64 = 100.0;
    let top = hours
        .iter()
        .map(|h| h.sent + h.failed + h.suppressed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let scale = |n: i64| (n as f64 / top * HEIGHT).round();
    let bars: Vec<Value> = hours
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (sent, failed, suppressed) = (scale(h.sent), scale(h.failed), scale(h.suppressed));
            json!({
                "x": i * 20 + 30,
                "sent_y": HEIGHT - sent, "sent_h": sent,
                "failed_y": HEIGHT - sent - failed, "failed_h": failed,
                "suppressed_y": HEIGHT - sent - failed - suppressed, "suppressed_h": suppressed,
                "label": h.hour.map(|t| t.format("%H").to_string()).unwrap_or_default(),
                "title": format!("{}: {} sent, {} failed, {} suppressed",
                    h.hour.map(|t| t.format("%Y-%m-%d %H:00").to_string()).unwrap_or_default(),
                    h.sent, h.failed, h.suppressed),
            })
        })
        .collect();
    json!({"bars": bars, "top": top as i64})
}

/// Rates against their thresholds as bar widths (300 px = the hard threshold × 1.25).
fn rate_bars(rates: &[compliance::Rate], s: &compliance::Settings) -> Value {
    let row = |label: String, rate: f64, soft: f64, hard: f64, counts: bool| {
        let full = hard * 1.25;
        let px = |v: f64| ((v / full).min(1.0) * 300.0).round();
        json!({
            "label": label, "rate": rate, "soft": soft, "hard": hard, "counts": counts,
            "width": px(rate), "soft_x": px(soft), "hard_x": px(hard),
            "over": counts && rate >= soft,
        })
    };
    let mut out = Vec::new();
    for r in rates {
        let name = format!("{} {}", r.window, r.category);
        out.push(row(
            format!("bounces, {name} ({} sends)", r.sends),
            r.bounce_rate,
            s.bounce_threshold,
            s.bounce_hard_threshold,
            r.counts,
        ));
        out.push(row(
            format!("complaints, {name} ({} sends)", r.sends),
            r.complaint_rate,
            s.complaint_threshold,
            s.complaint_hard_threshold,
            r.counts,
        ));
    }
    Value::Array(out)
}

/// `GET /admin`: queues by state with the oldest wait, the last 24 hours of email, the rates
/// against their thresholds, the pauses, failed and recent jobs.
pub async fn overview(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(refresh): Query<Refresh>,
) -> Response {
    let built = async {
        // Four connections at once: the page waits for the slowest aggregate, not their sum.
        let db = &state.db;
        let ((counts, oldest), (failed, recent), hours, (rates, pauses, (sending, endpoints))) = tokio::try_join!(
            async {
                let mut conn = db.acquire().await?;
                let counts = jobs::count_by_state(&mut *conn).await?;
                Ok::<_, PageError>((counts, jobs::oldest_waiting(&mut *conn).await?))
            },
            async {
                let mut conn = db.acquire().await?;
                // The newest that failed for good, by id: stops after 20 instead of sorting them all.
                let failed = JobFilter {
                    state: Some(JobStatus::Failed),
                    ..JobFilter::default()
                };
                let failed = jobs::search(&mut *conn, &failed, 20).await?;
                let recent = jobs::search(&mut *conn, &JobFilter::default(), 20).await?;
                Ok::<_, PageError>((failed, recent))
            },
            async {
                let mut conn = db.acquire().await?;
                Ok::<_, PageError>(ledger::hourly_outcomes(&mut conn).await?)
            },
            async {
                let mut conn = db.acquire().await?;
                let rates = compliance::rates(&mut conn, &state.config.compliance).await?;
                let pauses = compliance::pauses(&mut conn).await?;
                let sending = email::sending_pause(&mut conn).await?;
                let endpoints = herald_shared::webhooks::list(&mut conn).await?;
                Ok::<_, PageError>((rates, pauses, (sending, endpoints)))
            },
        )?;
        let mut queues: Vec<(String, [i64; 5])> = [
            herald_shared::email::EMAIL_QUEUE,
            herald_shared::maintenance::MAINTENANCE_QUEUE,
        ]
        .iter()
        .map(|q| ((*q).to_owned(), [0; 5]))
        .collect();
        for row in counts {
            let index = JobStatus::ALL
                .iter()
                .position(|s| *s == row.state)
                .unwrap_or(0);
            match queues.iter_mut().find(|(q, _)| *q == row.queue) {
                Some((_, c)) => c[index] += row.n,
                None => {
                    let mut c = [0; 5];
                    c[index] = row.n;
                    queues.push((row.queue, c));
                }
            }
        }
        let queues: Vec<Value> = queues
            .into_iter()
            .map(|(name, counts)| {
                let wait = oldest.iter().find(|(q, _)| *q == name).map(|(_, a)| *a);
                json!({"name": name, "counts": counts, "oldest_wait": wait})
            })
            .collect();

        Ok::<_, PageError>(json!({
            "title": "Overview", "nav": "overview", "csrf": csrf, "refresh": refresh_of(&refresh),
            "states": JobStatus::ALL.map(JobStatus::as_str),
            "queues": queues, "failed": failed, "recent": recent,
            "chart": hour_bars(&hours), "hours": hours,
            "rates": rate_bars(&rates, &state.config.compliance), "pauses": pauses,
            "sending_pause": sending.map(|p| json!({"until": p.until, "reason": p.reason})),
            // Endpoints the worker disabled (a day of failures), not those an operator turned off.
            "disabled_endpoints": endpoints
                .iter()
                .filter(|e| !e.enabled && e.disabled_reason.as_deref() == Some(herald_shared::webhooks::AUTO_DISABLED))
                .collect::<Vec<_>>(),
        }))
    }
    .await;
    answer("overview.html", built)
}

/// The jobs list's query: the API's filters and `refresh`.
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    /// The filters of `GET /v1/jobs`.
    #[serde(flatten)]
    pub filter: super::jobs::ListQuery,
    /// See [`Refresh`].
    pub refresh: Option<u32>,
}

/// `GET /admin/jobs`: the filtered list, newest first, 50 a page (keyset: `before`).
pub async fn jobs_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(query): Query<JobsQuery>,
) -> Response {
    let q = &query.filter;
    let (filter, problem) = match q.parse() {
        Ok(f) => (Some(f), None),
        Err(problem) => (None, Some(problem)),
    };
    let rows = match &filter {
        None => Vec::new(),
        Some(filter) => {
            let found = async {
                let mut conn = state.db.acquire().await?;
                Ok::<_, PageError>(jobs::search(&mut *conn, filter, PAGE_SIZE).await?)
            }
            .await;
            match found {
                Ok(rows) => rows,
                Err(error) => return unavailable(&error),
            }
        }
    };
    // The next page keeps every filter and moves the cursor.
    let next = (rows.len() as i64 == PAGE_SIZE)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten()
        .map(|last| {
            let mut params: Vec<(&str, String)> = [
                ("queue", &q.queue),
                ("state", &q.state),
                ("template", &q.template),
                ("category", &q.category),
                ("from", &q.from),
                ("to", &q.to),
                ("recipient", &q.recipient),
            ]
            .into_iter()
            .filter_map(|(k, v)| given(v).map(|v| (k, v)))
            .collect();
            params.push(("before", last));
            serde_urlencoded_pairs(&params)
        });
    render(
        "jobs.html",
        json!({
            "title": "Jobs", "nav": "jobs", "csrf": csrf,
            "refresh": query.refresh.map(|s| s.clamp(5, 300)),
            "states": JobStatus::ALL.map(JobStatus::as_str),
            "queues": [herald_shared::email::EMAIL_QUEUE, herald_shared::maintenance::MAINTENANCE_QUEUE],
            "q": {
                "queue": given(&q.queue), "state": given(&q.state), "template": given(&q.template),
                "category": given(&q.category), "from": given(&q.from), "to": given(&q.to),
                "recipient": given(&q.recipient),
            },
            "problem": problem, "rows": rows, "next": next, "paged": given(&q.before).is_some(),
        }),
    )
}

/// `k=v&…` with both sides percent-encoded.
fn serde_urlencoded_pairs(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /admin/jobs/{id}`: the job, its email's ledger row and attempts, the feedback on its
/// message, its rendered subject; retry and cancel.
pub async fn job_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<ulid::Ulid>().map(|u| u.to_string()) else {
        return not_found();
    };
    let built = async {
        let mut conn = state.db.acquire().await?;
        let Some(job) = jobs::find(&mut conn, &id).await? else {
            return Ok(None);
        };
        let record = ledger::record(&mut conn, &id).await?;
        let events = match record.as_ref().and_then(|r| r.ses_message_id.as_deref()) {
            Some(message) => feedback::for_message(&mut conn, message).await?,
            None => Vec::new(),
        };
        let payload = jobs::payload(&mut conn, &id).await?;
        let email_job = payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<EmailJob>(p).ok());
        let subject = match &email_job {
            Some(e) => Some(
                email::subject_of(&mut conn, &e.content)
                    .await
                    .map_err(|e| format!("(does not render: {e})")),
            ),
            None => None,
        };
        let status = job.status();
        Ok::<_, PageError>(Some(json!({
            "title": format!("Job {id}"), "nav": "jobs", "csrf": csrf,
            "job": {
                "id": job.id, "queue": job.queue, "status": status.as_str(),
                "attempts": job.attempts, "max_attempts": job.max_attempts,
                "run_at": job.run_at, "done_at": job.done_at, "error": job.last_error(),
                "enqueued_at": jobs::enqueued_at(&job.id),
                "result": job.last_result.as_ref().and_then(|r| r.get("Ok")).map(report_text),
            },
            "can_retry": status == JobStatus::Failed,
            "can_cancel": status == JobStatus::Queued,
            "email": record.map(with_durations),
            "subject": subject.map(|s| s.unwrap_or_else(|e| e)),
            "events": events,
        })))
    }
    .await;
    match built {
        Ok(Some(ctx)) => render("job.html", ctx),
        Ok(None) => not_found(),
        Err(error) => unavailable(&error),
    }
}

/// The ledger row for the page: the logged runs, then the run that sent (from the row's columns),
/// each with `took_ms` when its start is known.
fn with_durations(record: ledger::Record) -> Value {
    let mut value = serde_json::to_value(&record).unwrap_or(Value::Null);
    if let Some(log) = value.get_mut("attempt_log").and_then(Value::as_array_mut) {
        if let Some(sent_at) = record.sent_at {
            log.push(json!({
                "n": record.attempts, "event": "sent", "ses_message_id": record.ses_message_id,
                "started_at": record.sending_started_at.filter(|s| *s <= sent_at),
                "ended_at": sent_at,
            }));
        }
        for entry in log {
            let time = |k: &str| {
                entry
                    .get(k)
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            };
            if let (Some(start), Some(end)) = (time("started_at"), time("ended_at")) {
                let took = (end - start).num_milliseconds();
                entry["took_ms"] = json!(took);
            }
        }
    }
    value
}

fn not_found() -> Response {
    page(StatusCode::NOT_FOUND, "<p>No such job.</p>".to_owned())
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

/// Which job action.
#[derive(Debug, Clone, Copy)]
enum JobAction {
    Retry,
    Cancel,
}

/// `POST /admin/jobs/{id}/retry`: asks to confirm, then puts a failed job back in its queue.
pub async fn retry(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    form: Result<Form<Action>, axum::extract::rejection::FormRejection>,
) -> Response {
    job_action(state, headers, id, form, JobAction::Retry).await
}

/// `POST /admin/jobs/{id}/cancel`: asks to confirm, then cancels a waiting job.
pub async fn cancel(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    form: Result<Form<Action>, axum::extract::rejection::FormRejection>,
) -> Response {
    job_action(state, headers, id, form, JobAction::Cancel).await
}

async fn job_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Action>, axum::extract::rejection::FormRejection>,
    action: JobAction,
) -> Response {
    let form = match checked_form(&state, &headers, form).await {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let Ok(id) = id.parse::<ulid::Ulid>().map(|u| u.to_string()) else {
        return not_found();
    };
    let verb = match action {
        JobAction::Retry => "retry",
        JobAction::Cancel => "cancel",
    };
    if form.confirm != "yes" {
        return render(
            "confirm.html",
            json!({
                "title": format!("{verb} job {id}?"), "nav": "jobs", "csrf": form.csrf,
                "action": format!("/admin/jobs/{id}/{verb}"), "verb": verb, "id": id,
            }),
        );
    }
    let budget = i32::try_from(state.config.email_max_attempts).unwrap_or(i32::MAX);
    let done = async {
        let mut conn = state.db.acquire().await?;
        let mut tx = conn.begin().await?;
        let answer = match action {
            JobAction::Retry => match super::jobs::retry(&mut tx, &id, budget).await? {
                super::jobs::Retried::Yes => Ok(()),
                super::jobs::Retried::NotFailed => {
                    Err("Only a job that failed for good can be retried.")
                }
                super::jobs::Retried::AlreadySent => {
                    Err("The email was sent already; retrying would send it twice.")
                }
            },
            JobAction::Cancel => {
                if super::jobs::cancel(&mut tx, &id).await? {
                    Ok(())
                } else {
                    Err("Only a waiting job can be cancelled.")
                }
            }
        };
        if answer.is_ok() {
            tx.commit().await?;
        }
        Ok::<_, PageError>(answer)
    }
    .await;
    match done {
        Ok(Ok(())) => {
            tracing::info!(job_id = %id, action = verb, "console action");
            Redirect::to(&format!("/admin/jobs/{id}")).into_response()
        }
        Ok(Err(refused)) => page(
            StatusCode::CONFLICT,
            format!("<p>{refused}</p><p><a href=\"/admin/jobs/{id}\">Back to the job</a></p>"),
        ),
        Err(error) => unavailable(&error),
    }
}

/// The suppressions page's search.
#[derive(Debug, Default, Deserialize)]
pub struct SuppressionsQuery {
    /// An address (exact, case-insensitive).
    pub email: Option<String>,
    /// A type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The last id of the previous page.
    pub after: Option<uuid::Uuid>,
}

/// `GET /admin/suppressions`: search, the list (100 a page), add and remove, the audit trail.
pub async fn suppressions_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(q): Query<SuppressionsQuery>,
) -> Response {
    let email = given(&q.email);
    let kind = given(&q.kind).and_then(|k| SuppressionType::parse(&k));
    let built = async {
        let mut conn = state.db.acquire().await?;
        let rows = suppressions::list(&mut conn, email.as_deref(), kind, q.after, 100).await?;
        let audit = feedback::recent(&mut conn, true, email.as_deref(), 50).await?;
        Ok::<_, PageError>((rows, audit))
    }
    .await;
    let (rows, audit) = match built {
        Ok(found) => found,
        Err(error) => return unavailable(&error),
    };
    let next = (rows.len() == 100)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    render(
        "suppressions.html",
        json!({
            "title": "Suppressions", "nav": "suppressions", "csrf": csrf,
            "types": SuppressionType::ALL.map(SuppressionType::as_str),
            "q": {"email": email, "type": kind.map(SuppressionType::as_str)},
            "rows": rows, "audit": audit, "next": next,
        }),
    )
}

/// The add and remove forms.
#[derive(Debug, Default, Deserialize)]
pub struct SuppressionForm {
    /// CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// Address.
    #[serde(default)]
    pub email: String,
    /// `manual` or `unsubscribe` (adding only).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Why (required to remove).
    #[serde(default)]
    pub reason: String,
}

/// A posted form, once the request may change something ([`allowed`]).
async fn checked_form<T: Default + HasCsrf>(
    state: &AppState,
    headers: &HeaderMap,
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, StatusCode> {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    allowed(state, headers, form.csrf()).await?;
    Ok(form)
}

/// A form carrying the session's CSRF token.
trait HasCsrf {
    fn csrf(&self) -> &str;
}

impl HasCsrf for SuppressionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl HasCsrf for Action {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /admin/suppressions`: adds (or strengthens) a suppression, recorded in the audit trail.
pub async fn add_suppression(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SuppressionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match checked_form(&state, &headers, form).await {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let email = match address::validate(&form.email) {
        Ok(email) => email,
        Err(e) => return bad_input(&format!("The address is not valid: {e}.")),
    };
    let Some(kind) = SuppressionType::parse(&form.kind)
        .filter(|k| matches!(k, SuppressionType::Manual | SuppressionType::Unsubscribe))
    else {
        return bad_input("The type must be manual or unsubscribe.");
    };
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.len() > 500) {
        return bad_input("The reason is longer than 500 characters.");
    }
    let done = async {
        let mut conn = state.db.acquire().await?;
        Ok::<_, PageError>(
            suppressions::add_recorded(&mut conn, &email, kind, reason, "console").await?,
        )
    }
    .await;
    match done {
        Ok(_) => {
            tracing::info!(to = %address::mask(&email), kind = kind.as_str(), "suppression added in the console");
            Redirect::to(&format!("/admin/suppressions?email={}", encode(&email))).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// `POST /admin/suppressions/remove`: removes a suppression; the reason is required and recorded.
pub async fn remove_suppression(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SuppressionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match checked_form(&state, &headers, form).await {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let reason = form.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return bad_input("Say why the suppression is removed (at most 500 characters).");
    }
    let done = async {
        let mut conn = state.db.acquire().await?;
        Ok::<_, PageError>(
            suppressions::remove_recorded(&mut conn, &form.email, Some(reason), "console").await?,
        )
    }
    .await;
    match done {
        Ok(Some(row)) => {
            tracing::info!(to = %address::mask(&row.email), "suppression removed in the console");
            Redirect::to("/admin/suppressions").into_response()
        }
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            "<p>That address is not suppressed.</p>".to_owned(),
        ),
        Err(error) => unavailable(&error),
    }
}

fn bad_input(message: &str) -> Response {
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "<p>{}</p><p><a href=\"/admin/suppressions\">Back</a></p>",
            crate::pages::escape(message)
        ),
    )
}

/// `GET /admin/schedules`: each schedule's cron, next tick and last ten runs with their reports.
pub async fn schedules_page(State(state): State<AppState>, Operator(csrf): Operator) -> Response {
    let built = async {
        let mut conn = state.db.acquire().await?;
        let mut out = Vec::new();
        for s in maintenance::list(&mut conn).await? {
            let runs =
                jobs::runs_by_key_prefix(&mut *conn, maintenance::MAINTENANCE_QUEUE, &s.name, 10)
                    .await?;
            let runs: Vec<Value> = runs
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id, "status": r.status().as_str(), "run_at": r.run_at,
                        "done_at": r.done_at, "error": r.last_error(),
                        "report": r.last_result.as_ref().and_then(|v| v.get("Ok")).map(report_text),
                    })
                })
                .collect();
            out.push(json!({"name": s.name, "cron": s.cron, "next": s.next_tick_at, "runs": runs}));
        }
        Ok::<_, PageError>(out)
    }
    .await;
    answer(
        "schedules.html",
        built.map(|schedules| {
            json!({"title": "Schedules", "nav": "schedules", "csrf": csrf, "schedules": schedules})
        }),
    )
}

/// A task's report as `key value · key value` (nested keys joined with `.`, fractions rounded).
fn report_text(report: &Value) -> String {
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

/// `GET /admin/feedback`: the newest feedback events, refused messages per reason, queue depths.
pub async fn feedback_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(refresh): Query<Refresh>,
) -> Response {
    let built = async {
        let mut conn = state.db.acquire().await?;
        Ok::<_, PageError>((
            feedback::recent(&mut conn, false, None, 100).await?,
            feedback::rejection_counts(&mut conn).await?,
            feedback::queue_depths(&mut conn).await?,
        ))
    }
    .await;
    answer(
        "feedback.html",
        built.map(|(events, rejections, depths)| {
            json!({
                "title": "Feedback", "nav": "feedback", "csrf": csrf, "refresh": refresh_of(&refresh),
                "events": events, "rejections": rejections, "depths": depths,
            })
        }),
    )
}
