//! `GET /admin`: the overview.

use axum::extract::{Query, State};
use axum::response::Response;
use herald_shared::email::{self, ledger};
use herald_shared::job_search::{self, JobFilter};
use herald_shared::jobs::{self, JobStatus};
use herald_shared::{compliance, webhooks};
use serde_json::{Value, json};

use super::{Operator, PageError, Refresh, answer, refresh_of};
use crate::AppState;

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
                let failed = job_search::search(&mut *conn, &failed, 20).await?;
                let recent = job_search::search(&mut *conn, &JobFilter::default(), 20).await?;
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
                let endpoints = webhooks::list(&mut conn).await?;
                Ok::<_, PageError>((rates, pauses, (sending, endpoints)))
            },
        )?;
        let mut queues: Vec<(String, [i64; 5])> = jobs::Queue::ALL
            .iter()
            .map(|q| (q.name().to_owned(), [0; 5]))
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
                .filter(|e| !e.enabled && e.disabled_reason.as_deref() == Some(webhooks::AUTO_DISABLED))
                .collect::<Vec<_>>(),
        }))
    }
    .await;
    answer("overview.html", built)
}
