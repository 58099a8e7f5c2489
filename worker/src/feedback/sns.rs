//! SNS message signatures: `SignatureVersion` 1 (SHA1withRSA) and 2 (SHA256withRSA) over the
//! canonical string of the message type, with the signing certificate fetched only from a URL the
//! configured pattern allows.
//!
//! Trust in the certificate comes from where it was fetched (TLS to a host the pattern allows), as
//! AWS's own validators do, not from its chain; its validity dates are checked on every use.
//! One file on purpose (about 500 lines with its tests): the verifier, its certificate cache and
//! the URL rules are one idea, read top to bottom.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};
use x509_cert::der::DecodePem as _;

/// The default `SNS_SIGNING_CERT_URL_PATTERN`: https on the SNS host of an AWS region (a region's
/// shape, `us-east-1`, `us-gov-west-1`, `cn-north-1`: not `s3` or another service's name), a
/// `SimpleNotificationService-*.pem` file. Whatever the pattern, an `sns.<region>.amazonaws.com`
/// URL must name the region of the message's `TopicArn`.
pub const DEFAULT_CERT_URL_PATTERN: &str = r"^https://sns\.[a-z]{2}(-[a-z]+)+-[0-9]+\.amazonaws\.com(\.cn)?/SimpleNotificationService-[A-Za-z0-9]+\.pem$";

/// How long a certificate URL that could not be fetched or used is refused without fetching it
/// again (a refused message comes back with every visibility timeout).
pub const FAILED_FETCH_TTL: Duration = Duration::from_secs(60);

/// The region of an SNS certificate URL on AWS (`https://sns.<region>.amazonaws.com[.cn]/…`).
fn aws_sns_region(url: &str) -> Option<&str> {
    let host = url.strip_prefix("https://")?.split('/').next()?;
    let rest = host.strip_prefix("sns.")?;
    rest.strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
}

/// The region of a topic ARN (`arn:aws:sns:<region>:<account>:<name>`).
fn topic_region(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("sns"), Some(region)) if !region.is_empty() => Some(region),
        _ => None,
    }
}

/// Certificates kept per URL (AWS signs with one at a time and rotates rarely).
const CACHE_CAPACITY: usize = 32;
/// A certificate is a couple of kilobytes; anything much larger is not one.
const MAX_CERT_BYTES: usize = 64 * 1024;

/// Why a message's signature is not accepted; the label of `herald_feedback_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A format not in `FEEDBACK_FORMATS`.
    Format,
    /// A topic not in `SNS_ALLOWED_TOPIC_ARNS`.
    Topic,
    /// No `Signature`, or a field the canonical string needs is missing.
    SignatureMissing,
    /// A `SignatureVersion` other than 1 or 2.
    SignatureVersion,
    /// The signature does not match the message.
    Signature,
    /// `SigningCertURL` outside `SNS_SIGNING_CERT_URL_PATTERN`.
    CertificateUrl,
    /// The certificate cannot be used (not PEM X.509, not RSA).
    Certificate,
    /// The certificate is outside its validity dates.
    CertificateExpired,
    /// The certificate could not be fetched (network, status, size).
    CertificateUnavailable,
}

impl Reason {
    /// Every reason, for metrics that start at zero.
    pub const ALL: [Self; 9] = [
        Self::Format,
        Self::Topic,
        Self::SignatureMissing,
        Self::SignatureVersion,
        Self::Signature,
        Self::CertificateUrl,
        Self::Certificate,
        Self::CertificateExpired,
        Self::CertificateUnavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Format => "format",
            Self::Topic => "topic",
            Self::SignatureMissing => "signature_missing",
            Self::SignatureVersion => "signature_version",
            Self::Signature => "signature",
            Self::CertificateUrl => "certificate_url",
            Self::Certificate => "certificate",
            Self::CertificateExpired => "certificate_expired",
            Self::CertificateUnavailable => "certificate_unavailable",
        }
    }
}

/// A refused message: the reason and a short detail for the log (never the message itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// What exactly.
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The fields each SNS message type signs, in order; `Subject` only when present.
fn signed_fields(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Notification" => Some(&[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]),
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => Some(&[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]),
        _ => None,
    }
}

/// The string SNS signs for this envelope: `name\nvalue\n` per signed field.
pub fn canonical_string(envelope: &Map<String, Value>) -> Result<String, Rejection> {
    let kind = envelope
        .get("Type")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::new(Reason::SignatureMissing, "no Type"))?;
    let fields = signed_fields(kind).ok_or_else(|| {
        Rejection::new(
            Reason::SignatureMissing,
            format!("unknown SNS Type {kind:?}"),
        )
    })?;
    let mut out = String::new();
    for &name in fields {
        match envelope.get(name) {
            Some(Value::String(value)) => {
                out.push_str(name);
                out.push('\n');
                out.push_str(value);
                out.push('\n');
            }
            None | Some(Value::Null) if name == "Subject" => {}
            _ => {
                return Err(Rejection::new(
                    Reason::SignatureMissing,
                    format!("{name} missing or not a string"),
                ));
            }
        }
    }
    Ok(out)
}

