//! `/admin/webhooks`: the endpoints and their state, one endpoint's recent deliveries with their
//! attempts, and redelivery.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use herald_shared::webhooks;
use serde::Deserialize;
use serde_json::json;
use sqlx::Connection;

use super::{Action, Operator, PageError, answer, checked_form, message, unavailable};
use crate::AppState;

/// Deliveries shown for the chosen endpoint.
const DELIVERIES_SHOWN: i64 = 25;

/// The page's query: which endpoint's deliveries to show (the first one by default).
#[derive(Debug, Default, Deserialize)]
pub struct WebhooksQuery {
    /// Endpoint id.
    pub endpoint: Option<uuid::Uuid>,
}

/// `GET /admin/webhooks`: every endpoint with its state; the chosen one's recent deliveries.
pub async fn webhooks_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(q): Query<WebhooksQuery>,
) -> Response {
    let built = async {
        let mut conn = state.db.acquire().await?;
        let endpoints = webhooks::list(&mut conn).await?;
        let selected = match q.endpoint {
            Some(id) => endpoints.iter().find(|e| e.id == id),
            None => endpoints.first(),
        };
        let deliveries = match selected {
            Some(e) => webhooks::deliveries(&mut conn, e.id, None, DELIVERIES_SHOWN).await?,
            None => Vec::new(),
        };
        Ok::<_, PageError>(json!({
            "title": "Webhooks", "nav": "webhooks", "csrf": csrf,
            "endpoints": endpoints, "selected": selected, "deliveries": deliveries,
        }))
    }
    .await;
    answer("webhooks.html", built)
}

/// `POST /admin/webhooks/{id}/deliveries/{delivery}/retry`: sends a delivery again (receivers
/// dedupe on its unchanged `webhook-id`).
pub async fn redeliver(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((endpoint, delivery)): Path<(uuid::Uuid, uuid::Uuid)>,
    form: Result<Form<Action>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Err(refused) = checked_form(&state, &headers, form).await {
        return refused.into_response();
    }
    let done = async {
        let mut conn = state.db.acquire().await?;
        let mut tx = conn.begin().await?;
        let found = webhooks::redeliver(&mut tx, endpoint, delivery).await?;
        tx.commit().await?;
        Ok::<_, PageError>(found)
    }
    .await;
    match done {
        Ok(true) => {
            tracing::info!(%endpoint, %delivery, "webhook redelivered from the console");
            Redirect::to(&format!("/admin/webhooks?endpoint={endpoint}")).into_response()
        }
        Ok(false) => message(
            StatusCode::NOT_FOUND,
            "No such delivery for that endpoint.",
            Some(("/admin/webhooks", "Back to the webhooks")),
        ),
        Err(error) => unavailable(&error),
    }
}
