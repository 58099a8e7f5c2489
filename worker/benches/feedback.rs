//! How fast SES feedback is applied in-process (parse + database work), without SQS transport;
//! and what SNS signature verification (certificate cached) costs beside it, in the same run.
//!
//! `DATABASE_URL=postgres://… cargo bench -p herald-worker --bench feedback`; creates and drops its
//! own database. BENCH_FEEDBACK (5000 messages), BENCH_FEEDBACK_CONCURRENCY (8),
//! BENCH_FEEDBACK_ROUNDS (8: verification on and off alternate, a fresh slice of messages each).

use std::sync::Arc;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

use base64::Engine as _;
use common::{BenchDb, Row, env_usize, median, print_rows};
use herald_worker::feedback::parse::Format;
use herald_worker::feedback::{Outcome, Policy, SnsVerifier, Trust, apply, apply_value, parse};
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::{Value, json};

/// An SNS-wrapped notification: mostly deliveries, some soft and hard bounces, a few complaints.
fn message(i: usize) -> String {
    envelope(i).to_string()
}

fn envelope(i: usize) -> Value {
    let to = format!("user{}@example.com", i % 2000);
    let at = chrono::Utc::now().to_rfc3339();
    let mail = json!({"messageId": format!("ses-{i}"), "timestamp": at, "source": "noreply@herald.test", "destination": [to]});
    let ses = match i % 10 {
        0..=5 => json!({"notificationType": "Delivery", "mail": mail,
            "delivery": {"timestamp": at, "recipients": [to], "processingTimeMillis": 500, "smtpResponse": "250 ok"}}),
        6 | 7 => json!({"notificationType": "Bounce", "mail": mail,
            "bounce": {"bounceType": "Transient", "bounceSubType": "MailboxFull", "feedbackId": format!("fb-{i}"), "timestamp": at,
                       "bouncedRecipients": [{"emailAddress": to, "status": "4.2.2"}]}}),
        8 => json!({"notificationType": "Bounce", "mail": mail,
            "bounce": {"bounceType": "Permanent", "bounceSubType": "General", "feedbackId": format!("fb-{i}"), "timestamp": at,
                       "bouncedRecipients": [{"emailAddress": to, "status": "5.1.1"}]}}),
        _ => json!({"notificationType": "Complaint", "mail": mail,
            "complaint": {"feedbackId": format!("fb-{i}"), "timestamp": at, "complaintFeedbackType": "abuse",
                          "complainedRecipients": [{"emailAddress": to}]}}),
    };
    json!({"Type": "Notification", "MessageId": format!("sns-{i}"), "TopicArn": "arn:aws:sns:us-east-1:1:t",
           "Message": ses.to_string(), "Timestamp": at, "SignatureVersion": "1", "Signature": "x"})
}

/// A key, a self-signed certificate for it served on loopback, and a verifier trusting that URL.
struct Signer {
    key: rsa::pkcs1v15::SigningKey<sha1::Sha1>,
    cert_url: String,
    verifier: SnsVerifier,
}

