//! How fast SES feedback is applied in-process (parse + database work), without SQS transport.
//!
//! `DATABASE_URL=postgres://… cargo bench -p herald-worker --bench feedback`; creates and drops its
//! own database. BENCH_FEEDBACK (5000 messages), BENCH_FEEDBACK_CONCURRENCY (8).

use std::sync::Arc;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

use common::{BenchDb, Row, print_rows};
use herald_worker::feedback::{Outcome, Policy, apply, parse};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An SNS-wrapped notification: mostly deliveries, some soft and hard bounces, a few complaints.
fn message(i: usize) -> String {
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
    .to_string()
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
        allowed_topics: Vec::new(),
    });

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

    println!(
        "Feedback application benchmark: PostgreSQL {version}, {n} SNS-wrapped notifications (60% delivery, 30% bounce, 10% complaint); parse only: {parse_rate:.0} msg/s"
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
    db.drop_db().await;
}
