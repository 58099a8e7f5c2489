//! The feedback consumer against moto's SQS and SNS (queue with a DLQ, maxReceiveCount 2, subscribed
//! to a topic), and the policy through `apply` on a real database.
//!
//! Long on purpose: the formats, the policy and the consumer share one set of message builders.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use herald_shared::email::Category;
use herald_worker::feedback::{FeedbackConsumer, FeedbackStats, Outcome, Policy, Trust, apply};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::e2e::{emulator, moto_sqs, unique};
use crate::helpers::setup_queue;

/// The policy as it was before feedback had to name one of Herald's own sends: these tests use
/// made-up message ids (the trust tests in `sns_trust` use the default).
pub(crate) fn policy() -> Policy {
    Policy {
        soft_bounce_threshold: 3,
        soft_bounce_window: chrono::Duration::days(30),
        require_known_message: false,
    }
}

pub(crate) fn bounce(
    kind: &str,
    feedback_id: &str,
    message_id: &str,
    recipients: &[&str],
    at: &str,
) -> Value {
    json!({
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": kind, "bounceSubType": "General", "feedbackId": feedback_id, "timestamp": at,
            "bouncedRecipients": recipients.iter().map(|r| json!({"emailAddress": r, "status": "5.1.1"})).collect::<Vec<_>>()
        },
        "mail": {"messageId": message_id, "timestamp": at, "source": "noreply@herald.test", "destination": recipients}
    })
}

fn complaint(feedback_id: &str, recipient: &str, kind: Option<&str>) -> Value {
    let mut c = json!({"complainedRecipients": [{"emailAddress": recipient}], "timestamp": "2026-11-26T10:00:00Z", "feedbackId": feedback_id});
    if let Some(k) = kind {
        c["complaintFeedbackType"] = json!(k);
    }
    json!({"eventType": "Complaint", "complaint": c, "mail": {"messageId": format!("m-{feedback_id}")}})
}

async fn suppression(pool: &PgPool, email: &str) -> Option<(String, bool, bool, i32)> {
    herald_shared::suppressions::find(&mut pool.acquire().await.expect("conn"), email)
        .await
        .expect("query")
        .map(|s| {
            (
                s.suppression_type.as_str().to_owned(),
                s.suppress_transactional,
                s.suppress_marketing,
                s.bounce_count,
            )
        })
}

/// A ledger row for `job` to `to` that SES accepted as `message`, as the send path leaves it.
pub(crate) async fn sent_row(pool: &PgPool, job: &str, to: &str, message: &str) {
    use herald_shared::email::ledger;
    let mut conn = pool.acquire().await.expect("conn");
    ledger::insert(&mut conn, job, to, "raw", Category::Transactional)
        .await
        .expect("insert");
    assert!(ledger::claim(&mut conn, job, None).await.expect("claim"));
    ledger::mark_sent_many(
        &mut conn,
        &ledger::Accepted::many(&[job.to_owned()], &[Some(message.to_owned())]),
        ledger::LockWait::Session,
    )
    .await
    .expect("sent");
}

/// The ledger row of `job`.
async fn ledger_row(pool: &PgPool, job: &str) -> herald_shared::email::ledger::Record {
    herald_shared::email::ledger::record(&mut pool.acquire().await.expect("conn"), job)
        .await
        .expect("query")
        .expect("ledger row")
}

/// moto's SQS and SNS, with a fresh queue, DLQ and topic.
pub(crate) struct Moto {
    pub(crate) sqs: aws_sdk_sqs::Client,
    http: reqwest::Client,
    pub(crate) queue_url: String,
    pub(crate) dlq_url: String,
    pub(crate) topic_arn: String,
}

impl Moto {
    pub(crate) async fn new() -> Self {
        Self::with_visibility_timeout(1).await
    }