impl Signer {
    async fn start() -> Self {
        use std::str::FromStr as _;
        use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
        use x509_cert::der::EncodePem as _;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key");
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(key.to_public_key())
            .expect("spki");
        let cert_signer = rsa::pkcs1v15::SigningKey::<sha2_10::Sha256>::new(key.clone());
        let pem = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(1_u32),
            x509_cert::time::Validity::from_now(std::time::Duration::from_secs(86_400))
                .expect("validity"),
            x509_cert::name::Name::from_str("CN=bench").expect("name"),
            spki,
            &cert_signer,
        )
        .expect("builder")
        .build::<rsa::pkcs1v15::Signature>()
        .expect("certificate")
        .to_pem(x509_cert::der::pem::LineEnding::LF)
        .expect("pem");
        let app = axum::Router::new().fallback(move || {
            let pem = pem.clone();
            async move { pem }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let pattern = format!(
            r"^{}/SimpleNotificationService-[a-z]+\.pem$",
            base.replace('.', r"\.")
        );
        Self {
            key: rsa::pkcs1v15::SigningKey::new(key),
            cert_url: format!("{base}/SimpleNotificationService-bench.pem"),
            verifier: SnsVerifier::new(&pattern).expect("pattern"),
        }
    }

    fn sign(&self, mut envelope: Value) -> Value {
        envelope["SigningCertURL"] = json!(self.cert_url);
        let text =
            herald_worker::feedback::sns::canonical_string(envelope.as_object().expect("object"))
                .expect("canonical");
        let signature = self.key.sign(text.as_bytes()).to_vec();
        envelope["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
        envelope
    }
}

/// Admits (trust checks) and applies `bodies` with `concurrency` tasks; messages per second.
async fn admit_and_apply(
    pool: &sqlx::PgPool,
    policy: &Arc<Policy>,
    trust: &Arc<Trust>,
    bodies: &[String],
    concurrency: usize,
) -> f64 {
    let bodies: Arc<Vec<String>> = Arc::new(bodies.to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (pool, policy, trust, bodies) =
            (pool.clone(), policy.clone(), trust.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            for b in bodies.iter().skip(w).step_by(concurrency) {
                let outer = parse::json_object(b).expect("json");
                trust.admit(&outer).await.expect("admitted");
                apply_value(&pool, &policy, outer, None)
                    .await
                    .expect("apply");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    bodies.len() as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n = env_usize("BENCH_FEEDBACK", 5000);
    let concurrency = env_usize("BENCH_FEEDBACK_CONCURRENCY", 8);
    let db = BenchDb::create("feedback", 20).await;
    let (pool, version) = (db.pool.clone(), db.version.clone());
    let policy = Arc::new(Policy {
        soft_bounce_threshold: 3,
        soft_bounce_window: chrono::Duration::days(30),
        require_known_message: true,
    });
    // Every message names a send of Herald's to its recipient, as in production.
    let rounds = env_usize("BENCH_FEEDBACK_ROUNDS", 8).max(2);
    sqlx::query(
        "INSERT INTO email_deliveries (job_id, recipient, template, category, status, ses_message_id, sent_at)
         SELECT 'j' || g, 'user' || (g % 2000) || '@example.com', 'welcome', 'transactional', 'sent', 'ses-' || g, now()
         FROM generate_series(0, $1) g",
    )
    .bind((2 * n + rounds) as i64)
    .execute(&pool)
    .await
    .expect("ledger rows");

    let bodies: Vec<String> = (0..n).map(message).collect();
    let start = Instant::now();
    for b in &bodies {
        parse::parse(b).expect("parse");
    }
    let parse_rate = n as f64 / start.elapsed().as_secs_f64();

    // Sequential: one message at a time, as one poller sees them.
    let half = n / 2;
    let start = Instant::now();
    for b in &bodies[..half] {
        apply(&pool, &policy, b, None).await.expect("apply");
    }
    let sequential = half as f64 / start.elapsed().as_secs_f64();

    // Concurrent: like several pollers.
    let rest: Arc<Vec<String>> = Arc::new(bodies[half..].to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (pool, policy, rest) = (pool.clone(), policy.clone(), rest.clone());
        tasks.push(tokio::spawn(async move {
            let mut applied = 0;
            for b in rest.iter().skip(w).step_by(concurrency) {
                if let Outcome::Applied { new, .. } =
                    apply(&pool, &policy, b, None).await.expect("apply")
                {
                    applied += new;
                }
            }
            applied
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.expect("task");
    }
    let concurrent = rest.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(applied, rest.len(), "every message applied once");

    // Duplicates: the same messages again change nothing.
    let start = Instant::now();
    for b in bodies.iter().take(1000.min(n)) {
        assert!(matches!(
            apply(&pool, &policy, b, None).await.expect("apply"),
            Outcome::Applied { new: 0, .. }
        ));
    }
    let duplicate_rate = 1000.min(n) as f64 / start.elapsed().as_secs_f64();

    // Baseline: a bare INSERT of one event row per message, no parsing, dedupe or policy.
    let bare = async |count: usize, tasks: usize, label: &str| -> f64 {
        let start = Instant::now();
        let mut handles = Vec::new();
        for w in 0..tasks {
            let (pool, label) = (pool.clone(), label.to_owned());
            handles.push(tokio::spawn(async move {
                for i in (w..count).step_by(tasks) {
                    sqlx::query(
                        "INSERT INTO email_feedback_events (event_type, recipient, occurred_at, dedupe_key) VALUES ('bounce', $1, now(), $2)",
                    )
                    .bind(format!("bare-{label}-{i}@example.com"))
                    .bind(format!("bare-{label}-{i}"))
                    .execute(&pool)
                    .await
                    .expect("insert");
                }
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
        count as f64 / start.elapsed().as_secs_f64()
    };
    let bare_sequential = bare(half, 1, "seq").await;
    let bare_concurrent = bare(rest.len(), concurrency, "conc").await;

    // Signature verification on (certificate cached after the first message) and off, alternating
    // rounds over fresh messages, so that both see the same machine and a database of the same size.
    let signer = Signer::start().await;
    let per_round = n.max(rounds) / rounds;
    let signed: Vec<String> = (n..n + per_round * rounds)
        .map(|i| signer.sign(envelope(i)).to_string())
        .collect();
    let on = Arc::new(Trust {
        formats: [Format::Sns].into_iter().collect(),
        allowed_topics: Vec::new(),
        verifier: Some(signer.verifier),
        confirm_subscriptions: false,
    });
    let off = Arc::new(Trust {
        formats: [Format::Sns].into_iter().collect(),
        ..Trust::everything_unverified()
    });
    // CPU only: the trust checks of one message, cached certificate.
    let sample = &signed[..per_round.min(1000)];
    let (mut check_on, mut check_off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let trust = if round % 2 == 0 { &on } else { &off };
        let start = Instant::now();
        for b in sample {
            let outer = parse::json_object(b).expect("json");
            trust.admit(&outer).await.expect("admitted");
        }
        let rate = sample.len() as f64 / start.elapsed().as_secs_f64();
        if round % 2 == 0 {
            check_on.push(rate)
        } else {
            check_off.push(rate)
        }
    }
    let (mut with_on, mut with_off) = (Vec::new(), Vec::new());
    for (round, chunk) in signed.chunks(per_round).enumerate() {
        let trust = if round % 2 == 0 { &on } else { &off };
        let rate = admit_and_apply(&pool, &policy, trust, chunk, concurrency).await;
        if round % 2 == 0 {
            with_on.push(rate)
        } else {
            with_off.push(rate)
        }
    }
    let (check_on, check_off) = (median(&check_on), median(&check_off));
    let (with_on, with_off) = (median(&with_on), median(&with_off));

    println!(
        "Feedback application benchmark: PostgreSQL {version}, {n} SNS-wrapped notifications (60% delivery, 30% bounce, 10% complaint) naming Herald's own sends; parse only: {parse_rate:.0} msg/s"
    );
    print_rows(
        "bare event INSERT",
        &[
            Row::new(
                "feedback parse + apply, 1 at a time, msg/s",
                format!("{sequential:.0}"),
                format!("{bare_sequential:.0}"),
                sequential / bare_sequential,
            ),
            Row::new(
                &format!("feedback parse + apply, {concurrency} concurrent, msg/s"),
                format!("{concurrent:.0}"),
                format!("{bare_concurrent:.0}"),
                concurrent / bare_concurrent,
            ),
            Row::new(
                "feedback redelivered duplicates, 1 at a time, msg/s",
                format!("{duplicate_rate:.0}"),
                format!("{bare_sequential:.0}"),
                duplicate_rate / bare_sequential,
            ),
        ],
    );
    println!(
        "SNS signatures (SignatureVersion 1, RSA-2048, certificate cached), {rounds} alternating rounds of {per_round} messages, medians:"
    );
    print_rows(
        "verification off",
        &[
            Row::new(
                "trust checks only (parse + verify), 1 at a time, msg/s",
                format!("{check_on:.0}"),
                format!("{check_off:.0}"),
                check_on / check_off,
            ),
            Row::new(
                &format!("checks + apply, {concurrency} concurrent, msg/s"),
                format!("{with_on:.0}"),
                format!("{with_off:.0}"),
                with_on / with_off,
            ),
        ],
    );
    db.drop_db().await;
}
