//! Account emails: verification and password reset. Tokens are issued by the worker at send time.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_shared::address;
use herald_shared::email::{self, Category, EmailContent, EmailJob};
use herald_shared::jobs::EnqueueOptions;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::routes::emails::Enqueued;

/// Queues the email-verification message for a user.
#[utoipa::path(post, path = "/v1/users/{user_id}/verification-email", operation_id = "sendVerificationEmail", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "User id (UUID)")),
    responses(
        (status = 202, description = "Queued", body = Enqueued),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown or inactive user", body = ErrorBody),
        (status = 409, description = "Already verified, or address suppressed", body = ErrorBody)))]
pub async fn verification_email(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<Enqueued>), ApiError> {
    let user_id: Uuid = user_id.parse().map_err(|_| ApiError::NotFound("user"))?;
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let user = herald_shared::users::verification(&mut tx, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    if user.verified {
        return Err(ApiError::AlreadyVerified);
    }
    if email::ledger::is_suppressed(&mut tx, &user.email, Category::Transactional).await? {
        return Err(ApiError::RecipientSuppressed("transactional"));
    }
    let job = EmailJob {
        envelope: Default::default(),
        to: user.email,
        category: Category::Transactional,
        content: EmailContent::Verification { user_id },
    };
    let options = EnqueueOptions {
        max_attempts: state.config.email_max_attempts,
        run_at: None,
        idempotency_key: None,
    };
    let job_id = email::enqueue(&mut tx, &job, options).await?.to_string();
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(Enqueued::new(job_id))))
}

/// A password-reset request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    /// The account's address.
    pub email: String,
}

/// The same answer whether or not the account exists.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Always `accepted`.
    pub status: &'static str,
}

/// Queues a password-reset email if an active account has this address; answers the same either way.
#[utoipa::path(post, path = "/v1/password-resets", operation_id = "requestPasswordReset", tag = "users", security(("bearer" = [])),
    request_body = PasswordResetRequest,
    responses(
        (status = 202, description = "Accepted (whether or not the account exists)", body = Accepted),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "Not an email address", body = ErrorBody)))]
pub async fn password_reset(
    State(state): State<AppState>,
    body: JsonBody<PasswordResetRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let email_addr =
        address::validate(&body.value.email).map_err(|e| ApiError::Validation(e.to_string()))?;
    let mut conn = state.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let user = herald_shared::users::active_by_email(&mut tx, &email_addr).await?;
    if let Some((user_id, user_email)) = user {
        // A suppressed address gets nothing, silently: answering differently would reveal the account.
        if !email::ledger::is_suppressed(&mut tx, &user_email, Category::Transactional).await? {
            let job = EmailJob {
                envelope: Default::default(),
                to: user_email,
                category: Category::Transactional,
                content: EmailContent::PasswordReset { user_id },
            };
            let options = EnqueueOptions {
                max_attempts: state.config.email_max_attempts,
                run_at: None,
                idempotency_key: None,
            };
            email::enqueue(&mut tx, &job, options).await?;
        }
    }
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { status: "accepted" })))
}
