//! Bearer-token authentication for `/v1`, compared in constant time.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// Rejects the request with 401 unless it carries `Authorization: Bearer <API_TOKEN>`.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = state.config.token.expose().as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}