/// A certificate's RSA key and validity, as cached.
#[derive(Debug)]
struct SigningKey {
    /// `RSAPublicKey` DER, as ring reads it.
    public_key: Vec<u8>,
    not_before: Duration,
    not_after: Duration,
}

/// Verifies SNS signatures; certificates are fetched once per URL and kept (bounded).
#[derive(Debug)]
pub struct SnsVerifier {
    pattern: regex_lite::Regex,
    http: reqwest::Client,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    keys: HashMap<String, Arc<SigningKey>>,
    order: VecDeque<String>,
    /// URLs whose fetch or certificate failed, with the refusal and until when it stands.
    failed: HashMap<String, (std::time::Instant, Rejection)>,
}

impl Cache {
    fn failed(&mut self, url: &str) -> Option<Rejection> {
        let now = std::time::Instant::now();
        self.failed.retain(|_, (until, _)| *until > now);
        self.failed.get(url).map(|(_, r)| r.clone())
    }

    fn fail(&mut self, url: &str, rejection: &Rejection) {
        if self.failed.len() >= CACHE_CAPACITY {
            self.failed.clear();
        }
        self.failed.insert(
            url.to_owned(),
            (
                std::time::Instant::now() + FAILED_FETCH_TTL,
                rejection.clone(),
            ),
        );
    }

