//! A small queue dashboard at `/admin`: queues by state, failures with a retry button, recent jobs.
//! Behind the API token: `Authorization: Bearer …`, or a cookie set by `/admin/login?token=…`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use herald_shared::jobs::{self, JobStatus};
use herald_shared::tokens::sha256_hex;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::AppState;

const COOKIE: &str = "herald_admin";

/// The cookie holds a value derived from the token, never the token itself.
fn session_value(state: &AppState) -> String {
    sha256_hex(&format!(
        "herald-admin-session:{}",
        state.config.token.expose()
    ))
}

fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(state.config.token.expose().as_bytes())));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
        .any(|v| bool::from(v.as_bytes().ct_eq(session_value(state).as_bytes())));
    bearer || cookie
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `?token=`.
#[derive(Debug, Deserialize)]
pub struct Login {
    /// The API token.
    pub token: String,
}

/// Exchanges the API token for a session cookie, then shows the dashboard.
pub async fn login(State(state): State<AppState>, Query(q): Query<Login>) -> Response {
    if !bool::from(
        q.token
            .as_bytes()
            .ct_eq(state.config.token.expose().as_bytes()),
    ) {
        return (StatusCode::UNAUTHORIZED, Html("<p>Wrong token.</p>")).into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/admin",
        session_value(&state)
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/admin")).into_response()
}

/// The dashboard page.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorised(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Html("<!doctype html><title>Herald</title><p>Open <code>/admin/login?token=API_TOKEN</code> first.</p>"),
        )
            .into_response();
    }
    match render(&state).await {
        Ok(html) => Html(html).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "dashboard query failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html("<p>The database did not answer.</p>"),
            )
                .into_response()
        }
    }
}

/// Retries a failed job from the dashboard.
pub async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorised(&state, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(id) = id.parse::<ulid::Ulid>().map(|u| u.to_string()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let budget = i32::try_from(state.config.email_max_attempts).unwrap_or(i32::MAX);
    let result = async {
        let mut tx = state.pool.begin().await?;
        let retried = super::jobs::retry(&mut tx, &id, budget).await?;
        if retried == super::jobs::Retried::Yes {
            tx.commit().await?;
        }
        Ok::<_, crate::error::ApiError>(retried)
    }
    .await;
    match result {
        Ok(super::jobs::Retried::AlreadySent) => (
            StatusCode::CONFLICT,
            "The email was sent already; retrying would send it twice.",
        )
            .into_response(),
        Ok(_) => Redirect::to("/admin").into_response(),
        Err(err) => {
            tracing::error!(error = %err, "dashboard retry failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn render(state: &AppState) -> Result<String, herald_shared::jobs::JobError> {
    let counts = jobs::count_by_state(&state.pool).await?;
    let states = ["queued", "running", "succeeded", "failed", "cancelled"];
    let mut queues: Vec<(String, [i64; 5])> = Vec::new();
    for q in [
        herald_shared::email::EMAIL_QUEUE,
        herald_shared::maintenance::MAINTENANCE_QUEUE,
    ] {
        queues.push((q.to_owned(), [0; 5]));
    }
    for row in counts {
        let index = match row.state {
            JobStatus::Queued => 0,
            JobStatus::Running => 1,
            JobStatus::Succeeded => 2,
            JobStatus::Failed => 3,
            JobStatus::Cancelled => 4,
        };
        match queues.iter_mut().find(|(q, _)| *q == row.queue) {
            Some((_, c)) => c[index] += row.n,
            None => {
                let mut c = [0; 5];
                c[index] = row.n;
                queues.push((row.queue, c));
            }
        }
    }
    let failed = jobs::failed_for_good(&state.pool, 50).await?;
    let recent = jobs::recent(&state.pool, 50).await?;

    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Herald queues</title>\
         <style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f4f4f4}</style></head><body>\
         <h1>Herald queues</h1><table id=\"queues\"><tr><th>queue</th>",
    );
    for s in states {
        html.push_str(&format!("<th>{s}</th>"));
    }
    html.push_str("</tr>");
    for (queue, c) in &queues {
        html.push_str(&format!(
            "<tr class=\"queue\" data-queue=\"{0}\"><td>{0}</td>",
            escape(queue)
        ));
        for n in c {
            html.push_str(&format!("<td>{n}</td>"));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table><h2>Failed jobs</h2><table id=\"failed\"><tr><th>job</th><th>queue</th><th>attempts</th><th>last error</th><th></th></tr>");
    for j in &failed {
        let error = j
            .last_result
            .as_ref()
            .and_then(|r| r.get("Err"))
            .map(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string())
            })
            .unwrap_or_default();
        html.push_str(&format!(
            "<tr><td>{id}</td><td>{q}</td><td>{a}</td><td>{e}</td><td><form method=\"post\" action=\"/admin/jobs/{id}/retry\"><button>retry</button></form></td></tr>",
            id = escape(&j.id),
            q = escape(&j.queue),
            a = j.attempts,
            e = escape(&error)
        ));
    }
    html.push_str("</table><h2>Recent jobs</h2><table id=\"recent\"><tr><th>job</th><th>queue</th><th>state</th><th>attempts</th><th>run at</th></tr>");
    for j in &recent {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}/{}</td><td>{}</td></tr>",
            escape(&j.id),
            escape(&j.queue),
            j.status,
            j.attempts,
            j.max_attempts,
            j.run_at.to_rfc3339()
        ));
    }
    html.push_str("</table></body></html>");
    Ok(html)
}
