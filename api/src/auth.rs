//! Bearer-token authentication for `/v1`: several tokens (so one can be rotated without
//! downtime), each with a scope, compared in constant time without leaking their lengths.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read emails and jobs (`GET /v1/emails…`, `GET /v1/jobs…`), nothing else.
    Read,
    /// Send mail and follow it: `POST /v1/emails`, rescheduling and cancelling an email, the
    /// verification and reset flows, and everything `Read` may.
    Send,
    /// Everything, the dashboard included.
    Admin,
}

/// One configured token: its SHA-256 (compared instead of the token, so that comparisons take the
/// same time whatever the lengths) and its scope.
#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    /// [`fingerprint`] of the digest, kept so session checks need no hashing.
    fingerprint: String,
    scope: Scope,
}

/// The tokens the API accepts: `API_TOKENS` merged with `API_TOKEN`.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The shortest token accepted.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Why a token list cannot be used; the message never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// An entry shorter than [`MIN_TOKEN_CHARS`].
    #[error("entry {0} is shorter than 32 characters")]
    TooShort(usize),
}

/// The entries of an `API_TOKENS` list: `TOKEN`, `read:TOKEN`, `send:TOKEN` or `admin:TOKEN`,
/// comma separated.
pub fn list_entries(list: &str) -> impl Iterator<Item = (Scope, &str)> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|raw| match raw.split_once(':') {
            Some(("read", t)) => (Scope::Read, t),
            Some(("send", t)) => (Scope::Send, t),
            Some(("admin", t)) => (Scope::Admin, t),
            _ => (Scope::Admin, raw),
        })
}

impl Tokens {
    /// Adds a token with full access.
    pub fn push(&mut self, token: &str, scope: Scope) {
        let digest = digest(token.as_bytes());
        self.entries.push(Entry {
            fingerprint: fingerprint(&digest),
            digest,
            scope,
        });
    }

    /// Parses `API_TOKENS`: comma-separated `TOKEN` (full access), `send:TOKEN` or `admin:TOKEN`.
    pub fn parse_list(&mut self, list: &str) -> Result<(), TokenError> {
        for (i, (scope, token)) in list_entries(list).enumerate() {
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(TokenError::TooShort(i + 1));
            }
            self.push(token, scope);
        }
        Ok(())
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scope of `presented`, if it is one of the tokens. Every entry is compared, in constant
    /// time, whichever matches.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let d = digest(presented.as_bytes());
        let mut found: Option<Scope> = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&d)) {
                found = found.max(Some(e.scope));
            }
        }
        found
    }

    /// A short, stable fingerprint of the token that has `scope` and matches `presented` (for
    /// sessions: removing the token revokes them). `None` if it is not an admin token.
    pub fn admin_fingerprint(&self, presented: &str) -> Option<String> {
        (self.scope_of(presented) == Some(Scope::Admin))
            .then(|| fingerprint(&digest(presented.as_bytes())))
    }

    /// Whether an admin token with this fingerprint is still configured.
    pub fn has_admin_fingerprint(&self, fp: &str) -> bool {
        let mut found = false;
        for e in &self.entries {
            let same = bool::from(e.fingerprint.as_bytes().ct_eq(fp.as_bytes()));
            found |= same && e.scope == Scope::Admin;
        }
        found
    }
}

/// The first 8 bytes of a token's digest's digest, hex: names a token without revealing it.
fn fingerprint(token_digest: &[u8; 32]) -> String {
    hex::encode(&digest(token_digest)[..8])
}

/// The token of an `Authorization: Bearer …` header (scheme matched case-insensitively).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who made an admin request, for the record: `token:<fingerprint>` (never the token).
pub fn caller(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    bearer(headers)
        .and_then(|t| state.config.tokens.admin_fingerprint(t))
        .map_or_else(|| "unknown".to_owned(), |fp| format!("token:{fp}"))
}

async fn require(
    state: &AppState,
    needed: Scope,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(request.headers()).and_then(|t| state.config.tokens.scope_of(t)) {
        None => Err(ApiError::Unauthorized),
        Some(scope) if scope < needed => Err(ApiError::Forbidden),
        Some(_) => Ok(next.run(request).await),
    }
}

/// Rejects the request with 401 unless it carries a valid bearer token (any scope).
pub async fn require_read(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Read, request, next).await
}

/// 401 without a valid token, 403 `forbidden` for a read-only token.
pub async fn require_send(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Send, request, next).await
}

/// 401 without a valid token, 403 `forbidden` for a token without the admin scope.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Admin, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";
    const C: &str = "ffffffffffffffffffffffffffffffff";

    #[test]
    fn entries_carry_their_scope_and_short_ones_are_refused() {
        let mut t = Tokens::default();
        t.parse_list(&format!("{A}, send:{B} ,admin:{C}"))
            .expect("valid");
        let mut r = Tokens::default();
        r.parse_list(&format!("read:{A}")).expect("valid");
        assert_eq!(r.scope_of(A), Some(Scope::Read));
        assert_eq!(t.scope_of(A), Some(Scope::Admin));
        assert_eq!(t.scope_of(B), Some(Scope::Send));
        assert_eq!(t.scope_of(C), Some(Scope::Admin));
        assert_eq!(t.scope_of(&format!("send:{B}")), None);
        assert_eq!(t.scope_of(""), None);
        assert_eq!(t.scope_of(&A[..31]), None);
        assert_eq!(
            Tokens::default().parse_list(&format!("{A},send:short")),
            Err(TokenError::TooShort(2))
        );
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_must_be_there() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
            h
        };
        for ok in [
            format!("Bearer {A}"),
            format!("bearer {A}"),
            format!("BEARER  {A} "),
        ] {
            assert_eq!(bearer(&headers(&ok)), Some(A), "{ok}");
        }
        for bad in ["Bearer", "Bearer ", &format!("Basic {A}"), A] {
            assert_eq!(bearer(&headers(bad)), None, "{bad}");
        }
    }

    #[test]
    fn fingerprints_name_admin_tokens_only_and_follow_removal() {
        let mut t = Tokens::default();
        t.parse_list(&format!("admin:{A},send:{B}")).expect("valid");
        let fp = t.admin_fingerprint(A).expect("admin");
        assert!(t.has_admin_fingerprint(&fp));
        assert_eq!(t.admin_fingerprint(B), None);
        let mut rotated = Tokens::default();
        rotated.parse_list(C).expect("valid");
        assert!(!rotated.has_admin_fingerprint(&fp));
        assert!(!fp.contains(&A[..8]));
    }
}
