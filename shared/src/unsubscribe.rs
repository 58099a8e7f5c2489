//! Signed one-click unsubscribe links (RFC 8058): a token names the address, the category and
//! when it was issued, and carries an HMAC-SHA256 of them, so the public listener verifies it
//! without a database lookup. Tokens never expire (old mail must keep working); rotating
//! `UNSUBSCRIBE_SECRETS` keeps old links valid while an old secret stays in the list.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use crate::config::{AppEnv, ConfigError, Env, parse_or};
use crate::email::Category;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest token accepted: a 254-byte address makes one of about 400 characters.
const MAX_TOKEN_CHARS: usize = 512;

/// Token format version, the payload's first byte.
const VERSION: u8 = 1;

/// What a genuine token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The address, normalised (trimmed, lower case).
    pub email: String,
    /// The category it unsubscribes from.
    pub category: Category,
    /// When the link was made.
    pub issued_at: DateTime<Utc>,
}

/// Signs with the first secret, verifies with any.
pub struct Signer {
    keys: Vec<ring::hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        write!(f, "Signer({} secrets)", self.keys.len())
    }
}

impl Signer {
    /// From `UNSUBSCRIBE_SECRETS`'s value: a comma list, each entry at least 32 bytes.
    pub fn from_list(list: &str) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for (n, secret) in list.split(',').map(str::trim).enumerate() {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::Invalid {
                    var: "UNSUBSCRIBE_SECRETS",
                    reason: format!(
                        "entry {} is shorter than {MIN_SECRET_BYTES} bytes (each secret must be; the first signs, all verify)",
                        n + 1
                    ),
                });
            }
            keys.push(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret.as_bytes(),
            ));
        }
        Ok(Self { keys })
    }

    /// A URL-safe token for `email` (normalised here) in `category`, issued at `issued_at`.
    pub fn sign(&self, email: &str, category: Category, issued_at: DateTime<Utc>) -> String {
        let email = crate::address::normalize(email);
        let mut payload = Vec::with_capacity(10 + email.len());
        payload.push(VERSION);
        payload.push(category_byte(category));
        payload.extend_from_slice(&issued_at.timestamp().to_be_bytes());
        payload.extend_from_slice(email.as_bytes());
        // `keys` is never empty: `from_list` makes one per entry of a list of at least one.
        let tag = ring::hmac::sign(&self.keys[0], &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// What `token` says, if one of the secrets signed it (compared in constant time) and it is
    /// well formed; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claim> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !self
            .keys
            .iter()
            .any(|key| ring::hmac::verify(key, &payload, &tag).is_ok())
        {
            return None;
        }
        let [version, category, rest @ ..] = payload.as_slice() else {
            return None;
        };
        if *version != VERSION || rest.len() < 8 {
            return None;
        }
        let category = match category {
            b'm' => Category::Marketing,
            b't' => Category::Transactional,
            _ => return None,
        };
        let (issued, email) = rest.split_at(8);
        let issued = i64::from_be_bytes(issued.try_into().ok()?);
        let email = std::str::from_utf8(email).ok()?.to_owned();
        Some(Claim {
            email,
            category,
            issued_at: DateTime::from_timestamp(issued, 0)?,
        })
    }
}

fn category_byte(category: Category) -> u8 {
    match category {
        Category::Marketing => b'm',
        Category::Transactional => b't',
    }
}

/// Marketing mail's settings, shared by the API (which verifies links) and the worker (which
/// makes them).
#[derive(Debug)]
pub struct Marketing {
    /// `UNSUBSCRIBE_SECRETS`.
    pub signer: Signer,
    /// `PUBLIC_URL`: the external base of the public listener, without a trailing slash.
    pub public_url: String,
    /// `UNSUBSCRIBE_MAILTO`: an address for the `mailto:` form of `List-Unsubscribe`, if any.
    pub mailto: Option<String>,
}