    fn insert(&mut self, url: String, key: Arc<SigningKey>) {
        if self.keys.insert(url.clone(), key).is_none() {
            self.order.push_back(url);
        }
        while self.order.len() > CACHE_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

/// A pattern for `SNS_SIGNING_CERT_URL_PATTERN` that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("not a valid regular expression: {0}")]
pub struct PatternError(String);

impl SnsVerifier {
    /// A verifier that fetches certificates only from URLs matching `pattern` (a regular
    /// expression over the whole URL).
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let pattern = regex_lite::Regex::new(pattern).map_err(|e| PatternError(e.to_string()))?;
        // No redirects: an allowed URL must not lead anywhere else.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PatternError(format!("HTTP client: {e}")))?;
        Ok(Self {
            pattern,
            http,
            cache: Mutex::default(),
        })
    }

    /// Checks the envelope's signature; `Ok` means SNS signed exactly these fields.
    pub async fn verify(&self, envelope: &Map<String, Value>) -> Result<(), Rejection> {
        let text = |name: &str| envelope.get(name).and_then(Value::as_str);
        let signature = text("Signature")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Rejection::new(Reason::SignatureMissing, "no Signature"))?;
        let algorithm: &'static dyn ring::signature::VerificationAlgorithm =
            match text("SignatureVersion") {
                Some("1") => &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                Some("2") => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                other => {
                    return Err(Rejection::new(
                        Reason::SignatureVersion,
                        format!("SignatureVersion {other:?}"),
                    ));
                }
            };
        let url = text("SigningCertURL")
            .ok_or_else(|| Rejection::new(Reason::CertificateUrl, "no SigningCertURL"))?;
        if !self.pattern.is_match(url) {
            return Err(Rejection::new(
                Reason::CertificateUrl,
                format!("{url:?} is outside SNS_SIGNING_CERT_URL_PATTERN"),
            ));
        }
        if let Some(region) = aws_sns_region(url) {
            let topic = text("TopicArn").and_then(topic_region);
            if topic != Some(region) {
                return Err(Rejection::new(
                    Reason::CertificateUrl,
                    format!("{url:?} is not in the region of the TopicArn ({topic:?})"),
                ));
            }
        }
        let signed = canonical_string(envelope)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| Rejection::new(Reason::Signature, "Signature is not base64"))?;
        let key = self.key(url).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if now < key.not_before || now > key.not_after {
            return Err(Rejection::new(
                Reason::CertificateExpired,
                format!("{url} is outside its validity dates"),
            ));
        }
        ring::signature::UnparsedPublicKey::new(algorithm, &key.public_key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| Rejection::new(Reason::Signature, "the signature does not match"))
    }

    /// Visits `url` (a subscription's `SubscribeURL`) with the verifier's HTTP client.
    pub async fn get(&self, url: &str) -> Result<(), String> {
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
    }

    /// The key of the certificate at `url`, from the cache or fetched.
    async fn key(&self, url: &str) -> Result<Arc<SigningKey>, Rejection> {
        if let Some(key) = self.cached(url) {
            return Ok(key);
        }
        if let Some(refused) = self.cache.lock().ok().and_then(|mut c| c.failed(url)) {
            return Err(refused);
        }
        let key = match self
            .fetch(url)
            .await
            .and_then(|pem| parse_certificate(&pem))
        {
            Ok(key) => Arc::new(key),
            Err(refused) => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.fail(url, &refused);
                }
                return Err(refused);
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(url.to_owned(), key.clone());
        }
        Ok(key)
    }

    fn cached(&self, url: &str) -> Option<Arc<SigningKey>> {
        self.cache.lock().ok()?.keys.get(url).cloned()
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, Rejection> {
        let unavailable = |e: String| Rejection::new(Reason::CertificateUnavailable, e);
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(format!("fetching {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(unavailable(format!(
                "fetching {url}: HTTP {}",
                response.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(format!("reading {url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_CERT_BYTES {
                return Err(unavailable(format!(
                    "{url} is larger than {MAX_CERT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// rsaEncryption.
const RSA_ENCRYPTION: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

fn parse_certificate(pem: &[u8]) -> Result<SigningKey, Rejection> {
    let bad = |e: String| Rejection::new(Reason::Certificate, e);
    let cert = x509_cert::Certificate::from_pem(pem)
        .map_err(|e| bad(format!("not a PEM X.509 certificate: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let spki = &tbs.subject_public_key_info;
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(bad(format!("not an RSA key ({})", spki.algorithm.oid)));
    }
    let public_key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("the public key is not whole bytes".into()))?
        .to_vec();
    Ok(SigningKey {
        public_key,
        not_before: tbs.validity.not_before.to_unix_duration(),
        not_after: tbs.validity.not_after.to_unix_duration(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pattern_allows_only_https_sns_hosts_and_their_pem_files() {
        let v = SnsVerifier::new(DEFAULT_CERT_URL_PATTERN).expect("pattern");
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        ] {
            assert!(v.pattern.is_match(ok), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-abc.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-abc.pem",
            "https://sns.us-east-1.amazonaws.com/other.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1",
            "https://s3.amazonaws.com/SimpleNotificationService-abc.pem",
            // S3 virtual hosts and other services' names are not a region.
            "https://sns.s3.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.s3-website.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.execute-api.amazonaws.com/SimpleNotificationService-abc.pem",
        ] {
            assert!(!v.pattern.is_match(bad), "{bad}");
        }
        assert_eq!(
            aws_sns_region("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-a.pem"),
            Some("eu-west-1")
        );
        assert_eq!(
            aws_sns_region("https://sns.cn-north-1.amazonaws.com.cn/x.pem"),
            Some("cn-north-1")
        );
        assert_eq!(aws_sns_region("https://127.0.0.1:9/x.pem"), None);
        assert_eq!(
            topic_region("arn:aws:sns:us-east-1:123456789012:herald"),
            Some("us-east-1")
        );
        assert_eq!(topic_region("arn:aws:sqs:us-east-1:1:x"), None);
    }

    #[tokio::test]
    async fn a_certificate_url_in_another_region_than_the_topic_is_refused_before_any_fetch() {
        let v = SnsVerifier::new(DEFAULT_CERT_URL_PATTERN).expect("pattern");
        let envelope: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "Type": "Notification", "MessageId": "m", "Message": "{}", "Timestamp": "t",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:herald-ses-feedback",
            "SignatureVersion": "1", "Signature": "AAAA",
            "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        }))
        .expect("json");
        let got = v.verify(&envelope).await.expect_err("refused");
        assert_eq!(got.reason, Reason::CertificateUrl, "{got}");
        assert!(got.detail.contains("region"), "{got}");
    }

    #[test]
    fn the_canonical_string_follows_the_message_type() {
        let n: Map<String, Value> = serde_json::from_str(
            r#"{"Type":"Notification","MessageId":"m","TopicArn":"t","Message":"hi","Timestamp":"ts","Signature":"x"}"#,
        )
        .expect("json");
        assert_eq!(
            canonical_string(&n).expect("canonical"),
            "Message\nhi\nMessageId\nm\nTimestamp\nts\nTopicArn\nt\nType\nNotification\n"
        );
        let mut with_subject = n.clone();
        with_subject.insert("Subject".into(), Value::String("s".into()));
        assert!(
            canonical_string(&with_subject)
                .expect("canonical")
                .contains("MessageId\nm\nSubject\ns\nTimestamp")
        );
        let c: Map<String, Value> = serde_json::from_str(
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"t","Message":"hi","Timestamp":"ts","Token":"k","SubscribeURL":"u"}"#,
        )
        .expect("json");
        assert_eq!(
            canonical_string(&c).expect("canonical"),
            "Message\nhi\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nts\nToken\nk\nTopicArn\nt\nType\nSubscriptionConfirmation\n"
        );
        let mut missing = c;
        missing.remove("Token");
        assert_eq!(
            canonical_string(&missing).expect_err("no token").reason,
            Reason::SignatureMissing
        );
    }
}
