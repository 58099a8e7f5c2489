//! The suppression list: read, add (manual or unsubscribe) and remove, each change recorded.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_shared::address;
use herald_shared::suppressions::{self, Suppression, SuppressionType};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// A suppressed address.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionView {
    /// Row id (UUIDv7; pages are in this order).
    pub id: Uuid,
    /// Address, lower case.
    pub email: String,
    /// `bounce`, `complaint`, `unsubscribe` or `manual`.
    #[serde(rename = "type")]
    pub suppression_type: String,
    /// Why.
    pub reason: Option<String>,
    /// Transactional mail is not sent.
    pub suppress_transactional: bool,
    /// Marketing mail is not sent.
    pub suppress_marketing: bool,
    /// Soft bounces counted.
    pub bounce_count: i32,
    /// Last bounce.
    pub last_bounce_at: Option<DateTime<Utc>>,
    /// First suppressed.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Suppression> for SuppressionView {
    fn from(s: Suppression) -> Self {
        Self {
            id: s.id,
            email: s.email,
            suppression_type: s.suppression_type.as_str().to_owned(),
            reason: s.reason,
            suppress_transactional: s.suppress_transactional,
            suppress_marketing: s.suppress_marketing,
            bounce_count: s.bounce_count,
            last_bounce_at: s.last_bounce_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// Filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
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
    pub items: Vec<SuppressionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Lists suppressions.
#[utoipa::path(get, path = "/v1/suppressions", tag = "suppressions", security(("bearer" = [])),
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
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One address's suppression.
#[utoipa::path(get, path = "/v1/suppressions/{email}", tag = "suppressions", security(("bearer" = [])),
    params(("email" = String, Path, description = "Address (case-insensitive)")),
    responses(
        (status = 200, description = "Suppressed", body = SuppressionView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not suppressed", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<Json<SuppressionView>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let row = suppressions::find(&mut conn, &email)
        .await?
        .ok_or(ApiError::NotFound("suppression"))?;
    Ok(Json(row.into()))
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
#[utoipa::path(post, path = "/v1/suppressions", tag = "suppressions", security(("bearer" = [])),
    request_body = AddSuppression,
    responses(
        (status = 201, description = "Suppressed (an existing, weaker suppression is raised)", body = SuppressionView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Invalid address or type", body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    body: JsonBody<AddSuppression>,
) -> Result<(StatusCode, Json<SuppressionView>), ApiError> {
    let req = body.value;
    let email = address::validate(&req.email).map_err(|e| ApiError::Validation(e.to_string()))?;
    let kind = SuppressionType::parse(&req.suppression_type);
    let mut conn = state.db.acquire().await?;
    let row = match kind {
        Some(kind) => {
            suppressions::add_recorded(&mut conn, &email, kind, req.reason.as_deref(), "api")
                .await?
        }
        None => None,
    }
    .ok_or_else(|| ApiError::Validation("type must be manual or unsubscribe".into()))?;
    tracing::info!(to = %address::mask(&email), kind = %req.suppression_type, "suppression added");
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Removes an address's suppression.
#[utoipa::path(delete, path = "/v1/suppressions/{email}", tag = "suppressions", security(("bearer" = [])),
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
