//! Verification and password-reset tokens: 32 random bytes, hex in the link, SHA-256 hex stored.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a verification link works.
pub const VERIFICATION_LIFETIME: chrono::Duration = chrono::Duration::hours(24);
/// How long a password-reset link works.
pub const RESET_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

/// A freshly generated token: the raw value goes only into the email link.
#[derive(Clone)]
pub struct IssuedToken {
    /// The raw token (64 hex characters). Never store or log it.
    pub raw: String,
    /// SHA-256 of the raw token, hex: the only form stored.
    pub hash: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Token-layer failures.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// Storing the hash failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Generates a token from the operating system's CSPRNG.
pub fn generate() -> Result<IssuedToken, TokenError> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    let raw = hex::encode(bytes);
    let hash = sha256_hex(&raw);
    Ok(IssuedToken { raw, hash })
}

/// SHA-256 of a string, lower-case hex.
pub fn sha256_hex(input: &str) -> String {
    hex::encode(Sha256::digest(input.as_bytes()))
}

/// Which table a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `verification_tokens`, 24 hours.
    Verification,
    /// `password_reset_tokens`, 1 hour, single use.
    PasswordReset,
}

/// Issues a token for a user: stores its hash and returns the raw value with the row id.
pub async fn issue(
    conn: &mut sqlx::PgConnection,
    kind: TokenKind,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(Uuid, IssuedToken), TokenError> {
    let token = generate()?;
    let id = match kind {
        TokenKind::Verification => {
            sqlx::query_scalar!(
                "INSERT INTO verification_tokens (user_id, token_hash, expires_at, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                user_id,
                token.hash,
                now + VERIFICATION_LIFETIME,
                now
            )
            .fetch_one(&mut *conn)
            .await?
        }
        TokenKind::PasswordReset => {
            sqlx::query_scalar!(
                "INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                user_id,
                token.hash,
                now + RESET_LIFETIME,
                now
            )
            .fetch_one(&mut *conn)
            .await?
        }
    };
    Ok((id, token))
}

/// Deletes a token issued for an attempt whose email was never accepted.
pub async fn revoke(
    conn: &mut sqlx::PgConnection,
    kind: TokenKind,
    id: Uuid,
) -> Result<(), TokenError> {
    match kind {
        TokenKind::Verification => {
            sqlx::query!("DELETE FROM verification_tokens WHERE id = $1", id)
                .execute(&mut *conn)
                .await?;
        }
        TokenKind::PasswordReset => {
            sqlx::query!("DELETE FROM password_reset_tokens WHERE id = $1", id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Which tokens [`delete_expired`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Refresh tokens past `expires_at`.
    Refresh,
    /// Verification tokens past `expires_at`.
    Verification,
    /// Reset tokens past `expires_at`.
    Reset,
    /// Reset tokens used before the bound (few, short-lived: no index serves this pass).
    UsedReset,
}

/// Deletes up to `limit` tokens of one kind whose time is before `before`; returns how many.
pub async fn delete_expired(
    pool: &sqlx::PgPool,
    kind: Expired,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = match kind {
        Expired::Refresh => {
            sqlx::query!(
                "WITH doomed AS (SELECT id FROM refresh_tokens WHERE expires_at < $1
                             ORDER BY expires_at LIMIT $2)
             DELETE FROM refresh_tokens t USING doomed WHERE t.id = doomed.id",
                before,
                limit
            )
            .execute(pool)
            .await?
        }
        Expired::Verification => {
            sqlx::query!(
                "WITH doomed AS (SELECT id FROM verification_tokens WHERE expires_at < $1
                             ORDER BY expires_at LIMIT $2)
             DELETE FROM verification_tokens t USING doomed WHERE t.id = doomed.id",
                before,
                limit
            )
            .execute(pool)
            .await?
        }
        Expired::Reset => {
            sqlx::query!(
                "WITH doomed AS (SELECT id FROM password_reset_tokens WHERE expires_at < $1
                             ORDER BY expires_at LIMIT $2)
             DELETE FROM password_reset_tokens t USING doomed WHERE t.id = doomed.id",
                before,
                limit
            )
            .execute(pool)
            .await?
        }
        Expired::UsedReset => {
            sqlx::query!(
                "WITH doomed AS (SELECT id FROM password_reset_tokens WHERE used_at < $1 LIMIT $2)
             DELETE FROM password_reset_tokens t USING doomed WHERE t.id = doomed.id",
                before,
                limit
            )
            .execute(pool)
            .await?
        }
    };
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_hex_characters_and_hash_to_their_stored_form() {
        let a = generate().expect("token");
        let b = generate().expect("token");
        assert_eq!(a.raw.len(), 64);
        assert!(a.raw.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.raw, b.raw);
        assert_eq!(a.hash, sha256_hex(&a.raw));
        assert!(
            !format!("{a:?}").contains(&a.raw),
            "Debug must not show the raw token"
        );
    }
}
