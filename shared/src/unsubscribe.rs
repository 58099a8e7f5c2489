//! One-click unsubscribe links (RFC 8058) with opaque tokens: a token is the address, the category
//! and when it was issued, encrypted and authenticated (ChaCha20-Poly1305, ring) under a key derived
//! from the secret, so the public listener needs no database lookup and nothing in a link (proxy
//! logs, link scanners) reveals the address. Tokens never expire (old mail must keep working);
//! rotating `UNSUBSCRIBE_SECRETS` keeps old links valid while an old secret stays in the list.
//! Links made before tokens were encrypted (version 1: signed, readable) are still accepted under
//! the same rule: while the secret that signed them is in the list (docs/unsubscribe.md).
//! One file on purpose (about 480 lines, half of them tests): the token formats, their keys and
//! the settings that make them belong together.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::aead;

use crate::config::{AppEnv, ConfigError, Env, parse_or};
use crate::email::Category;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest token accepted: a 254-byte address makes one of about 400 characters.
const MAX_TOKEN_CHARS: usize = 512;

/// The signed, readable format of links sent before tokens were encrypted (`payload.tag`).
const SIGNED_VERSION: u8 = 1;

/// The encrypted format: `base64url(2 ‖ nonce ‖ ciphertext ‖ tag)`, no dot.
const SEALED_VERSION: u8 = 2;

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

/// One secret's keys: the MAC of signed (version 1) tokens, the AEAD key and the nonce key of
/// sealed ones, each derived from the secret under its own label.
struct Keys {
    mac: ring::hmac::Key,
    seal: aead::LessSafeKey,
    nonce: ring::hmac::Key,
}

impl Keys {
    fn derive(secret: &str) -> Self {
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let sub = |label: &[u8]| ring::hmac::sign(&root, label);
        let seal = sub(b"herald unsubscribe v2 seal");
        let nonce = sub(b"herald unsubscribe v2 nonce");
        Self {
            // Version 1 used the secret itself.
            mac: root.clone(),
            seal: aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::CHACHA20_POLY1305, seal.as_ref())
                    .unwrap_or_else(|_| unreachable!("a SHA-256 output is a 32-byte key")),
            ),
            nonce: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, nonce.as_ref()),
        }
    }
}

/// Seals with the first secret, opens with any.
pub struct Signer {
    keys: Vec<Keys>,
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
            keys.push(Keys::derive(secret));
        }
        Ok(Self { keys })
    }

    /// An opaque URL-safe token for `email` (normalised here) in `category`, issued at
    /// `issued_at`. The nonce is synthetic (a MAC of the plaintext under its own key), so equal
    /// claims give equal tokens and different claims never share a nonce.
    pub fn sign(&self, email: &str, category: Category, issued_at: DateTime<Utc>) -> String {
        let mut plain = claim_bytes(email, category, issued_at);
        // `keys` is never empty: `from_list` makes one per entry of a list of at least one.
        let keys = &self.keys[0];
        let mut nonce = [0_u8; aead::NONCE_LEN];
        nonce.copy_from_slice(&ring::hmac::sign(&keys.nonce, &plain).as_ref()[..aead::NONCE_LEN]);
        let sealed = keys.seal.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from([SEALED_VERSION]),
            &mut plain,
        );
        if sealed.is_err() {
            // Only a plaintext over ChaCha20's 256 GiB limit fails; an address cannot be one.
            unreachable!("sealing a short claim cannot fail");
        }
        let mut token = Vec::with_capacity(1 + nonce.len() + plain.len());
        token.push(SEALED_VERSION);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&plain);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// What `token` says, if one of the secrets made it (sealed, or signed by an older Herald)
    /// and it is well formed; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claim> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        if token.contains('.') {
            return self.verify_signed(token);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (&version, rest) = bytes.split_first()?;
        if version != SEALED_VERSION || rest.len() < aead::NONCE_LEN + aead::MAX_TAG_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
        let nonce: [u8; aead::NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().find_map(|keys| {
            let mut buf = sealed.to_vec();
            let plain = keys
                .seal
                .open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from([SEALED_VERSION]),
                    &mut buf,
                )
                .ok()?;
            parse_claim(plain)
        })
    }

    /// A version 1 token: `payload.tag`, the payload readable, the tag an HMAC with the secret.
    fn verify_signed(&self, token: &str) -> Option<Claim> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !self
            .keys
            .iter()
            .any(|keys| ring::hmac::verify(&keys.mac, &payload, &tag).is_ok())
        {
            return None;
        }
        let (&version, claim) = payload.split_first()?;
        if version != SIGNED_VERSION {
            return None;
        }
        parse_claim(claim)
    }

    /// A version 1 token as Herald made them before tokens were encrypted (tests of old links).
    #[doc(hidden)]
    pub fn sign_v1(&self, email: &str, category: Category, issued_at: DateTime<Utc>) -> String {
        let mut payload = vec![SIGNED_VERSION];
        payload.extend_from_slice(&claim_bytes(email, category, issued_at));
        let tag = ring::hmac::sign(&self.keys[0].mac, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }
}