impl Marketing {
    /// The unsubscribe link for `email` in `category`, made now.
    pub fn link(&self, email: &str, category: Category) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.public_url,
            self.signer.sign(email, category, Utc::now())
        )
    }

    /// Reads the marketing settings: `None` when `MARKETING_EMAIL_ENABLED=false`; otherwise
    /// `UNSUBSCRIBE_SECRETS` is required, `PUBLIC_URL` defaults to `http://127.0.0.1:8081` in
    /// development and must be set to an `https://` URL in production.
    pub fn from_source(env: &impl Env, app_env: AppEnv) -> Result<Option<Self>, ConfigError> {
        if !parse_or(env, "MARKETING_EMAIL_ENABLED", true)? {
            return Ok(None);
        }
        let secrets = env.get("UNSUBSCRIBE_SECRETS").ok_or(ConfigError::Invalid {
            var: "UNSUBSCRIBE_SECRETS",
            reason: "required while MARKETING_EMAIL_ENABLED=true (the default): a comma list of \
                     secrets of at least 32 bytes; or set MARKETING_EMAIL_ENABLED=false"
                .into(),
        })?;
        let signer = Signer::from_list(&secrets)?;
        let public_url = match env.get("PUBLIC_URL") {
            Some(url) => url.trim().trim_end_matches('/').to_owned(),
            None if app_env.is_production() => {
                return Err(ConfigError::Missing { var: "PUBLIC_URL" });
            }
            None => "http://127.0.0.1:8081".to_owned(),
        };
        let scheme_ok = if app_env.is_production() {
            public_url.starts_with("https://")
        } else {
            public_url.starts_with("https://") || public_url.starts_with("http://")
        };
        if !scheme_ok || public_url.contains(char::is_whitespace) || public_url.contains('?') {
            return Err(ConfigError::Invalid {
                var: "PUBLIC_URL",
                reason: if app_env.is_production() {
                    "must be an https:// URL when APP_ENV=production".into()
                } else {
                    "must be an http:// or https:// URL without a query".into()
                },
            });
        }
        let mailto = env
            .get("UNSUBSCRIBE_MAILTO")
            .map(|m| {
                crate::address::validate(&m).map_err(|e| ConfigError::Invalid {
                    var: "UNSUBSCRIBE_MAILTO",
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(Some(Self {
            signer,
            public_url,
            mailto,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "an-old-secret-of-at-least-32-bytes-long";
    const NEW: &str = "a-new-secret-that-is-32-bytes-or-more!!";

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000, 0).expect("time")
    }

    #[test]
    fn a_token_round_trips_with_the_normalised_address() {
        let signer = Signer::from_list(NEW).expect("signer");
        let token = signer.sign(" Ada@Example.COM ", Category::Marketing, at());
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "URL-safe: {token}"
        );
        assert_eq!(
            signer.verify(&token),
            Some(Claim {
                email: "ada@example.com".into(),
                category: Category::Marketing,
                issued_at: at(),
            })
        );
    }

    #[test]
    fn a_token_signed_before_a_rotation_still_verifies_and_a_dropped_secret_does_not() {
        let before = Signer::from_list(OLD).expect("old");
        let token = before.sign("ada@example.com", Category::Marketing, at());
        let rotated = Signer::from_list(&format!("{NEW},{OLD}")).expect("rotated");
        assert!(rotated.verify(&token).is_some(), "old links keep working");
        let fresh = rotated.sign("ada@example.com", Category::Marketing, at());
        assert_ne!(fresh, token, "the first secret signs");
        assert!(before.verify(&fresh).is_none());
        let retired = Signer::from_list(NEW).expect("new only");
        assert!(
            retired.verify(&token).is_none(),
            "a removed secret's links stop"
        );
    }

    #[test]
    fn tampered_truncated_and_foreign_tokens_are_refused() {
        let signer = Signer::from_list(NEW).expect("signer");
        let token = signer.sign("ada@example.com", Category::Marketing, at());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).expect("ascii");
            if changed != token {
                assert!(
                    signer.verify(&changed).is_none(),
                    "changed at {i}: {changed}"
                );
            }
        }
        // Someone else's address under this token's tag.
        let (_, tag) = token.split_once('.').expect("dot");
        let mut payload = vec![VERSION, b'm'];
        payload.extend_from_slice(&at().timestamp().to_be_bytes());
        payload.extend_from_slice(b"eve@example.com");
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(payload));
        for bad in [
            forged.as_str(),
            &token[..token.len() - 1],
            "",
            ".",
            "not-a-token",
            &"A".repeat(600),
        ] {
            assert!(signer.verify(bad).is_none(), "{bad}");
        }
        let other = Signer::from_list(OLD).expect("other");
        assert!(
            other.verify(&token).is_none(),
            "another deployment's secret"
        );
    }

    #[test]
    fn settings_need_long_secrets_and_https_in_production() {
        let env = [("UNSUBSCRIBE_SECRETS", "short")];
        let err = Marketing::from_source(&env, AppEnv::Development).expect_err("short");
        assert!(
            err.to_string()
                .starts_with("UNSUBSCRIBE_SECRETS is invalid"),
            "{err}"
        );
        let err = Marketing::from_source(&[("APP_ENV", "development")], AppEnv::Development)
            .expect_err("missing");
        assert!(err.to_string().contains("UNSUBSCRIBE_SECRETS"), "{err}");
        let off =
            Marketing::from_source(&[("MARKETING_EMAIL_ENABLED", "false")], AppEnv::Development)
                .expect("disabled");
        assert!(off.is_none());
        let dev = Marketing::from_source(&[("UNSUBSCRIBE_SECRETS", NEW)], AppEnv::Development)
            .expect("dev")
            .expect("enabled");
        assert_eq!(dev.public_url, "http://127.0.0.1:8081");
        let err = Marketing::from_source(&[("UNSUBSCRIBE_SECRETS", NEW)], AppEnv::Production)
            .expect_err("production needs PUBLIC_URL");
        assert!(err.to_string().contains("PUBLIC_URL"), "{err}");
        let err = Marketing::from_source(
            &[
                ("UNSUBSCRIBE_SECRETS", NEW),
                ("PUBLIC_URL", "http://mail.example.com"),
            ],
            AppEnv::Production,
        )
        .expect_err("http in production");
        assert!(err.to_string().contains("https://"), "{err}");
        let prod = Marketing::from_source(
            &[
                ("UNSUBSCRIBE_SECRETS", NEW),
                ("PUBLIC_URL", "https://mail.example.com/"),
                ("UNSUBSCRIBE_MAILTO", "unsubscribe@example.com"),
            ],
            AppEnv::Production,
        )
        .expect("prod")
        .expect("enabled");
        assert!(
            prod.link("Ada@example.com", Category::Marketing)
                .starts_with("https://mail.example.com/unsubscribe/")
        );
    }
}
