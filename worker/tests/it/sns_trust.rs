//! Trusted feedback: SNS messages signed with a key and certificate made here (served from a local
//! HTTP server, with the certificate URL pattern pointed at it), forged in every way the issue
//! lists, through the verifier and through the consumer against moto's SQS with a DLQ; and
//! feedback that names no send of Herald's.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use herald_worker::feedback::parse::Format;
use herald_worker::feedback::sns::{self, DEFAULT_CERT_URL_PATTERN};
use herald_worker::feedback::{Policy, Reason, SnsVerifier, Trust, UNMATCHED, apply};
use rsa::RsaPrivateKey;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::feedback::{Moto, bounce, eventually};
use crate::helpers::setup_queue;

/// RSA key generation is slow; two keys serve every test.
pub(crate) static KEYS: LazyLock<[RsaPrivateKey; 2]> = LazyLock::new(|| {
    let mut rng = rsa::rand_core::OsRng;
    [
        RsaPrivateKey::new(&mut rng, 2048).expect("key"),
        RsaPrivateKey::new(&mut rng, 2048).expect("key"),
    ]
});

fn certificate(key: &RsaPrivateKey, not_before: SystemTime, not_after: SystemTime) -> String {
    use std::str::FromStr as _;
    use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
    use x509_cert::der::EncodePem as _;
    use x509_cert::time::{Time, Validity};
    let signer = rsa::pkcs1v15::SigningKey::<sha2_10::Sha256>::new(key.clone());
    let spki =
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).expect("spki");
    let validity = Validity {
        not_before: Time::try_from(not_before).expect("time"),
        not_after: Time::try_from(not_after).expect("time"),
    };
    let subject = x509_cert::name::Name::from_str("CN=sns.test").expect("name");
    let cert = CertificateBuilder::new(
        Profile::Root,
        x509_cert::serial_number::SerialNumber::from(1_u32),
        validity,
        subject,
        spki,
        &signer,
    )
    .expect("builder")
    .build::<rsa::pkcs1v15::Signature>()
    .expect("certificate");
    cert.to_pem(x509_cert::der::pem::LineEnding::LF)
        .expect("pem")
}

const DAY: Duration = Duration::from_secs(86_400);

