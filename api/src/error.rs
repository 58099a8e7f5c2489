//! The API's one error type: JSON `{"error": {"code", "message"}}` with a stable code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Every way a request can fail, each with its HTTP status and stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// A valid token whose scope does not cover the route (a `send` token on an admin route).
    #[error("this token's scope does not allow this request")]
    Forbidden,
    /// The resource does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but not what the route takes (unknown or missing fields, bad values).
    #[error("{0}")]
    Validation(String),
    /// The Content-Type is not application/json.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body is larger than the limit.
    #[error("the body is larger than 256 KiB")]
    PayloadTooLarge,
    /// The named template does not exist.
    #[error("{0}")]
    UnknownTemplate(String),
    /// The template needs data the request lacks.
    #[error("{0}")]
    TemplateData(String),
    /// A template's sources do not parse, or do not render against their sample data.
    #[error("{0}")]
    TemplateInvalid(String),
    /// Queued emails still use the template (`?force=true` deletes it anyway).
    #[error("{0} queued emails use this template; wait, or delete with ?force=true")]
    TemplateInUse(i64),
    /// The recipient is suppressed for this category.
    #[error("the recipient is suppressed for {0} email")]
    RecipientSuppressed(&'static str),
    /// Every recipient of the email is suppressed for its category (listed in `suppressed`).
    #[error("every recipient is suppressed for {0} email")]
    RecipientsSuppressed(&'static str, Vec<String>),
    /// The Idempotency-Key was used with another body.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyConflict,
    /// The user's address is already verified.
    #[error("the user's email address is already verified")]
    AlreadyVerified,
    /// The job is not in a state that allows the action.
    #[error("{0}")]
    InvalidJobState(String),
    /// SES accepted the email already; retrying would send it twice.
    #[error("the email was sent already; retrying would send it twice")]
    AlreadySent,
    /// The service cannot serve yet (database down or schema behind).
    #[error("{0}")]
    NotReady(String),
    /// The database cannot be reached right now (restart, failover, pool exhausted): retry.
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable(String),
    /// The request ran longer than `API_REQUEST_TIMEOUT_SECS`.
    #[error("the request took too long")]
    Timeout,
    /// Anything else; the cause is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status and the stable code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnknownTemplate(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_template"),
            Self::TemplateData(_) => (StatusCode::UNPROCESSABLE_ENTITY, "template_data_invalid"),
            Self::TemplateInvalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "template_invalid"),
            Self::TemplateInUse(_) => (StatusCode::CONFLICT, "template_in_use"),
            Self::RecipientSuppressed(_) | Self::RecipientsSuppressed(..) => {
                (StatusCode::CONFLICT, "recipient_suppressed")
            }
            Self::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency_conflict"),
            Self::AlreadyVerified => (StatusCode::CONFLICT, "already_verified"),
            Self::InvalidJobState(_) => (StatusCode::CONFLICT, "invalid_job_state"),
            Self::AlreadySent => (StatusCode::CONFLICT, "already_sent"),
            Self::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Every stable code with its status: the `code` of an error body is one of these (the
    /// OpenAPI document lists them as an enum; a test checks every variant's code is here).
    pub const CODES: [(&'static str, u16); 20] = [
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not_found", 404),
        ("malformed_json", 400),
        ("validation_failed", 422),
        ("unsupported_media_type", 415),
        ("payload_too_large", 413),
        ("unknown_template", 422),
        ("template_data_invalid", 422),
        ("template_invalid", 422),
        ("template_in_use", 409),
        ("recipient_suppressed", 409),
        ("idempotency_conflict", 409),
        ("already_verified", 409),
        ("invalid_job_state", 409),
        ("already_sent", 409),
        ("not_ready", 503),
        ("database_unavailable", 503),
        ("request_timeout", 503),
        ("internal", 500),
    ];

    /// Wraps an internal failure; the text is logged, not shown.
    pub fn internal(err: impl std::error::Error + 'static) -> Self {
        Self::Internal(herald_shared::telemetry::error_chain(&err))
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a human-readable message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `recipient_suppressed`.
    #[schema(schema_with = code_schema)]
    pub code: String,
    /// Explanation for people.
    pub message: String,
    /// The suppressed recipients, when every recipient of an email is suppressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<Vec<String>>,
}

/// The `code` schema: one of [`ApiError::CODES`], each listed with its status.
fn code_schema() -> utoipa::openapi::Object {
    let listed: Vec<String> = ApiError::CODES
        .iter()
        .map(|(code, status)| format!("`{code}` ({status})"))
        .collect();
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ApiError::CODES.iter().map(|(code, _)| *code)))
        .description(Some(format!(
            "Stable, machine-readable code: {}.",
            listed.join(", ")
        )))
        .build()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            Self::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            Self::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable")
            }
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                suppressed: match &self {
                    Self::RecipientsSuppressed(_, list) => Some(list.clone()),
                    _ => None,
                },
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if herald_shared::db::is_unavailable(&err) {
            Self::DatabaseUnavailable(herald_shared::telemetry::error_chain(&err))
        } else {
            Self::internal(err)
        }
    }
}

