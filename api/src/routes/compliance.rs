//! The compliance guard: current rates, thresholds and pauses; resuming sending.

use axum::Json;
use axum::extract::State;
use herald_shared::compliance::{self, PauseState, Rate, Settings};
use herald_shared::email::Category;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// Rates, thresholds and pause state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComplianceView {
    /// Per window (`24h`, `7d`) and category (`all`, `transactional`, `marketing`): sends, permanent
    /// bounces and complaints among them, the rates, and whether the sample is large enough to count.
    #[schema(value_type = Vec<Object>)]
    pub rates: Vec<Rate>,
    /// Thresholds, windows and the minimum sample.
    #[schema(value_type = Object)]
    pub thresholds: Settings,
    /// Per category: paused, why and since when.
    #[schema(value_type = Vec<Object>)]
    pub pauses: Vec<PauseState>,
}

async fn view(state: &AppState) -> Result<ComplianceView, ApiError> {
    let mut conn = state.db.acquire().await?;
    Ok(ComplianceView {
        rates: compliance::rates(&mut conn, &state.config.compliance).await?,
        thresholds: state.config.compliance.clone(),
        pauses: compliance::pauses(&mut conn).await?,
    })
}

/// The current rates, thresholds and pause state.
#[utoipa::path(get, path = "/v1/compliance", operation_id = "getCompliance", tag = "compliance", security(("bearer" = [])),
    responses(
        (status = 200, description = "Rates and pauses", body = ComplianceView),
        (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn get(State(state): State<AppState>) -> Result<Json<ComplianceView>, ApiError> {
    Ok(Json(view(&state).await?))
}

/// Which sending to resume.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// `marketing`, `transactional` or `all` (default `all`).
    pub category: Option<String>,
}

/// Resumes paused sending; the automatic check does not pause again during the grace period.
#[utoipa::path(post, path = "/v1/compliance/resume", operation_id = "resumeSending", tag = "compliance", security(("bearer" = [])),
    request_body = ResumeRequest,
    responses(
        (status = 200, description = "Resumed; the state now", body = ComplianceView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Unknown category", body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    body: JsonBody<ResumeRequest>,
) -> Result<Json<ComplianceView>, ApiError> {
    let categories = match body.value.category.as_deref().unwrap_or("all") {
        "all" => vec![Category::Transactional, Category::Marketing],
        "transactional" => vec![Category::Transactional],
        "marketing" => vec![Category::Marketing],
        other => return Err(ApiError::Validation(format!("unknown category {other:?}"))),
    };
    let mut conn = state.db.acquire().await?;
    let resumed = compliance::resume(&mut conn, &categories).await?;
    drop(conn);
    tracing::warn!(?resumed, "sending resumed by API call");
    Ok(Json(view(&state).await?))
}