/// A local HTTP server with certificates and a subscription endpoint, counting requests.
pub(crate) struct CertServer {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl CertServer {
    /// Serves `SimpleNotificationService-good.pem` (key 0), `-other.pem` (key 1),
    /// `-expired.pem` and `-future.pem` (key 0, outside their dates), `-junk.pem` (not PEM); anything
    /// else answers 404; `/confirm` answers 200.
    pub(crate) async fn start() -> Self {
        let now = SystemTime::now();
        let files: HashMap<String, String> = [
            ("good", certificate(&KEYS[0], now - DAY, now + DAY)),
            ("other", certificate(&KEYS[1], now - DAY, now + DAY)),
            ("expired", certificate(&KEYS[0], now - 3 * DAY, now - DAY)),
            ("future", certificate(&KEYS[0], now + DAY, now + 3 * DAY)),
            ("junk", "not a certificate".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("/SimpleNotificationService-{k}.pem"), v))
        .collect();
        let files = Arc::new(files);
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let files = files.clone();
            let hits = counted.clone();
            async move {
                let path = uri.path().to_owned();
                *hits.lock().expect("hits").entry(path.clone()).or_default() += 1;
                if path == "/confirm" {
                    return (axum::http::StatusCode::OK, String::new());
                }
                match files.get(&path) {
                    Some(pem) => (axum::http::StatusCode::OK, pem.clone()),
                    None => (axum::http::StatusCode::NOT_FOUND, String::new()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, hits }
    }

    pub(crate) fn url(&self, name: &str) -> String {
        format!("{}/SimpleNotificationService-{name}.pem", self.base)
    }

    /// The pattern that allows this server's `.pem` files, as the default allows SNS's.
    fn pattern(&self) -> String {
        format!(
            r"^{}/SimpleNotificationService-[A-Za-z0-9]+\.pem$",
            self.base.replace('.', r"\.")
        )
    }

    fn verifier(&self) -> SnsVerifier {
        SnsVerifier::new(&self.pattern()).expect("pattern")
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or_default()
    }
}

pub(crate) const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-feedback";

/// An SNS notification carrying `ses`, signed with `key` (version 1 or 2), naming `cert_url`.
pub(crate) fn signed(ses: &Value, version: u8, key: &RsaPrivateKey, cert_url: &str) -> Value {
    let mut envelope = json!({
        "Type": "Notification",
        "MessageId": format!("sns-{}", ulid::Ulid::generate()),
        "TopicArn": TOPIC,
        "Message": ses.to_string(),
        "Timestamp": "2026-11-30T10:00:00.000Z",
        "SignatureVersion": version.to_string(),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    });
    sign(&mut envelope, version, key);
    envelope
}

fn sign(envelope: &mut Value, version: u8, key: &RsaPrivateKey) {
    let text = sns::canonical_string(envelope.as_object().expect("object")).expect("canonical");
    let signature = match version {
        1 => rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(key.clone())
            .sign(text.as_bytes())
            .to_vec(),
        _ => rsa::pkcs1v15::SigningKey::<sha2_10::Sha256>::new(key.clone())
            .sign(text.as_bytes())
            .to_vec(),
    };
    envelope["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
}

/// `message` naming another certificate URL, signed again (version 1) with `key`.
fn resigned(message: &Value, cert_url: &str, key: &RsaPrivateKey) -> Value {
    let mut v = message.clone();
    v["SigningCertURL"] = json!(cert_url);
    sign(&mut v, 1, key);
    v
}

fn envelope_map(v: &Value) -> serde_json::Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn hard_bounce(message_id: &str, to: &str) -> Value {
    bounce(
        "Permanent",
        &format!("fb-{}", ulid::Ulid::generate()),
        message_id,
        &[to],
        "2026-11-30T10:00:00Z",
    )
}

#[tokio::test]
async fn good_v1_and_v2_signatures_verify_and_the_certificate_is_fetched_once() {
    let server = CertServer::start().await;
    let verifier = server.verifier();
    let url = server.url("good");
    for (version, to) in [(1, "a@example.com"), (2, "b@example.com")] {
        let message = signed(&hard_bounce("ses-1", to), version, &KEYS[0], &url);
        verifier
            .verify(&envelope_map(&message))
            .await
            .unwrap_or_else(|e| panic!("version {version}: {e}"));
    }
    assert_eq!(
        server.hits("/SimpleNotificationService-good.pem"),
        1,
        "cached per URL"
    );
}

#[tokio::test]
async fn a_certificate_that_cannot_be_fetched_is_not_fetched_again_for_a_while() {
    let server = CertServer::start().await;
    let verifier = server.verifier();
    for (name, reason) in [
        ("missing", Reason::CertificateUnavailable),
        ("junk", Reason::Certificate),
    ] {
        let url = server.url(name);
        for n in 0..6 {
            let message = signed(
                &hard_bounce(&format!("ses-{n}"), "a@example.com"),
                1,
                &KEYS[0],
                &url,
            );
            let got = verifier.verify(&envelope_map(&message)).await;
            assert_eq!(got.map_err(|e| e.reason), Err(reason), "{name} #{n}");
        }
        assert_eq!(
            server.hits(&format!("/SimpleNotificationService-{name}.pem")),
            1,
            "{name}: one fetch for six messages within {:?}",
            sns::FAILED_FETCH_TTL
        );
    }
}

#[tokio::test]
async fn every_forgery_is_refused_with_its_reason() {
    let server = CertServer::start().await;
    let verifier = server.verifier();
    let good = signed(
        &hard_bounce("ses-1", "a@example.com"),
        1,
        &KEYS[0],
        &server.url("good"),
    );
    let changed = |edit: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        v
    };
    let resigned = |url: String, key: &RsaPrivateKey| resigned(&good, &url, key);
    let cases: Vec<(&str, Value, Reason)> = vec![
        (
            "a changed byte in Message",
            changed(&|v| {
                let m =
                    v["Message"]
                        .as_str()
                        .expect("message")
                        .replacen("Permanent", "Permanenu", 1);
                v["Message"] = json!(m);
            }),
            Reason::Signature,
        ),
        (
            "a changed TopicArn",
            changed(&|v| v["TopicArn"] = json!("arn:aws:sns:us-east-1:123456789012:other")),
            Reason::Signature,
        ),
        (
            "signed by another key than the certificate's",
            resigned(server.url("good"), &KEYS[1]),
            Reason::Signature,
        ),
        (
            "the certificate of another key",
            resigned(server.url("other"), &KEYS[0]),
            Reason::Signature,
        ),
        (
            "an expired certificate",
            resigned(server.url("expired"), &KEYS[0]),
            Reason::CertificateExpired,
        ),
        (
            "a certificate not yet valid",
            resigned(server.url("future"), &KEYS[0]),
            Reason::CertificateExpired,
        ),
        (
            "not a certificate",
            resigned(server.url("junk"), &KEYS[0]),
            Reason::Certificate,
        ),
        (
            "a certificate URL that answers 404",
            resigned(server.url("missing"), &KEYS[0]),
            Reason::CertificateUnavailable,
        ),
        (
            "a URL outside the pattern",
            resigned(format!("{}/other.pem", server.base), &KEYS[0]),
            Reason::CertificateUrl,
        ),
        (
            "no signature",
            changed(&|v| {
                v.as_object_mut().expect("object").remove("Signature");
            }),
            Reason::SignatureMissing,
        ),
        (
            "an empty signature",
            changed(&|v| v["Signature"] = json!("")),
            Reason::SignatureMissing,
        ),
        (
            "a signature that is not base64",
            changed(&|v| v["Signature"] = json!("%%%")),
            Reason::Signature,
        ),
        (
            "an unknown SignatureVersion",
            changed(&|v| v["SignatureVersion"] = json!("3")),
            Reason::SignatureVersion,
        ),
        (
            "version 2 claimed for a version 1 signature",
            changed(&|v| v["SignatureVersion"] = json!("2")),
            Reason::Signature,
        ),
    ];
    verifier
        .verify(&envelope_map(&good))
        .await
        .expect("the untouched message verifies");
    for (what, message, reason) in cases {
        let got = verifier.verify(&envelope_map(&message)).await;
        assert_eq!(
            got.as_ref().map_err(|e| e.reason),
            Err(reason),
            "{what}: {got:?}"
        );
    }
    // Under the default pattern (real SNS hosts over https only), this server is not trusted.
    let default = SnsVerifier::new(DEFAULT_CERT_URL_PATTERN).expect("pattern");
    for url in [
        server.url("good"),
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-good.pem".to_owned(),
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-good.pem"
            .to_owned(),
    ] {
        let got = default
            .verify(&envelope_map(&resigned(url.clone(), &KEYS[0])))
            .await;
        assert_eq!(
            got.map_err(|e| e.reason),
            Err(Reason::CertificateUrl),
            "{url}"
        );
    }
}

/// `(recipient, SES message id)` sent, one ledger row each.
async fn sent(pool: &PgPool, rows: &[(&str, &str)]) {
    for (i, (to, id)) in rows.iter().enumerate() {
        crate::feedback::sent_row(pool, &format!("job-{i}-{id}"), to, id).await;
    }
}

async fn suppressed(pool: &PgPool, email: &str) -> bool {
    herald_shared::suppressions::find(&mut pool.acquire().await.expect("conn"), email)
        .await
        .expect("find")
        .is_some()
}

pub(crate) fn trusted(server: &CertServer) -> Trust {
    Trust {
        formats: [Format::Sns].into_iter().collect(),
        allowed_topics: vec![TOPIC.to_owned()],
        verifier: Some(server.verifier()),
        confirm_subscriptions: false,
    }
}

pub(crate) fn known_only() -> Policy {
    Policy {
        soft_bounce_threshold: 3,
        soft_bounce_window: chrono::Duration::days(30),
        require_known_message: true,
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn forged_feedback_ends_in_the_dlq_unapplied_while_signed_feedback_is_applied(pool: PgPool) {
    setup_queue(&pool).await;
    let server = CertServer::start().await;
    let moto = Moto::new().await;
    sent(
        &pool,
        &[
            ("v1@example.com", "ses-v1"),
            ("v2@example.com", "ses-v2"),
            ("forged@example.com", "ses-forged"),
        ],
    )
    .await;
    let good_url = server.url("good");
    let forged_bounce = hard_bounce("ses-forged", "forged@example.com");
    let base = signed(&forged_bounce, 1, &KEYS[0], &good_url);
    let mut forgeries: Vec<(Reason, Value)> = Vec::new();
    let mut m = base.clone();
    m["Message"] = json!(base["Message"].as_str().expect("m").replace("fb-", "fc-"));
    forgeries.push((Reason::Signature, m));
    let mut m = base.clone();
    m["TopicArn"] = json!(format!("{TOPIC}-other"));
    forgeries.push((Reason::Topic, m));
    forgeries.push((
        Reason::CertificateExpired,
        resigned(&base, &server.url("expired"), &KEYS[0]),
    ));
    forgeries.push((
        Reason::Signature,
        resigned(&base, &server.url("other"), &KEYS[0]),
    ));
    forgeries.push((
        Reason::CertificateUrl,
        resigned(
            &base,
            "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
            &KEYS[0],
        ),
    ));
    let mut m = base.clone();
    m.as_object_mut().expect("obj").remove("Signature");
    forgeries.push((Reason::SignatureMissing, m));
    // The same bounce as bare SES JSON: a format the operator did not opt into.
    forgeries.push((Reason::Format, forged_bounce.clone()));

    for (_, m) in &forgeries {
        moto.put_raw(&m.to_string()).await;
    }
    moto.put_raw(
        &signed(
            &hard_bounce("ses-v1", "v1@example.com"),
            1,
            &KEYS[0],
            &good_url,
        )
        .to_string(),
    )
    .await;
    moto.put_raw(
        &signed(
            &hard_bounce("ses-v2", "v2@example.com"),
            2,
            &KEYS[0],
            &good_url,
        )
        .to_string(),
    )
    .await;
    // Correctly signed, but for a message Herald never sent: recorded, applied to nothing, deleted.
    moto.put_raw(
        &signed(
            &hard_bounce("ses-unknown", "stranger@example.com"),
            2,
            &KEYS[0],
            &good_url,
        )
        .to_string(),
    )
    .await;

    let consumer = moto.consumer_trusting(&pool, known_only(), trusted(&server));
    let stats = consumer.stats.clone();
    let metrics = consumer.metrics.clone();
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer.run(token.clone()));
    eventually("the signed bounces", Duration::from_secs(30), async || {
        suppressed(&pool, "v1@example.com").await && suppressed(&pool, "v2@example.com").await
    })
    .await;
    let mut in_dlq = Vec::new();
    eventually(
        "every forgery in the DLQ",
        Duration::from_secs(60),
        async || {
            in_dlq.extend(moto.dlq_bodies().await);
            in_dlq.sort();
            in_dlq.dedup();
            in_dlq.len() >= forgeries.len()
        },
    )
    .await;
    token.cancel();
    task.await.expect("consumer");

    for (reason, m) in &forgeries {
        assert!(
            in_dlq.contains(&m.to_string()),
            "the {reason:?} forgery is not in the DLQ"
        );
    }
    assert!(
        !in_dlq
            .iter()
            .any(|b| b.contains("ses-unknown") || b.contains("ses-v1")),
        "only forgeries reach the DLQ"
    );
    assert!(!suppressed(&pool, "forged@example.com").await);
    assert!(!suppressed(&pool, "stranger@example.com").await);
    let unmatched: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, recipient FROM email_feedback_events WHERE ses_message_id = 'ses-unknown'",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(
        unmatched,
        vec![(UNMATCHED.to_owned(), "stranger@example.com".to_owned())]
    );
    let forged_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_feedback_events WHERE ses_message_id = 'ses-forged'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(forged_events, 0, "nothing of a forgery is recorded");
    // Counted once per message, not per receive.
    assert_eq!(
        stats.rejected.load(Ordering::Relaxed),
        forgeries.len() as u64
    );
    let text = metrics.render(&pool).await.expect("metrics");
    for (reason, expected) in [
        ("signature", 2),
        ("topic", 1),
        ("certificate_expired", 1),
        ("certificate_url", 1),
        ("signature_missing", 1),
        ("format", 1),
    ] {
        let line = format!("herald_feedback_rejected_total{{reason=\"{reason}\"}} {expected}");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    let unmatched_line = r#"herald_feedback_events_total{type="unmatched"} 1"#;
    assert!(text.contains(unmatched_line), "{text}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn only_herald_s_own_recipients_are_applied_and_forged_complaints_count_once(pool: PgPool) {
    // The queue's tables: a recipient other than the first is looked up in the job's envelope.
    crate::helpers::setup_queue(&pool).await;
    // 200 sends an hour ago; r1 got message m-1.
    sqlx::query(
        "INSERT INTO email_deliveries (job_id, recipient, template, category, status, ses_message_id, sent_at)
         SELECT 'j' || g, 'r' || g || '@example.com', 'welcome', 'transactional', 'sent', 'm-' || g, now() - interval '1 hour'
         FROM generate_series(1, 200) g",
    )
    .execute(&pool)
    .await
    .expect("sends");
    let complaint = |feedback_id: &str, message_id: &str, to: &str| {
        json!({
            "notificationType": "Complaint",
            "complaint": {"complainedRecipients": [{"emailAddress": to}], "timestamp": "2026-11-30T10:00:00Z",
                          "feedbackId": feedback_id, "complaintFeedbackType": "abuse"},
            "mail": {"messageId": message_id, "timestamp": "2026-11-30T09:00:00Z", "destination": [to]}
        })
        .to_string()
    };
    let p = known_only();
    for i in 0..5 {
        apply(
            &pool,
            &p,
            &complaint(&format!("c{i}"), "m-1", "r1@example.com"),
            None,
        )
        .await
        .expect("complaint");
    }
    // A real message id, but another recipient: not Herald's send to that address.
    apply(&pool, &p, &complaint("c-x", "m-1", "r2@example.com"), None)
        .await
        .expect("other recipient");
    // A message id Herald never used.
    apply(
        &pool,
        &p,
        &complaint("c-y", "m-999", "r3@example.com"),
        None,
    )
    .await
    .expect("unknown id");
    let settings = herald_shared::compliance::Settings {
        min_sends: 100,
        ..Default::default()
    };
    let mut conn = pool.acquire().await.expect("conn");
    let all = herald_shared::compliance::rates(&mut conn, &settings)
        .await
        .expect("rates")
        .into_iter()
        .find(|r| r.window == "24h" && r.category == "all")
        .expect("all");
    assert_eq!(
        (all.complaints, all.sends),
        (1, 200),
        "one complaint per delivery"
    );
    assert!(suppressed(&pool, "r1@example.com").await);
    assert!(!suppressed(&pool, "r2@example.com").await);
    assert!(!suppressed(&pool, "r3@example.com").await);
    let unmatched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_feedback_events WHERE event_type = $1")
            .bind(UNMATCHED)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(unmatched, 2);
    // With the setting off (several senders share the topic) every recipient is applied.
    let shared = Policy {
        require_known_message: false,
        ..known_only()
    };
    apply(
        &pool,
        &shared,
        &complaint("c-z", "m-999", "r3@example.com"),
        None,
    )
    .await
    .expect("shared topic");
    assert!(suppressed(&pool, "r3@example.com").await);
}

#[tokio::test]
async fn subscription_messages_are_verified_and_confirmed_only_when_configured() {
    let server = CertServer::start().await;
    let mut confirmation = json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "sub-1",
        "Token": "tok",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe…",
        "SubscribeURL": format!("{}/confirm?Action=ConfirmSubscription&Token=tok", server.base),
        "Timestamp": "2026-11-30T10:00:00.000Z",
        "SignatureVersion": "1",
        "SigningCertURL": server.url("good"),
    });
    let unsigned = confirmation.clone();
    sign(&mut confirmation, 1, &KEYS[0]);

    let mut trust = trusted(&server);
    assert_eq!(
        trust.admit(&unsigned).await.map_err(|e| e.reason),
        Err(Reason::SignatureMissing),
        "an unsigned subscription message is refused"
    );
    trust.admit(&confirmation).await.expect("signed");
    assert_eq!(
        trust.confirm(&confirmation).await,
        Ok(false),
        "not configured"
    );
    assert_eq!(server.hits("/confirm"), 0);
    trust.confirm_subscriptions = true;
    assert_eq!(trust.confirm(&confirmation).await, Ok(true));
    assert_eq!(server.hits("/confirm"), 1);
    // A SubscribeURL elsewhere than the certificate's host is never visited.
    let mut elsewhere = confirmation.clone();
    elsewhere["SubscribeURL"] = json!("http://127.0.0.2:9/confirm");
    sign(&mut elsewhere, 1, &KEYS[0]);
    trust.admit(&elsewhere).await.expect("signed");
    assert!(trust.confirm(&elsewhere).await.is_err());
    assert_eq!(server.hits("/confirm"), 1);
    assert_eq!(
        server.hits("/SimpleNotificationService-good.pem"),
        1,
        "one certificate fetch"
    );
}
