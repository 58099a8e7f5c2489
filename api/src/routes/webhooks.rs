//! Webhook endpoints: register, list, read, change (enable, events, rotate the secret) and delete.
//! The signing secret is shown once, when created or rotated. Deliveries are listed and can be
//! sent again.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_shared::webhooks::{self, Change, Endpoint, EventType, NewEndpoint, SECRET_PREFIX};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// An endpoint as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// The endpoint as stored.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The signing secret (`whsec_…`): only in the answer that created or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookView {
    fn of(endpoint: Endpoint, secret: Option<&str>) -> Self {
        Self {
            endpoint,
            secret: secret.map(|s| format!("{SECRET_PREFIX}{s}")),
        }
    }
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://…` (http and internal hosts only outside production).
    pub url: String,
    /// Event types, 1 to 20 of `email.sent`, `email.delivered`, `email.bounced`,
    /// `email.complained`, `email.opened`, `email.clicked`, `email.delivery_delayed`,
    /// `email.rejected`, `email.failed`, `email.suppressed`, `suppression.created`,
    /// `suppression.removed`, `compliance.paused`, `compliance.resumed`.
    #[schema(value_type = Vec<herald_shared::webhooks::EventType>, min_items = 1, max_items = 20)]
    pub events: Vec<String>,
    /// A note (at most 500 characters).
    pub description: Option<String>,
    /// Put full recipient addresses in payloads (default false: masked).
    #[serde(default)]
    pub include_addresses: bool,
}

/// A change (absent fields stay as they are).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    /// A new URL (checked as on creation).
    pub url: Option<String>,
    /// New event types.
    #[schema(value_type = Option<Vec<herald_shared::webhooks::EventType>>, min_items = 1, max_items = 20)]
    pub events: Option<Vec<String>>,
    /// A new note; an empty one clears it.
    pub description: Option<String>,
    /// Full addresses in payloads.
    pub include_addresses: Option<bool>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Issue a new secret; the old one keeps signing beside it for 24 hours.
    #[serde(default)]
    pub rotate_secret: bool,
}

fn check_events(events: &[String]) -> Result<Vec<EventType>, ApiError> {
    let mut out: Vec<EventType> = Vec::new();
    for e in events {
        let Some(t) = EventType::parse(e) else {
            return Err(ApiError::Validation(format!(
                "unknown event type {e:?}; known: {}",
                EventType::names().join(", ")
            )));
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() || out.len() > 20 {
        return Err(ApiError::Validation(
            "events must name 1 to 20 event types".into(),
        ));
    }
    Ok(out)
}

fn check_description(d: Option<&str>) -> Result<Option<&str>, ApiError> {
    let d = d.map(str::trim).filter(|d| !d.is_empty());
    if d.is_some_and(|d| d.chars().count() > 500) {
        return Err(ApiError::Validation(
            "description is longer than 500 characters".into(),
        ));
    }
    Ok(d)
}

async fn check_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    if url.len() > 2048 {
        return Err(ApiError::Validation("url is longer than 2048 bytes".into()));
    }
    herald_shared::outbound::check_url(url, state.config.webhook_urls)
        .await
        .map(|u| u.to_string())
        .map_err(|e| ApiError::Validation(e.to_string()))
}

fn fresh_secret() -> Result<String, ApiError> {
    webhooks::new_secret().map_err(|e| ApiError::Internal(format!("no randomness: {e}")))
}

/// Registers an endpoint; the answer carries its signing secret, shown this once. Events of its
/// types are POSTed to it signed (Standard Webhooks), retried for about three days
/// (docs/webhooks.md).
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "createWebhook", tag = "webhooks", security(("bearer" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Registered, with its secret", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Bad URL (http or an internal host in production), unknown event type", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    body: JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let req = body.value;
    let events = check_events(&req.events)?;
    let description = check_description(req.description.as_deref())?;
    let url = check_url(&state, &req.url).await?;
    let secret = fresh_secret()?;
    let mut conn = state.db.acquire().await?;
    let row = webhooks::create(
        &mut conn,
        &NewEndpoint {
            url: &url,
            description,
            events: &events,
            include_addresses: req.include_addresses,
            secret: &secret,
        },
    )
    .await?;
    tracing::info!(webhook = %row.id, "webhook endpoint registered");
    Ok((
        StatusCode::CREATED,
        Json(WebhookView::of(row, Some(&secret))),
    ))
}

/// Every endpoint (secrets are never listed).
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks", security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoints", body = Vec<WebhookView>),
        (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let rows = webhooks::list(&mut conn).await?;
    Ok(Json(
        rows.into_iter().map(|e| WebhookView::of(e, None)).collect(),
    ))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("webhook"))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown endpoint", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = parse_id(&id)?;
    let mut conn = state.db.acquire().await?;
    let row = webhooks::find(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(Json(WebhookView::of(row, None)))
}

/// Changes an endpoint: URL, events, note, addresses, enabled; `rotate_secret` issues a new secret
/// (in this answer only) while the old one keeps signing for 24 hours.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", operation_id = "updateWebhook", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "Changed (with the new secret when rotated)", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown endpoint", body = ErrorBody),
        (status = 422, description = "Bad URL or event type", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = parse_id(&id)?;
    let req = body.value;
    let events = req.events.as_deref().map(check_events).transpose()?;
    let description = req
        .description
        .as_deref()
        .map(|d| check_description(Some(d)))
        .transpose()?;
    let url = match req.url.as_deref() {
        Some(url) => Some(check_url(&state, url).await?),
        None => None,
    };
    let secret = req.rotate_secret.then(fresh_secret).transpose()?;
    let mut conn = state.db.acquire().await?;
    let row = webhooks::update(
        &mut conn,
        id,
        &Change {
            url: url.as_deref(),
            description,
            events: events.as_deref(),
            include_addresses: req.include_addresses,
            enabled: req.enabled,
            new_secret: secret.as_deref(),
        },
    )
    .await?
    .ok_or(ApiError::NotFound("webhook"))?;
    if secret.is_some() {
        tracing::info!(webhook = %id, "webhook secret rotated");
    }
    Ok(Json(WebhookView::of(row, secret.as_deref())))
}

/// Deletes an endpoint.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown endpoint", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let mut conn = state.db.acquire().await?;
    if webhooks::delete(&mut conn, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}

/// Paging of an endpoint's deliveries.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// The last id of the previous page.
    pub before: Option<Uuid>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// An endpoint's deliveries, newest first, each with its attempts (status code, latency, error,
/// the first bytes of the answer).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id"), DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries", body = Vec<Object>),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown endpoint", body = ErrorBody),
        (status = 422, description = "Bad paging", body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<webhooks::DeliveryView>>, ApiError> {
    let id = parse_id(&id)?;
    let axum::extract::Query(q) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Validation("limit must be 1 to 200".into()));
    }
    let mut conn = state.db.acquire().await?;
    webhooks::find(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(Json(
        webhooks::deliveries(&mut conn, id, q.before, limit).await?,
    ))
}

/// Sends a delivery again, with the same `webhook-id`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery}/retry", operation_id = "redeliverWebhook", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id"), ("delivery" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Queued again"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown endpoint or delivery", body = ErrorBody)))]
pub async fn redeliver(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let delivery: Uuid = delivery
        .parse()
        .map_err(|_| ApiError::NotFound("delivery"))?;
    let mut conn = state.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !webhooks::redeliver(&mut tx, id, delivery).await? {
        return Err(ApiError::NotFound("delivery"));
    }
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}
