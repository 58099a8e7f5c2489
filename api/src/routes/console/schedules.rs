//! `GET /admin/schedules`: the schedules and their last runs.

use axum::extract::State;
use axum::response::Response;
use herald_shared::{jobs, maintenance};
use serde_json::{Value, json};

use super::{Operator, PageError, answer, report_text};
use crate::AppState;

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
