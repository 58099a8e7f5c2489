//! `GET /admin/jobs`: the job list.

use axum::extract::{Query, State};
use axum::response::Response;
use herald_shared::job_search;
use herald_shared::jobs::{self, JobStatus};
use serde::Deserialize;
use serde_json::json;

use super::{Operator, PageError, render, unavailable};
use crate::AppState;
use crate::routes::jobs::{PAGE_SIZE, given};

/// The jobs list's query: the API's filters and `refresh`.
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    /// The filters of `GET /v1/jobs`.
    #[serde(flatten)]
    pub filter: crate::routes::jobs::ListQuery,
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
                Ok::<_, PageError>(job_search::search(&mut *conn, filter, PAGE_SIZE).await?)
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
            super::query_string(&params)
        });
    render(
        "jobs.html",
        json!({
            "title": "Jobs", "nav": "jobs", "csrf": csrf,
            "refresh": query.refresh.map(|s| s.clamp(5, 300)),
            "states": JobStatus::ALL.map(JobStatus::as_str),
            "queues": jobs::Queue::ALL.map(jobs::Queue::name),
            "q": {
                "queue": given(&q.queue), "state": given(&q.state), "template": given(&q.template),
                "category": given(&q.category), "from": given(&q.from), "to": given(&q.to),
                "recipient": given(&q.recipient),
            },
            "problem": problem, "rows": rows, "next": next, "paged": given(&q.before).is_some(),
        }),
    )
}
