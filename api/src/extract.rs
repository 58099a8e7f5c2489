//! A JSON body extractor whose every failure is an [`ApiError`], with the raw bytes kept.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest body any route accepts but `POST /v1/emails`.
pub const BODY_LIMIT: usize = 256 * 1024;

/// Largest body of `POST /v1/emails`: 10 MB of attachments as base64 (a third larger) and the
/// rest of the email, with room for the attachment check to answer 422 naming the field.
pub const EMAIL_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A JSON body parsed into `T` (unknown fields are refused by `T`'s serde attributes).
#[derive(Debug)]
pub struct JsonBody<T> {
    /// The parsed value.
    pub value: T,
    /// The bytes as received, for idempotency hashing.
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json")
                    || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        let value = parse(&raw)?;
        Ok(Self { value, raw })
    }
}

/// Parses JSON, telling syntax errors (400) from shape errors (422).
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Validation(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })
}
