//! The suppression list: read, add (manual or unsubscribe) and remove, each change recorded.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_shared::address;
use herald_shared::suppressions::{self, Suppression, SuppressionType};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// Filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this address (case-insensitive).
    pub email: Option<String>,
    /// Only this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub suppression_type: Option<String>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

/// A page of suppressions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionPage {
    /// The suppressions, oldest first.
    pub items: Vec<Suppression>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Lists suppressions.
#[utoipa::path(get, path = "/v1/suppressions", operation_id = "listSuppressions", tag = "suppressions", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page", body = SuppressionPage),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Bad filter", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SuppressionPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Validation("limit must be 1 to 500".into()));
    }
    let suppression_type = match q.suppression_type.as_deref() {
        None => None,
        Some(name) => Some(SuppressionType::parse(name).ok_or_else(|| {
            let names: Vec<_> = SuppressionType::ALL.iter().map(|t| t.as_str()).collect();
            ApiError::Validation(format!("type must be one of {}", names.join(", ")))
        })?),
    };
    let mut conn = state.db.acquire().await?;
    let rows = suppressions::list(
        &mut conn,
        q.email.as_deref(),
        suppression_type,
        q.cursor,
        limit,
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(SuppressionPage {
        items: rows,
        next_cursor,
    }))
}

/// One address's suppression.
#[utoipa::path(get, path = "/v1/suppressions/{email}", operation_id = "getSuppression", tag = "suppressions", security(("bearer" = [])),
    params(("email" = String, Path, description = "Address (case-insensitive)")),
    responses(
        (status = 200, description = "Suppressed", body = Suppression),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not suppressed", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<Json<Suppression>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let row = suppressions::find(&mut conn, &email)
        .await?
        .ok_or(ApiError::NotFound("suppression"))?;
    Ok(Json(row))
}

/// A suppression to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppression {
    /// Address.
    pub email: String,
    /// `manual` (no email at all) or `unsubscribe` (no marketing email).
    #[serde(rename = "type")]
    pub suppression_type: String,
    /// Why.
    pub reason: Option<String>,
}

/// Adds (or strengthens) a suppression.
#[utoipa::path(post, path = "/v1/suppressions", operation_id = "addSuppression", tag = "suppressions", security(("bearer" = [])),
    request_body = AddSuppression,
    responses(
        (status = 201, description = "Suppressed (an existing, weaker suppression is raised)", body = Suppression),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Invalid address, type or reason (at most 500 characters)", body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    body: JsonBody<AddSuppression>,
) -> Result<(StatusCode, Json<Suppression>), ApiError> {
    let req = body.value;
    let input = suppressions::OperatorSuppression::parse(
        &req.email,
        &req.suppression_type,
        req.reason.as_deref(),
    )
    .map_err(ApiError::Validation)?;
    let email = input.email;
    let mut conn = state.db.acquire().await?;
    let row = suppressions::add_recorded(
        &mut conn,
        &email,
        input.kind,
        input.reason.as_deref(),
        "api",
    )
    .await?
    .ok_or_else(|| ApiError::Validation("type must be manual or unsubscribe".into()))?;
    tracing::info!(to = %address::mask(&email), kind = %req.suppression_type, "suppression added");
    Ok((StatusCode::CREATED, Json(row)))
}

/// Removes an address's suppression.
#[utoipa::path(delete, path = "/v1/suppressions/{email}", operation_id = "removeSuppression", tag = "suppressions", security(("bearer" = [])),
    params(("email" = String, Path, description = "Address (case-insensitive)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not suppressed", body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.db.acquire().await?;
    let row = suppressions::remove_recorded(&mut conn, &email, None, "api")
        .await?
        .ok_or(ApiError::NotFound("suppression"))?;
    tracing::info!(to = %address::mask(&row.email), "suppression removed");
    Ok(StatusCode::NO_CONTENT)
}
