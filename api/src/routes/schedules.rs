//! The maintenance schedules the workers run.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use herald_shared::maintenance;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// A schedule's latest run.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastRunView {
    /// The job of that tick.
    pub job_id: String,
    /// When the tick enqueued it.
    #[serde(serialize_with = "herald_shared::time::ms")]
    pub enqueued_at: DateTime<Utc>,
    /// When it finished.
    #[serde(serialize_with = "herald_shared::time::ms_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    pub status: herald_shared::jobs::JobStatus,
    /// The job's report (`{"Ok": {...}}`) or error (`{"Err": "..."}`).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

/// A schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleItem {
    /// `expire_tokens`, `refresh_search_index` or `prune`.
    pub name: String,
    /// Cron expression, UTC, as the workers registered it.
    pub cron: String,
    /// The next tick.
    #[serde(serialize_with = "herald_shared::time::ms_opt")]
    pub next_tick_at: Option<DateTime<Utc>>,
    /// The latest tick's job.
    pub last_run: Option<LastRunView>,
}

/// The schedules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// One entry per schedule a worker has registered.
    pub schedules: Vec<ScheduleItem>,
}

/// Every schedule with its next tick and last run.
#[utoipa::path(get, path = "/v1/schedules", operation_id = "listSchedules", tag = "schedules", security(("bearer" = [])),
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<ScheduleList>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let schedules = maintenance::list(&mut conn)
        .await?
        .into_iter()
        .map(|s| ScheduleItem {
            name: s.name,
            cron: s.cron,
            next_tick_at: s.next_tick_at,
            last_run: s.last_run.map(|r| LastRunView {
                job_id: r.job_id,
                enqueued_at: r.enqueued_at,
                finished_at: r.finished_at,
                status: r.status,
                result: r.result,
            }),
        })
        .collect();
    Ok(Json(ScheduleList { schedules }))
}