    /// A queue whose received messages stay hidden for `secs` (a message goes to the DLQ on its
    /// third receive).
    pub(crate) async fn with_visibility_timeout(secs: u32) -> Self {
        let sqs = moto_sqs().await;
        let name = unique("fb");
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .expect("dlq")
            .queue_url
            .expect("url");
        let dlq_arn = Self::arn(&sqs, &dlq_url).await;
        let queue_url = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::VisibilityTimeout, secs.to_string())
            .attributes(
                QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}).to_string(),
            )
            .send()
            .await
            .expect("queue")
            .queue_url
            .expect("url");
        let queue_arn = Self::arn(&sqs, &queue_url).await;
        let http = reqwest::Client::new();
        let created = Self::sns(&http, &[("Action", "CreateTopic"), ("Name", &name)]).await;
        let topic_arn = between(&created, "<TopicArn>", "</TopicArn>");
        Self::sns(
            &http,
            &[
                ("Action", "Subscribe"),
                ("TopicArn", &topic_arn),
                ("Protocol", "sqs"),
                ("Endpoint", &queue_arn),
            ],
        )
        .await;
        Self {
            sqs,
            http,
            queue_url,
            dlq_url,
            topic_arn,
        }
    }

    async fn arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
        sqs.get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("attributes")
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("arn")
    }

    /// SNS's query API, which moto serves without checking signatures.
    async fn sns(http: &reqwest::Client, form: &[(&str, &str)]) -> String {
        let res = http
            .post(emulator())
            .header("content-type", "application/x-www-form-urlencoded")
            // moto routes by the credential scope's service name; it does not check the signature.
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20261126/us-east-1/sns/aws4_request, SignedHeaders=host, Signature=00",
            )
            .body(
                form.iter()
                    .map(|(k, v)| format!("{k}={}", urlencode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            )
            .send()
            .await
            .expect("sns");
        assert!(res.status().is_success(), "SNS {form:?} failed");
        res.text().await.expect("body")
    }

    pub(crate) async fn publish(&self, message: &Value) {
        Self::sns(
            &self.http,
            &[
                ("Action", "Publish"),
                ("TopicArn", &self.topic_arn),
                ("Message", &message.to_string()),
            ],
        )
        .await;
    }

    pub(crate) async fn put_raw(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// A consumer that takes every format unsigned, as moto's SNS signs nothing.
    pub(crate) fn consumer(&self, pool: &PgPool, policy: Policy) -> FeedbackConsumer {
        self.consumer_trusting(pool, policy, Trust::everything_unverified())
    }

    pub(crate) fn consumer_trusting(
        &self,
        pool: &PgPool,
        policy: Policy,
        trust: Trust,
    ) -> FeedbackConsumer {
        FeedbackConsumer {
            sqs: self.sqs.clone(),
            queue_url: self.queue_url.clone(),
            pool: pool.clone(),
            policy: Arc::new(policy),
            trust: Arc::new(trust),
            concurrency: 1,
            wait_seconds: 1,
            stats: Arc::new(FeedbackStats::default()),
            metrics: Arc::default(),
            dead_letter: Arc::default(),
        }
    }

    pub(crate) async fn dlq_bodies(&self) -> Vec<String> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .expect("dlq");
        out.messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.body)
            .collect()
    }
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text.find(start).expect("start tag") + start.len();
    let to = text[from..].find(end).expect("end tag") + from;
    text[from..to].to_owned()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn sns_and_bare_feedback_suppress_every_recipient_once_even_when_delivered_twice(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let moto = Moto::new().await;
    sent_row(&pool, "j1", "ann@example.com", "ses-1").await;
    let hard = bounce(
        "Permanent",
        "fb-hard",
        "ses-1",
        &["Ann@Example.com", "BOB@example.org"],
        "2026-11-26T10:00:00Z",
    );
    moto.publish(&hard).await;
    moto.publish(&hard).await; // the same notification twice
    moto.put_raw(&complaint("fb-c", "Carol@Example.net", Some("abuse")).to_string())
        .await;
    let consumer = moto.consumer(&pool, policy());
    let stats = consumer.stats.clone();
    assert_eq!(
        consumer.drain().await,
        Ok(3),
        "three messages, each handled once"
    );

    assert_eq!(
        suppression(&pool, "ann@example.com").await,
        Some(("bounce".into(), true, true, 0))
    );
    assert_eq!(
        suppression(&pool, "bob@example.org").await,
        Some(("bounce".into(), true, true, 0))
    );
    assert_eq!(
        suppression(&pool, "carol@example.net").await,
        Some(("complaint".into(), true, true, 0))
    );
    assert_eq!(
        stats.applied.load(Ordering::Relaxed),
        3,
        "two bounce recipients and one complaint"
    );
    assert_eq!(
        stats.duplicates.load(Ordering::Relaxed),
        2,
        "the second delivery changed nothing"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM email_feedback_events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(events, 3);
    let row = ledger_row(&pool, "j1").await;
    let (bounced, kind) = (row.bounced_at, row.bounce_type);
    assert!(bounced.is_some());
    assert_eq!(kind.as_deref(), Some("Permanent"));
    let left = moto
        .sqs
        .receive_message()
        .queue_url(&moto.queue_url)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert!(left.is_empty(), "applied messages are deleted");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn poison_messages_end_in_the_dead_letter_queue_while_the_consumer_keeps_working(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let moto = Moto::new().await;
    let garbage = [
        "this is not json",
        r#"{"Type":"Notification","Message":"{broken"}"#,
        r#"{"notificationType":"Bounce"}"#,
    ];
    for g in garbage {
        moto.put_raw(g).await;
    }
    moto.put_raw(&json!({"Type": "SubscriptionConfirmation", "TopicArn": moto.topic_arn, "SubscribeURL": "https://example.invalid"}).to_string()).await;
    let consumer = moto.consumer(&pool, policy());
    let stats = consumer.stats.clone();
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer.run(token.clone()));
    // A good message after the poison ones is still applied.
    moto.publish(&bounce(
        "Permanent",
        "fb-good",
        "ses-2",
        &["dave@example.com"],
        "2026-11-26T10:00:00Z",
    ))
    .await;
    eventually("the good message", Duration::from_secs(20), async || {
        suppression(&pool, "dave@example.com").await.is_some()
    })
    .await;
    let mut in_dlq: Vec<String> = Vec::new();
    eventually(
        "the poison messages in the DLQ",
        Duration::from_secs(30),
        async || {
            in_dlq = moto.dlq_bodies().await;
            in_dlq.len() >= garbage.len()
        },
    )
    .await;
    token.cancel();
    task.await.expect("consumer");
    for g in garbage {
        assert!(
            in_dlq.iter().any(|b| b == g),
            "{g:?} is not in the DLQ: {in_dlq:?}"
        );
    }
    assert!(
        stats.poison.load(Ordering::Relaxed) >= 3,
        "each poison message is counted"
    );
    assert_eq!(
        stats.control.load(Ordering::Relaxed),
        1,
        "the subscription message is deleted, not retried"
    );
    assert!(
        !in_dlq
            .iter()
            .any(|b| b.contains("SubscriptionConfirmation"))
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_message_from_a_topic_not_allowed_is_not_applied(pool: PgPool) {
    setup_queue(&pool).await;
    let moto = Moto::new().await;
    moto.publish(&bounce(
        "Permanent",
        "fb-x",
        "ses-3",
        &["eve@example.com"],
        "2026-11-26T10:00:00Z",
    ))
    .await;
    let consumer = moto.consumer_trusting(
        &pool,
        policy(),
        Trust {
            allowed_topics: vec!["arn:aws:sns:us-east-1:123456789012:the-real-topic".into()],
            ..Trust::everything_unverified()
        },
    );
    let stats = consumer.stats.clone();
    let metrics = consumer.metrics.clone();
    // Refused, the message is left for the dead-letter queue: a slow drain may see it again.
    assert!(consumer.drain().await.expect("drain") >= 1);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
    let text = metrics.render(&pool).await.expect("metrics");
    assert!(
        text.contains(r#"herald_feedback_rejected_total{reason="topic"} 1"#),
        "{text}"
    );
    assert_eq!(suppression(&pool, "eve@example.com").await, None);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM email_feedback_events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(events, 0);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn soft_bounces_are_counted_and_suppress_at_the_threshold_within_the_window(pool: PgPool) {
    let p = policy();
    let old = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    // An old soft bounce is outside the window and does not count.
    apply(
        &pool,
        &p,
        &bounce("Transient", "s0", "m0", &["Soft@Example.com"], &old).to_string(),
        None,
    )
    .await
    .expect("old");
    for (i, kind) in ["Transient", "Undetermined"].iter().enumerate() {
        let now = chrono::Utc::now().to_rfc3339();
        apply(
            &pool,
            &p,
            &bounce(
                kind,
                &format!("s{}", i + 1),
                "m",
                &["soft@example.com"],
                &now,
            )
            .to_string(),
            None,
        )
        .await
        .expect("soft");
        assert_eq!(
            suppression(&pool, "soft@example.com").await,
            None,
            "{} soft bounces do not suppress",
            i + 1
        );
    }
    // Delivered twice, the second soft bounce is not counted twice.
    let now = chrono::Utc::now().to_rfc3339();
    let again = apply(
        &pool,
        &p,
        &bounce("Undetermined", "s2", "m", &["soft@example.com"], &now).to_string(),
        None,
    )
    .await
    .expect("dup");
    assert_eq!(
        again,
        Outcome::Applied {
            new: 0,
            duplicates: 1,
            kinds: vec![]
        }
    );
    assert_eq!(suppression(&pool, "soft@example.com").await, None);
    apply(
        &pool,
        &p,
        &bounce("Transient", "s3", "m", &["SOFT@example.com"], &now).to_string(),
        None,
    )
    .await
    .expect("third");
    assert_eq!(
        suppression(&pool, "soft@example.com").await,
        Some(("bounce".into(), true, true, 3))
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn complaints_suppress_except_not_spam_and_suppressions_are_raised_never_lowered(
    pool: PgPool,
) {
    let p = policy();
    apply(
        &pool,
        &p,
        &complaint("c1", "fan@example.com", Some("not-spam")).to_string(),
        None,
    )
    .await
    .expect("not-spam");
    assert_eq!(suppression(&pool, "fan@example.com").await, None);
    apply(
        &pool,
        &p,
        &complaint("c2", "angry@example.com", None).to_string(),
        None,
    )
    .await
    .expect("complaint");
    assert_eq!(
        suppression(&pool, "angry@example.com").await,
        Some(("complaint".into(), true, true, 0))
    );
    // A later hard bounce does not lower a complaint to a bounce.
    apply(
        &pool,
        &p,
        &bounce(
            "Permanent",
            "b1",
            "m",
            &["angry@example.com"],
            "2026-11-26T11:00:00Z",
        )
        .to_string(),
        None,
    )
    .await
    .expect("bounce");
    assert_eq!(
        suppression(&pool, "angry@example.com").await,
        Some(("complaint".into(), true, true, 0))
    );
    // An unsubscribe (marketing only) becomes transactional too after a hard bounce.
    herald_shared::suppressions::raise(
        &mut pool.acquire().await.expect("conn"),
        &herald_shared::suppressions::Raise::new(
            "reader@example.com",
            herald_shared::suppressions::SuppressionType::Unsubscribe,
            false,
            true,
        ),
    )
    .await
    .expect("unsubscribe");
    assert_eq!(
        suppression(&pool, "reader@example.com").await,
        Some(("unsubscribe".into(), false, true, 0))
    );
    let bridge = json!({"source": "aws.ses", "detail-type": "Email Bounced",
        "detail": {"eventType": "Bounce", "bounce": {"bounceType": "Permanent", "bounceSubType": "NoEmail", "feedbackId": "b2",
            "timestamp": "2026-11-26T12:00:00Z", "bouncedRecipients": [{"emailAddress": "Reader@example.com"}]},
            "mail": {"messageId": "m-b2"}}});
    apply(&pool, &p, &bridge.to_string(), None)
        .await
        .expect("eventbridge bounce");
    assert_eq!(
        suppression(&pool, "reader@example.com").await,
        Some(("bounce".into(), true, true, 0))
    );
    // Deliveries are noted on the ledger.
    sent_row(&pool, "j9", "ok@example.com", "ses-ok").await;
    let delivery = json!({"notificationType": "Delivery", "delivery": {"recipients": ["ok@example.com"], "timestamp": "2026-11-26T10:00:01Z"}, "mail": {"messageId": "ses-ok"}});
    apply(&pool, &p, &delivery.to_string(), Some("sqs-1"))
        .await
        .expect("delivery");
    let delivered = ledger_row(&pool, "j9").await.delivered_at;
    assert!(delivered.is_some());
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_database_outage_leaves_the_message_for_redelivery(pool: PgPool) {
    setup_queue(&pool).await;
    let moto = Moto::new().await;
    moto.publish(&bounce(
        "Permanent",
        "fb-outage",
        "ses-9",
        &["frank@example.com"],
        "2026-11-26T10:00:00Z",
    ))
    .await;
    // A pool whose database cannot be reached.
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/nowhere")
        .expect("lazy pool");
    let broken = moto.consumer(&down, policy());
    assert!(broken.drain().await.expect("drain") >= 1);
    assert!(broken.stats.db_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(suppression(&pool, "frank@example.com").await, None);

    // The database is back: the same message is redelivered and applied.
    let healthy = moto.consumer(&pool, policy());
    let token = CancellationToken::new();
    let task = tokio::spawn(healthy.run(token.clone()));
    eventually(
        "the redelivered message",
        Duration::from_secs(20),
        async || suppression(&pool, "frank@example.com").await.is_some(),
    )
    .await;
    token.cancel();
    task.await.expect("consumer");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn soft_bounces_complaints_and_eventbridge_events_through_the_queue_follow_the_policy(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let moto = Moto::new().await;
    herald_shared::suppressions::raise(
        &mut pool.acquire().await.expect("conn"),
        &herald_shared::suppressions::Raise::new(
            "reader@example.com",
            herald_shared::suppressions::SuppressionType::Unsubscribe,
            false,
            true,
        ),
    )
    .await
    .expect("unsubscribe");
    let now = chrono::Utc::now().to_rfc3339();
    for i in 0..3 {
        moto.publish(&bounce(
            "Transient",
            &format!("soft-{i}"),
            "m-soft",
            &["Soft@Example.com"],
            &now,
        ))
        .await;
    }
    moto.publish(&complaint("c-ns", "fan@example.com", Some("not-spam")))
        .await;
    moto.publish(&complaint("c-abuse", "Angry@Example.com", Some("abuse")))
        .await;
    let bridge = json!({"source": "aws.ses", "detail-type": "Email Bounced",
        "detail": {"eventType": "Bounce", "bounce": {"bounceType": "Permanent", "bounceSubType": "General", "feedbackId": "eb-1",
            "timestamp": now, "bouncedRecipients": [{"emailAddress": "READER@example.com"}]}, "mail": {"messageId": "m-eb"}}});
    moto.put_raw(&bridge.to_string()).await;
    let consumer = moto.consumer(&pool, policy());
    let stats = consumer.stats.clone();
    assert_eq!(consumer.drain().await, Ok(6));
    assert_eq!(stats.applied.load(Ordering::Relaxed), 6);
    assert_eq!(
        suppression(&pool, "soft@example.com").await,
        Some(("bounce".into(), true, true, 3))
    );
    assert_eq!(
        suppression(&pool, "fan@example.com").await,
        None,
        "not-spam is not a complaint"
    );
    assert_eq!(
        suppression(&pool, "angry@example.com").await,
        Some(("complaint".into(), true, true, 0))
    );
    assert_eq!(
        suppression(&pool, "reader@example.com").await,
        Some(("bounce".into(), true, true, 0)),
        "the unsubscribe was raised"
    );
}

/// `n` sent emails an hour old, SES message ids `{prefix}1` … `{prefix}n`.
async fn sent_an_hour_ago(pool: &PgPool, n: i32, prefix: &str) {
    sqlx::query(
        "INSERT INTO email_deliveries (job_id, recipient, template, category, status, ses_message_id, sent_at)
         SELECT 'j' || g, 'r' || g || '@example.com', 'raw', 'transactional', 'sent', $2 || g, now() - interval '1 hour'
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(prefix)
    .execute(pool)
    .await
    .expect("sends");
}

/// The compliance guard's 24-hour rate over all categories (counted from 100 sends).
async fn rate_24h(pool: &PgPool) -> herald_shared::compliance::Rate {
    let settings = herald_shared::compliance::Settings {
        min_sends: 100,
        ..Default::default()
    };
    let mut conn = pool.acquire().await.expect("conn");
    herald_shared::compliance::rates(&mut conn, &settings)
        .await
        .expect("rates")
        .into_iter()
        .find(|r| r.window == "24h" && r.category == "all")
        .expect("all")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_duplicate_bounce_does_not_move_the_compliance_rate(pool: PgPool) {
    sent_an_hour_ago(&pool, 300, "ses-").await;
    let rate = async |pool: &PgPool| {
        let all = rate_24h(pool).await;
        (all.bounces, all.sends)
    };
    let p = policy();
    let hard = bounce(
        "Permanent",
        "fb-1",
        "ses-7",
        &["r7@example.com"],
        "2026-11-26T10:00:00Z",
    )
    .to_string();
    apply(&pool, &p, &hard, None).await.expect("first");
    assert_eq!(rate(&pool).await, (1, 300));
    apply(&pool, &p, &hard, None)
        .await
        .expect("the same event again");
    assert_eq!(
        rate(&pool).await,
        (1, 300),
        "a duplicate event does not move the rate"
    );
    // SES reporting the same message's bounce again under another feedback id: still one message.
    let again = bounce(
        "Permanent",
        "fb-2",
        "ses-7",
        &["r7@example.com"],
        "2026-11-26T10:05:00Z",
    )
    .to_string();
    apply(&pool, &p, &again, None)
        .await
        .expect("another report");
    assert_eq!(
        rate(&pool).await,
        (1, 300),
        "bounces count once per message"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn rates_count_recipients_and_each_recipient_bounces_or_complains_once(pool: PgPool) {
    sent_an_hour_ago(&pool, 200, "ses-").await;
    // Email j7 (ses-7) went to four recipients: r7 and three more.
    {
        let mut conn = pool.acquire().await.expect("conn");
        herald_shared::email::ledger::set_recipients(&mut conn, "j7", 4)
            .await
            .expect("recipients");
    }
    let rate = async |pool: &PgPool| {
        let all = rate_24h(pool).await;
        (all.bounces, all.complaints, all.sends)
    };
    assert_eq!(rate(&pool).await, (0, 0, 203), "sends count recipients");
    let p = policy();
    let hard = |id: &str, to: &[&str]| {
        bounce("Permanent", id, "ses-7", to, "2026-11-26T10:00:00Z").to_string()
    };
    apply(
        &pool,
        &p,
        &hard("fb-1", &["r7@example.com", "cc7@example.com"]),
        None,
    )
    .await
    .expect("two recipients bounce");
    assert_eq!(rate(&pool).await, (2, 0, 203));
    // The cc reported again under another feedback id, and a soft bounce: no more hard bounces.
    apply(&pool, &p, &hard("fb-2", &["cc7@example.com"]), None)
        .await
        .expect("again");
    apply(
        &pool,
        &p,
        &bounce(
            "Transient",
            "fb-3",
            "ses-7",
            &["bcc7@example.com"],
            "2026-11-26T10:00:00Z",
        )
        .to_string(),
        None,
    )
    .await
    .expect("soft");
    assert_eq!(rate(&pool).await, (2, 0, 203), "each recipient once");
    // A one-recipient email still counts one bounce however often it is reported.
    apply(
        &pool,
        &p,
        &bounce(
            "Permanent",
            "fb-4",
            "ses-9",
            &["r9@example.com"],
            "2026-11-26T10:00:00Z",
        )
        .to_string(),
        None,
    )
    .await
    .expect("r9");
    apply(
        &pool,
        &p,
        &bounce(
            "Permanent",
            "fb-5",
            "ses-9",
            &["r9@example.com"],
            "2026-11-26T10:01:00Z",
        )
        .to_string(),
        None,
    )
    .await
    .expect("r9 again");
    assert_eq!(rate(&pool).await, (3, 0, 203));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_not_spam_report_never_counts_toward_the_complaint_rate(pool: PgPool) {
    sent_an_hour_ago(&pool, 200, "m-c").await;
    let complaints = async |pool: &PgPool| rate_24h(pool).await.complaints;
    let p = policy();
    // complaint("c1", ..) names message m-c1, one of the 200 sent above.
    apply(
        &pool,
        &p,
        &complaint("c1", "r1@example.com", Some("not-spam")).to_string(),
        None,
    )
    .await
    .expect("not-spam");
    assert_eq!(complaints(&pool).await, 0, "not-spam is not a complaint");
    let complained: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT complained_at FROM email_deliveries WHERE ses_message_id = 'm-c1'",
    )
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(complained, None);
    apply(
        &pool,
        &p,
        &complaint("c2", "r2@example.com", Some("abuse")).to_string(),
        None,
    )
    .await
    .expect("abuse");
    assert_eq!(complaints(&pool).await, 1, "a real complaint counts");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_refused_message_on_a_queue_without_redrive_is_recorded_once_and_not_received_again(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let mut moto = Moto::new().await;
    // A queue of its own with no redrive policy: nothing would ever move a refused message.
    moto.queue_url = moto
        .sqs
        .create_queue()
        .queue_name(unique("fb-nodlq"))
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    // Bare SES JSON while only signed SNS is trusted: refused (format).
    moto.put_raw(&complaint("fb-forged", "victim@example.com", Some("abuse")).to_string())
        .await;
    let trust = Trust {
        formats: [herald_worker::feedback::parse::Format::Sns]
            .into_iter()
            .collect(),
        allowed_topics: Vec::new(),
        verifier: None,
        confirm_subscriptions: false,
    };
    let consumer = moto.consumer_trusting(&pool, policy(), trust);
    assert_eq!(consumer.dead_letter_url().await, Ok(None));
    let stats = consumer.stats.clone();
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer.run(token.clone()));
    eventually("the refusal", Duration::from_secs(20), async || {
        stats.rejected.load(Ordering::Relaxed) >= 1
    })
    .await;
    // Several visibility timeouts later, it has not come back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    token.cancel();
    task.await.expect("consumer");
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 1, "recorded once");
    let counted: i64 =
        sqlx::query_scalar("SELECT count FROM feedback_rejections WHERE reason = 'format'")
            .fetch_one(&pool)
            .await
            .expect("counted");
    assert_eq!(counted, 1);
    assert_eq!(suppression(&pool, "victim@example.com").await, None);
    let left = moto
        .sqs
        .get_queue_attributes()
        .queue_url(&moto.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let attrs = left.attributes().expect("attributes");
    assert_eq!(
        (
            attrs
                .get(&QueueAttributeName::ApproximateNumberOfMessages)
                .map(String::as_str),
            attrs
                .get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .map(String::as_str)
        ),
        (Some("0"), Some("0")),
        "the refused message is gone from the queue"
    );
}
