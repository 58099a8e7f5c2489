//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use herald_shared::db::DbError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ApiError;

/// A status word.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "health",
    responses((status = 200, description = "The process is alive", body = StatusBody)))]
pub async fn health() -> Json<StatusBody> {
    Json(StatusBody { status: "ok" })
}

/// Readiness: the database answers and its migrations are current.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = StatusBody),
        (status = 503, description = "Database unreachable or schema not current", body = crate::error::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    // The cause goes to the log; the answer is fixed, so a prober learns nothing of the schema,
    // the roles or the server.
    let check = async {
        let mut conn = state.db.acquire().await.map_err(DbError::from)?;
        herald_shared::db::ensure_current(&mut conn).await
    };
    if let Err(e) = check.await {
        tracing::warn!(error = %herald_shared::telemetry::error_chain(&e), "not ready");
        return Err(ApiError::NotReady("not ready".into()));
    }
    Ok(Json(StatusBody { status: "ready" }))
}
