//! `GET /admin/jobs/{id}`: one job's timeline; retry and cancel, confirmed first.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::DateTime;
use herald_shared::email::{self, EmailJob, ledger};
use herald_shared::feedback;
use herald_shared::jobs::{self, JobStatus};
use serde_json::{Value, json};
use sqlx::Connection;

use super::{Action, Operator, PageError, checked_form, render, report_text, unavailable};
use crate::AppState;

/// `GET /admin/jobs/{id}`: the job, its email's ledger row and attempts, the feedback on its
/// message, its rendered subject; retry and cancel.
pub async fn job_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<jobs::JobId>().map(|id| id.to_string()) else {
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
            "envelope": email_job.as_ref().map(|e| &e.envelope),
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
    super::message(
        StatusCode::NOT_FOUND,
        "No such job.",
        Some(("/admin/jobs", "Back to the jobs")),
    )
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
    let Ok(id) = id.parse::<jobs::JobId>().map(|id| id.to_string()) else {
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
            JobAction::Retry => match crate::routes::jobs::retry(&mut tx, &id, budget).await? {
                crate::routes::jobs::Retried::Yes => Ok(()),
                crate::routes::jobs::Retried::NotFailed => {
                    Err("Only a job that failed for good can be retried.")
                }
                crate::routes::jobs::Retried::AlreadySent => {
                    Err("The email was sent already; retrying would send it twice.")
                }
            },
            JobAction::Cancel => {
                if crate::routes::jobs::cancel(&mut tx, &id).await? {
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
        Ok(Err(refused)) => super::message(
            StatusCode::CONFLICT,
            refused,
            Some((&format!("/admin/jobs/{id}"), "Back to the job")),
        ),
        Err(error) => unavailable(&error),
    }
}
