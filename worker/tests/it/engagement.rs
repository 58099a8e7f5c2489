//! SES event publishing in one process: a record of each of the six types the consumer reads besides
//! bounces, complaints and deliveries (SES's documented shapes, `worker/tests/fixtures`), each in an
//! SNS envelope signed as SNS signs, through moto's SQS and the feedback consumer, to the email's
//! timeline, the metrics and webhook events carrying the email's tags; a forged record ends in the
//! dead-letter queue and one about a message Herald never sent is recorded as `unmatched`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_shared::email::{self, Category, EmailContent, EmailJob, ledger};
use herald_shared::jobs::EnqueueOptions;
use herald_shared::suppressions::{self, SuppressionType};
use herald_shared::webhooks::{self, EventType};
use herald_worker::job::drain;
use herald_worker::ses::RecordingSender;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::feedback::{Moto, eventually};
use crate::helpers::{FROM, context_with_sender, delivery, setup_queue, worker_config};
use crate::sns_trust::{CertServer, KEYS, known_only, signed, trusted};

/// The `eventType`s, as SES spells them.
const TYPES: [&str; 6] = [
    "Open",
    "Click",
    "DeliveryDelay",
    "Reject",
    "Rendering Failure",
    "Subscription",
];

/// The sample of `kind` for `message` sent to `to`.
pub(crate) fn sample(kind: &str, message: &str, to: &str) -> Value {
    let all: Value =
        serde_json::from_str(include_str!("../fixtures/ses-event-publishing.json")).expect("json");
    let text = all[kind]
        .to_string()
        .replace("{message_id}", message)
        .replace("{recipient}", to);
    serde_json::from_str(&text).expect("sample")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn signed_engagement_records_reach_the_timeline_the_metrics_and_webhooks(pool: PgPool) {
    setup_queue(&pool).await;
    let mut conn = pool.acquire().await.expect("conn");
    let secret = webhooks::new_secret().expect("secret");
    let hook = webhooks::create(
        &mut conn,
        &webhooks::NewEndpoint {
            url: "https://hooks.example.com/herald",
            description: None,
            events: &[
                EventType::EmailOpened,
                EventType::EmailClicked,
                EventType::EmailDeliveryDelayed,
                EventType::EmailRejected,
            ],
            include_addresses: false,
            secret: &secret,
        },
    )
    .await
    .expect("endpoint");
    let to = "reader@example.com";
    let job = EmailJob {
        envelope: email::message::Envelope {
            tags: BTreeMap::from([("campaign".to_owned(), "welcome".to_owned())]),
            ..Default::default()
        },
        to: to.to_owned(),
        category: Category::Marketing,
        content: EmailContent::Raw {
            subject: "Welcome".into(),
            text: Some("Hello".into()),
            html: Some("<p>Hello</p>".into()),
        },
    };
    let options = EnqueueOptions {
        max_attempts: 8,
        run_at: None,
        idempotency_key: None,
    };
    let id = email::enqueue(&mut conn, &job, options)
        .await
        .expect("enqueue");
    let sender = Arc::new(RecordingSender::default());
    let ctx = context_with_sender(&pool, sender, &worker_config(&pool, &[]));
    drain::<EmailJob>(ctx).await.expect("drain");
    let row = delivery(&pool, &id.to_string()).await;
    assert_eq!(row.status, "sent");
    let message = row.ses_message_id.clone().expect("message id");

    let server = CertServer::start().await;
    let url = server.url("good");
    let moto = Moto::new().await;
    for kind in TYPES {
        moto.put_raw(&signed(&sample(kind, &message, to), 2, &KEYS[0], &url).to_string())
            .await;
    }
    // Signed, then changed on the way: the signature no longer matches.
    let mut forged = signed(&sample("Click", &message, to), 1, &KEYS[0], &url);
    forged["Message"] = json!(
        forged["Message"]
            .as_str()
            .expect("message")
            .replace("app.example.com", "evil.example")
    );
    moto.put_raw(&forged.to_string()).await;
    // Signed, but about a message Herald never sent.
    moto.put_raw(&signed(&sample("Click", "ses-unknown", to), 2, &KEYS[0], &url).to_string())
        .await;

    let consumer = moto.consumer_trusting(&pool, known_only(), trusted(&server));
    let metrics = consumer.metrics.clone();
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer.run(token.clone()));
    eventually(
        "every record applied",
        Duration::from_secs(30),
        async || {
            let mut c = pool.acquire().await.expect("conn");
            herald_shared::feedback::for_message(&mut c, &message)
                .await
                .expect("events")
                .len()
                == TYPES.len()
                && !herald_shared::feedback::for_message(&mut c, "ses-unknown")
                    .await
                    .expect("events")
                    .is_empty()
        },
    )
    .await;
    let mut dlq = Vec::new();
    eventually(
        "the forgery in the DLQ",
        Duration::from_secs(60),
        async || {
            dlq.extend(moto.dlq_bodies().await);
            !dlq.is_empty()
        },
    )
    .await;
    token.cancel();
    task.await.expect("consumer");
    assert_eq!(dlq, vec![forged.to_string()], "only the forgery");

    // The timeline names each, with what it adds; nothing of the forgery.
    let view = email::view::find(&mut conn, id, FROM)
        .await
        .expect("view")
        .expect("email");
    let entry = |event: &str| {
        view.timeline
            .iter()
            .find(|e| e.event == event)
            .unwrap_or_else(|| panic!("no {event} in {:?}", view.timeline))
            .clone()
    };
    for event in [
        "open",
        "click",
        "delivery_delay",
        "reject",
        "rendering_failure",
        "subscription",
    ] {
        assert_eq!(entry(event).recipient.as_deref(), Some(to), "{event}");
    }
    let click = entry("click").detail.expect("detail");
    assert_eq!(click["link"], "https://app.example.com/welcome?step=1");
    assert_eq!(
        entry("reject").detail.expect("detail")["reason"],
        "Bad content"
    );
    assert_eq!(
        entry("delivery_delay").detail.expect("detail")["delay_type"],
        "TransientCommunicationFailure"
    );
    assert!(
        !serde_json::to_string(&view.timeline)
            .expect("json")
            .contains("evil.example")
    );
    let open_at = entry("open").at.expect("time");
    assert_eq!(
        open_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "2026-12-07T10:05:19.652Z"
    );

    // A reject is final: the row stays sent, it is marked, and an operator's retry sends nothing.
    assert!(view.rejected_at.is_some());
    assert_eq!(view.status, "sent");
    assert_eq!(
        ledger::operator_retry(&mut conn, &id.to_string())
            .await
            .expect("retry"),
        ledger::RetryAnswer::AlreadySent
    );
    // Leaving every topic through SES's list management stops marketing mail only.
    let s = suppressions::find(&mut conn, to)
        .await
        .expect("find")
        .expect("suppressed");
    assert_eq!(s.suppression_type, SuppressionType::Unsubscribe);
    assert!(s.suppress_marketing && !s.suppress_transactional);

    // Counted per type; the unmatched one as unmatched.
    let text = metrics.render(&pool).await.expect("metrics");
    for kind in [
        "open",
        "click",
        "delivery_delay",
        "reject",
        "rendering_failure",
        "subscription",
        "unmatched",
    ] {
        let line = format!("herald_feedback_events_total{{type=\"{kind}\"}} 1");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    assert!(text.contains(r#"herald_feedback_rejected_total{reason="signature"} 1"#));

    // One webhook event each (the two final kinds both `email.rejected`), with the email's tags and
    // no address; the unmatched click made none.
    webhooks::fan_out(&mut conn, 100).await.expect("fan out");
    let listed = webhooks::deliveries(&mut conn, hook.id, None, 100)
        .await
        .expect("deliveries");
    let mut types: Vec<&str> = listed.iter().map(|d| d.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "email.clicked",
            "email.delivery_delayed",
            "email.opened",
            "email.rejected",
            "email.rejected"
        ]
    );
    for d in &listed {
        let out = webhooks::outgoing(&mut conn, d.id)
            .await
            .expect("outgoing")
            .expect("found");
        let body: Value = serde_json::from_slice(&out.body()).expect("json");
        assert_eq!(
            body["data"]["tags"],
            json!({"campaign": "welcome"}),
            "{body}"
        );
        assert_eq!(body["data"]["job_id"], id.to_string());
        assert!(!body.to_string().contains(to), "no address: {body}");
        match d.event_type {
            EventType::EmailClicked => {
                assert_eq!(
                    body["data"]["link"],
                    "https://app.example.com/welcome?step=1"
                );
                assert_eq!(body["data"]["clicked_at"], "2026-12-07T10:06:25.570Z");
            }
            EventType::EmailRejected => {
                let kind = body["data"]["kind"].as_str().expect("kind");
                assert!(["reject", "rendering_failure"].contains(&kind), "{body}");
                assert!(body["data"]["reason"].is_string(), "{body}");
            }
            EventType::EmailOpened => {
                assert_eq!(body["data"]["opened_at"], "2026-12-07T10:05:19.652Z");
            }
            _ => {
                assert_eq!(body["data"]["delay_type"], "TransientCommunicationFailure");
            }
        }
    }
}