/// `category ‖ issued_at (i64, big-endian seconds) ‖ address`.
fn claim_bytes(email: &str, category: Category, issued_at: DateTime<Utc>) -> Vec<u8> {
    let email = crate::address::normalize(email);
    let mut out = Vec::with_capacity(9 + email.len());
    out.push(category_byte(category));
    out.extend_from_slice(&issued_at.timestamp().to_be_bytes());
    out.extend_from_slice(email.as_bytes());
    out
}

fn parse_claim(bytes: &[u8]) -> Option<Claim> {
    let (&category, rest) = bytes.split_first()?;
    if rest.len() < 8 {
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
        for secret in secrets.split(',') {
            crate::config::production_secret("UNSUBSCRIBE_SECRETS", secret, app_env)?;
        }
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
                crate::address::validate(&m)
                    .map(crate::address::EmailAddress::into_string)
                    .map_err(|e| ConfigError::Invalid {
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
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)),
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
        // Someone else's address under an old-format token's tag.
        let old = signer.sign_v1("ada@example.com", Category::Marketing, at());
        let (_, tag) = old.split_once('.').expect("dot");
        let mut payload = vec![SIGNED_VERSION, b'm'];
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

    #[test]
    fn no_part_of_a_token_reveals_the_address() {
        let signer = Signer::from_list(NEW).expect("signer");
        let email = "ada.lovelace@example.com";
        let token = signer.sign(email, Category::Marketing, at());
        let needles: [&[u8]; 3] = [email.as_bytes(), b"ada.lovelace", b"example.com"];
        // Decoded from each of the first four offsets (a decoder may skip a prefix).
        for start in 0..4 {
            let mut piece = &token[start..];
            if piece.len() % 4 == 1 {
                piece = &piece[..piece.len() - 1];
            }
            let lenient = base64::engine::GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_allow_trailing_bits(true)
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let bytes = lenient.decode(piece).expect("base64url");
            for needle in needles {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{token:?} from {start} decodes to the address"
                );
            }
        }
        assert!(
            !token.contains("ada") && !token.contains("example"),
            "{token}"
        );
        // The same claim gives the same token; another claim another nonce.
        assert_eq!(token, signer.sign(email, Category::Marketing, at()));
        let other = signer.sign("bob@example.com", Category::Marketing, at());
        assert_ne!(token[..20], other[..20]);
    }

    #[test]
    fn links_sent_before_tokens_were_encrypted_keep_working_while_their_secret_is_listed() {
        let before = Signer::from_list(OLD).expect("old");
        let old = before.sign_v1("ada@example.com", Category::Marketing, at());
        assert!(old.contains('.'));
        let rotated = Signer::from_list(&format!("{NEW},{OLD}")).expect("rotated");
        assert_eq!(
            rotated.verify(&old).map(|c| c.email),
            Some("ada@example.com".into())
        );
        assert!(Signer::from_list(NEW).expect("new").verify(&old).is_none());
    }
}