impl ApiError {
    /// A template store failure met while sending: an unknown template, data it cannot render,
    /// or the database.
    pub fn from_template_store(err: herald_shared::email::templates::store::StoreError) -> Self {
        use herald_shared::email::templates::{TemplateError, store::StoreError};
        match err {
            StoreError::Template(TemplateError::Unknown(name)) => {
                Self::UnknownTemplate(format!("unknown template {name}"))
            }
            StoreError::Template(e) => Self::TemplateData(e.to_string()),
            StoreError::Db(e) => e.into(),
        }
    }
}

/// A grouped enqueue's failure, answered as the same failure alone would be.
impl From<herald_shared::email::group::GroupError> for ApiError {
    fn from(err: herald_shared::email::group::GroupError) -> Self {
        use herald_shared::email::group::GroupError;
        match err {
            GroupError::Unavailable(text) => Self::DatabaseUnavailable(text),
            GroupError::Failed(text) => Self::Internal(text),
        }
    }
}

impl From<herald_shared::jobs::JobError> for ApiError {
    fn from(err: herald_shared::jobs::JobError) -> Self {
        match err.as_sqlx() {
            Some(db) if herald_shared::db::is_unavailable(db) => {
                Self::DatabaseUnavailable(herald_shared::telemetry::error_chain(&err))
            }
            _ => Self::internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn every_error_s_code_and_status_are_documented_and_nothing_else_is() {
        let all = [
            ApiError::Unauthorized,
            ApiError::Forbidden,
            ApiError::NotFound("thing"),
            ApiError::MalformedJson(String::new()),
            ApiError::Validation(String::new()),
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge,
            ApiError::UnknownTemplate(String::new()),
            ApiError::TemplateData(String::new()),
            ApiError::TemplateInvalid(String::new()),
            ApiError::TemplateInUse(1),
            ApiError::RecipientSuppressed("marketing"),
            ApiError::RecipientsSuppressed("marketing", Vec::new()),
            ApiError::IdempotencyConflict,
            ApiError::AlreadyVerified,
            ApiError::InvalidJobState(String::new()),
            ApiError::AlreadySent,
            ApiError::NotReady(String::new()),
            ApiError::DatabaseUnavailable(String::new()),
            ApiError::Timeout,
            ApiError::Internal(String::new()),
        ];
        let mut seen: Vec<(&str, u16)> = all
            .iter()
            .map(|e| {
                let (status, code) = e.parts();
                (code, status.as_u16())
            })
            .collect();
        for pair in &seen {
            assert!(ApiError::CODES.contains(pair), "{pair:?} is not documented");
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            ApiError::CODES.len(),
            "a documented code no error gives"
        );
        // No wildcard: a new variant does not compile until it is added to the list above.
        for e in &all {
            match e {
                ApiError::Unauthorized
                | ApiError::Forbidden
                | ApiError::NotFound(_)
                | ApiError::MalformedJson(_)
                | ApiError::Validation(_)
                | ApiError::UnsupportedMediaType
                | ApiError::PayloadTooLarge
                | ApiError::UnknownTemplate(_)
                | ApiError::TemplateData(_)
                | ApiError::TemplateInvalid(_)
                | ApiError::TemplateInUse(_)
                | ApiError::RecipientSuppressed(_)
                | ApiError::RecipientsSuppressed(..)
                | ApiError::IdempotencyConflict
                | ApiError::AlreadyVerified
                | ApiError::InvalidJobState(_)
                | ApiError::AlreadySent
                | ApiError::NotReady(_)
                | ApiError::DatabaseUnavailable(_)
                | ApiError::Timeout
                | ApiError::Internal(_) => {}
            }
        }
    }
}
