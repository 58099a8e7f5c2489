//! Signing secrets and signatures (Standard Webhooks).

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};

/// How long a rotated-out secret still signs, beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);

/// The prefix of a signing secret as Standard Webhooks writes it.
pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh signing secret: 24 random bytes, base64 (store this; show it with [`SECRET_PREFIX`]).
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut key = [0u8; 24];
    getrandom::fill(&mut key)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// The Standard Webhooks signature of one message under one secret (base64 key, with or without
/// `whsec_`): `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`. `None` for a key that is
/// not base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .ok()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    ))
}

/// Signing secrets, kept out of `Debug` output.
#[derive(Clone, Default)]
pub struct Secrets(pub Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// The current secret, and the previous one while its overlap lasts.
    pub(crate) fn of(
        current: String,
        previous: Option<String>,
        until: Option<DateTime<Utc>>,
    ) -> Self {
        let mut out = vec![current];
        if let (Some(previous), Some(until)) = (previous, until)
            && until > Utc::now()
        {
            out.push(previous);
        }
        Self(out)
    }

    /// The `webhook-signature` header: one `v1,…` per secret, space-separated.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0
            .iter()
            .filter_map(|s| sign(s, id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The worked example of the Standard Webhooks specification (standardwebhooks.com).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("whsec_!!!", "id", 1, b""), None);
    }
}
