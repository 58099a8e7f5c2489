//! The webhook outbox: an event exists exactly when the change that causes it committed, only for
//! kinds an enabled endpoint subscribes to, numbered per email, one delivery per endpoint.

use chrono::Utc;
use herald_shared::email::Category;
use herald_shared::email::ledger::{self, Feedback, LockWait};
use herald_shared::suppressions::{self, SuppressionType};
use herald_shared::webhooks::{self, NewEndpoint};
use sqlx::{Connection, PgConnection, PgPool};

async fn endpoint(conn: &mut PgConnection, events: &[&str]) -> uuid::Uuid {
    let events: Vec<webhooks::EventType> = events
        .iter()
        .map(|e| webhooks::EventType::parse(e).expect("a known event type"))
        .collect();
    webhooks::create(
        conn,
        &NewEndpoint {
            url: "http://127.0.0.1:9/hook",
            description: None,
            events: &events,
            include_addresses: false,
            secret: "c2VjcmV0",
        },
    )
    .await
    .expect("endpoint")
    .id
}

async fn events(conn: &mut PgConnection) -> Vec<(String, Option<String>, Option<i32>)> {
    sqlx::query_as(
        "SELECT event_type, email_job_id, sequence FROM webhook_events ORDER BY occurred_at, id",
    )
    .fetch_all(conn)
    .await
    .expect("events")
}

async fn sent_email(conn: &mut PgConnection) -> String {
    let id = format!("job-{}", ulid::Ulid::generate());
    ledger::insert(
        conn,
        &id,
        "ada@example.com",
        "welcome",
        Category::Transactional,
    )
    .await
    .expect("insert");
    assert!(ledger::claim(conn, &id, None).await.expect("claim"));
    ledger::mark_sent_many(
        conn,
        &ledger::Accepted::many(std::slice::from_ref(&id), &[Some(format!("ses-{id}"))]),
        LockWait::Session,
    )
    .await
    .expect("sent");
    id
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn events_are_recorded_with_their_change_and_only_for_subscribed_kinds(pool: PgPool) {
    // The trigger queues each delivery's job in apalis's table.
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    // No endpoint: nothing is recorded.
    sent_email(&mut conn).await;
    assert!(events(&mut conn).await.is_empty());

    let first = endpoint(&mut conn, &["email.sent", "email.bounced"]).await;
    let second = endpoint(&mut conn, &["email.sent"]).await;
    let id = sent_email(&mut conn).await;
    let message = format!("ses-{id}");
    assert!(
        ledger::record_feedback(
            &mut conn,
            &message,
            Feedback::Delivery,
            Utc::now(),
            None,
            "a@example.com"
        )
        .await
        .expect("delivery")
    );
    assert!(
        ledger::record_feedback(
            &mut conn,
            &message,
            Feedback::Bounce,
            Utc::now(),
            Some("Permanent"),
            "a@example.com"
        )
        .await
        .expect("bounce")
    );
    assert_eq!(
        events(&mut conn).await,
        vec![
            ("email.sent".to_owned(), Some(id.clone()), Some(1)),
            ("email.bounced".to_owned(), Some(id.clone()), Some(2)),
        ],
        "delivered is not subscribed; the sequence counts only recorded events"
    );
    // The change's transaction wrote the events only; the relay makes their deliveries.
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&mut *conn)
        .await
        .expect("count");
    assert_eq!(pending, 0, "no delivery before the relay runs");
    assert_eq!(webhooks::fan_out(&mut conn, 100).await.expect("fan out"), 2);
    assert_eq!(
        webhooks::fan_out(&mut conn, 100).await.expect("fan out"),
        0,
        "an event is fanned out once"
    );
    let deliveries: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT d.endpoint_id, e.event_type FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
         WHERE d.status = 'pending' ORDER BY e.id, d.endpoint_id",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("deliveries");
    let mut expected = vec![
        (first, "email.sent".to_owned()),
        (second, "email.sent".to_owned()),
    ];
    expected.sort();
    expected.push((first, "email.bounced".to_owned()));
    assert_eq!(deliveries, expected, "one delivery per subscribed endpoint");
    let queued: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.id, convert_from(j.job, 'UTF8') FROM apalis.jobs j
         WHERE j.job_type = 'herald.webhooks' AND j.status = 'Pending' AND j.max_attempts = 24",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("jobs");
    assert_eq!(queued.len(), 3, "each delivery has its job: {queued:?}");
    for (id, payload) in &queued {
        assert!(id.parse::<ulid::Ulid>().is_ok(), "{id} is a ULID");
        assert!(payload.contains("delivery_id"), "{payload}");
    }
    let data: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM webhook_events WHERE event_type = 'email.bounced'")
            .fetch_one(&mut *conn)
            .await
            .expect("data");
    assert_eq!(data["hard"], true);
    assert_eq!(data["ses_message_id"], message.as_str());
    assert!(
        !data.to_string().contains("ada@"),
        "no address in the data: {data}"
    );

    // A change rolled back leaves no event.
    let before = events(&mut conn).await.len();
    let mut tx = conn.begin().await.expect("begin");
    sent_email(&mut tx).await;
    tx.rollback().await.expect("rollback");
    assert_eq!(events(&mut conn).await.len(), before);

    // A disabled endpoint subscribes to nothing.
    webhooks::update(
        &mut conn,
        first,
        &webhooks::Change {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await
    .expect("disable");
    webhooks::update(
        &mut conn,
        second,
        &webhooks::Change {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await
    .expect("disable");
    sent_email(&mut conn).await;
    assert_eq!(events(&mut conn).await.len(), before);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn relays_share_the_waiting_events_and_deliver_to_endpoints_subscribed_when_they_run(
    pool: PgPool,
) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    let kept = endpoint(&mut conn, &["email.sent"]).await;
    let dropped = endpoint(&mut conn, &["email.sent"]).await;
    for _ in 0..5 {
        sent_email(&mut conn).await;
    }
    // An endpoint disabled before the relay ran gets none of the events.
    webhooks::update(
        &mut conn,
        dropped,
        &webhooks::Change {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await
    .expect("disable");
    // Two relays at once: the first holds two events in its open transaction, the second takes
    // the other three without waiting for it.
    let mut first = pool.begin().await.expect("begin");
    assert_eq!(webhooks::fan_out(&mut first, 2).await.expect("first"), 2);
    let mut second = pool.acquire().await.expect("conn");
    let taken = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        webhooks::fan_out(&mut second, 10),
    )
    .await
    .expect("the second relay does not wait for the first")
    .expect("second");
    assert_eq!(taken, 3);
    first.commit().await.expect("commit");
    assert_eq!(webhooks::fan_out(&mut conn, 10).await.expect("again"), 0);
    let per_endpoint: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT d.endpoint_id, count(*), count(DISTINCT d.event_id) FROM webhook_deliveries d
         GROUP BY d.endpoint_id",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("deliveries");
    assert_eq!(per_endpoint, vec![(kept, 5, 5)]);
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = 'herald.webhooks'")
            .fetch_one(&mut *conn)
            .await
            .expect("jobs");
    assert_eq!(jobs, 5, "one job per delivery");

    // A relay that rolls back (a crash) leaves its events waiting for the next.
    sent_email(&mut conn).await;
    let mut crashed = pool.begin().await.expect("begin");
    assert_eq!(webhooks::fan_out(&mut crashed, 10).await.expect("taken"), 1);
    crashed.rollback().await.expect("rollback");
    assert_eq!(webhooks::fan_out(&mut conn, 10).await.expect("retaken"), 1);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn suppression_and_compliance_changes_are_events_too(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    endpoint(
        &mut conn,
        &[
            "suppression.created",
            "suppression.removed",
            "compliance.paused",
            "compliance.resumed",
        ],
    )
    .await;
    suppress_and_pause(&mut conn, "Bo@Example.com").await;
    let kinds: Vec<String> = events(&mut conn).await.into_iter().map(|e| e.0).collect();
    assert_eq!(
        kinds,
        [
            "suppression.created",
            "suppression.removed",
            "compliance.paused",
            "compliance.resumed"
        ]
    );
    let recipient: Option<String> = sqlx::query_scalar(
        "SELECT recipient FROM webhook_events WHERE event_type = 'suppression.created'",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("recipient");
    assert_eq!(recipient.as_deref(), Some("bo@example.com"));
}

/// The keys of a JSON object, nested objects' keys as `outer.inner`.
fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = v {
        for (k, inner) in map {
            out.push(format!("{prefix}{k}"));
            keys(inner, &format!("{prefix}{k}."), out);
        }
    }
    out.sort();
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn every_event_type_has_the_fields_its_documented_example_shows(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    endpoint(&mut conn, &webhooks::EventType::names()).await;
    // Each event type caused by the change that causes it in production.
    let id = sent_email(&mut conn).await;
    let message = format!("ses-{id}");
    for (kind, bounce) in [
        (Feedback::Delivery, None),
        (Feedback::Bounce, Some("Permanent")),
        (Feedback::Complaint, None),
    ] {
        assert!(
            ledger::record_feedback(
                &mut conn,
                &message,
                kind,
                Utc::now(),
                bounce,
                "a@example.com"
            )
            .await
            .expect("feedback")
        );
    }
    for (kind, detail) in [
        (
            ledger::Engagement::DeliveryDelay,
            serde_json::json!({"delay_type": "TransientCommunicationFailure",
                               "expiration_time": "2026-12-03T05:40:20.400Z"}),
        ),
        (
            ledger::Engagement::Open,
            serde_json::json!({"user_agent": "Mozilla/5.0"}),
        ),
        (
            ledger::Engagement::Click,
            serde_json::json!({"link": "https://app.example.com/welcome",
                               "link_tags": {"campaign": ["welcome"]}, "user_agent": "Mozilla/5.0"}),
        ),
        (
            ledger::Engagement::Reject,
            serde_json::json!({"reason": "Bad content"}),
        ),
    ] {
        assert!(
            ledger::record_engagement(
                &mut conn,
                &message,
                kind,
                Utc::now(),
                "a@example.com",
                &detail
            )
            .await
            .expect("engagement")
        );
    }
    for (n, suppressed) in [(0, false), (1, true)] {
        let job = format!("job-{n}-{}", ulid::Ulid::generate());
        ledger::insert(
            &mut conn,
            &job,
            "bo@example.com",
            "welcome",
            Category::Transactional,
        )
        .await
        .expect("insert");
        if suppressed {
            assert!(ledger::suppress(&mut conn, &job).await.expect("suppress"));
        } else {
            assert!(ledger::claim(&mut conn, &job, None).await.expect("claim"));
            assert!(
                ledger::fail(&mut conn, &job, "SES refused", false)
                    .await
                    .expect("fail")
            );
        }
    }
    suppress_and_pause(&mut conn, "cy@example.com").await;
    webhooks::fan_out(&mut conn, 100).await.expect("fan out");

    let deliveries: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .expect("deliveries");
    let mut seen = Vec::new();
    for delivery in deliveries {
        let out = webhooks::outgoing(&mut conn, delivery)
            .await
            .expect("outgoing")
            .expect("found");
        let body: serde_json::Value = serde_json::from_slice(&out.body()).expect("json");
        let example = out.event_type.example_body();
        let (mut real, mut documented) = (Vec::new(), Vec::new());
        keys(&body, "", &mut real);
        keys(&example, "", &mut documented);
        assert_eq!(
            real, documented,
            "{}: {body} vs the example {example}",
            out.event_type
        );
        assert_eq!(body["type"], example["type"]);
        // Times in one format: RFC 3339, UTC, `Z`, milliseconds, as the API answers them.
        for (k, v) in body["data"].as_object().expect("data") {
            if k.ends_with("_at") {
                let t = v.as_str().unwrap_or_default();
                assert!(
                    t.len() == 24
                        && t.ends_with('Z')
                        && chrono::DateTime::parse_from_rfc3339(t).is_ok(),
                    "{}: data.{k} = {t:?}",
                    out.event_type
                );
            }
        }
        seen.push(out.event_type);
    }
    seen.sort_by_key(|t| t.as_str());
    let mut all = webhooks::EventType::ALL.to_vec();
    all.sort_by_key(|t| t.as_str());
    assert_eq!(seen, all, "one event of each type");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn only_an_endpoint_that_opted_in_gets_full_addresses(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    let events = [
        webhooks::EventType::EmailSent,
        webhooks::EventType::SuppressionCreated,
    ];
    let mut endpoints = Vec::new();
    for include_addresses in [false, true] {
        let id = webhooks::create(
            &mut conn,
            &NewEndpoint {
                url: "http://127.0.0.1:9/hook",
                description: None,
                events: &events,
                include_addresses,
                secret: "c2VjcmV0",
            },
        )
        .await
        .expect("endpoint")
        .id;
        endpoints.push((id, include_addresses));
    }
    sent_email(&mut conn).await;
    suppressions::add_recorded(
        &mut conn,
        "Cy@Example.com",
        SuppressionType::Manual,
        None,
        "test",
    )
    .await
    .expect("add");
    assert_eq!(webhooks::fan_out(&mut conn, 10).await.expect("fan out"), 2);
    let deliveries: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT id, endpoint_id FROM webhook_deliveries")
            .fetch_all(&mut *conn)
            .await
            .expect("deliveries");
    assert_eq!(deliveries.len(), 4);
    for (delivery, endpoint) in deliveries {
        let out = webhooks::outgoing(&mut conn, delivery)
            .await
            .expect("outgoing")
            .expect("found");
        let body = String::from_utf8(out.body()).expect("utf8");
        let opted_in = endpoints.iter().any(|(id, yes)| *id == endpoint && *yes);
        let full = if out.event_type == webhooks::EventType::EmailSent {
            "ada@example.com"
        } else {
            "cy@example.com"
        };
        assert_eq!(body.contains(full), opted_in, "{body}");
        if !opted_in {
            assert!(body.contains("@example.com"), "a masked address: {body}");
        }
    }
    // The data stored for every endpoint carries no address.
    let data: Vec<String> = sqlx::query_scalar("SELECT data::text FROM webhook_events")
        .fetch_all(&mut *conn)
        .await
        .expect("data");
    assert!(data.iter().all(|d| !d.contains("example.com")), "{data:?}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_day_of_failures_disables_an_endpoint_and_the_metric_shows_it(pool: PgPool) {
    use herald_shared::webhooks::Attempt;
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    let id = endpoint(&mut conn, &["email.sent"]).await;
    sent_email(&mut conn).await;
    webhooks::fan_out(&mut conn, 10).await.expect("fan out");
    let delivery: uuid::Uuid = sqlx::query_scalar("SELECT id FROM webhook_deliveries")
        .fetch_one(&mut *conn)
        .await
        .expect("delivery");
    let out = webhooks::outgoing(&mut conn, delivery)
        .await
        .expect("outgoing")
        .expect("found");
    let failed = Attempt {
        status_code: Some(503),
        latency_ms: 12,
        error: Some("HTTP 503: will retry"),
        excerpt: Some("busy"),
        status: webhooks::DeliveryStatus::Pending,
    };
    assert!(
        !webhooks::record_attempt(&mut conn, &out, &failed)
            .await
            .expect("first")
            .disabled
    );
    let (enabled, since, stamped) = state(&mut conn, id).await.expect("state");
    assert!(enabled && since.is_some(), "a failure starts the streak");
    // Later failures within the day leave the endpoint's row alone.
    assert!(
        !webhooks::record_attempt(&mut conn, &out, &failed)
            .await
            .expect("second")
            .disabled
    );
    assert_eq!(
        state(&mut conn, id).await.expect("state"),
        (true, since, stamped)
    );

    let metrics = herald_shared::metrics::Metrics::default();
    let scrape = metrics.render(&pool).await.expect("metrics");
    assert!(
        scrape.contains("herald_webhook_endpoints_disabled 0"),
        "{scrape}"
    );

    // A day on, the next failure disables it.
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '25 hours' WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await
    .expect("age");
    assert!(
        webhooks::record_attempt(&mut conn, &out, &failed)
            .await
            .expect("third")
            .disabled
    );
    let found = webhooks::find(&mut conn, id)
        .await
        .expect("find")
        .expect("endpoint");
    assert!(!found.enabled);
    assert_eq!(
        found.disabled_reason.as_deref(),
        Some(webhooks::AUTO_DISABLED)
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM webhook_deliveries WHERE id = $1")
        .bind(delivery)
        .fetch_one(&mut *conn)
        .await
        .expect("attempts");
    assert_eq!(attempts, 3, "every attempt is counted");
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1")
            .bind(delivery)
            .fetch_one(&mut *conn)
            .await
            .expect("kept");
    assert_eq!(kept, 3);
    tokio::time::sleep(herald_shared::metrics::GAUGE_REFRESH).await;
    let scrape = metrics.render(&pool).await.expect("metrics");
    assert!(
        scrape.contains("herald_webhook_endpoints_disabled 1"),
        "{scrape}"
    );

    // A success ends a streak.
    sqlx::query("UPDATE webhook_endpoints SET enabled = true, failing_since = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .expect("re-enable");
    let delivered = Attempt {
        status_code: Some(200),
        status: webhooks::DeliveryStatus::Delivered,
        error: None,
        ..failed
    };
    assert!(
        !webhooks::record_attempt(&mut conn, &out, &delivered)
            .await
            .expect("ok")
            .disabled
    );
    let (enabled, since, _) = state(&mut conn, id).await.expect("state");
    assert!(enabled && since.is_none());
}

type EndpointState = (bool, Option<chrono::DateTime<Utc>>, chrono::DateTime<Utc>);

async fn state(conn: &mut PgConnection, id: uuid::Uuid) -> Result<EndpointState, sqlx::Error> {
    sqlx::query_as("SELECT enabled, failing_since, updated_at FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Adds and removes a suppression of `address`, then pauses and resumes marketing: the four
/// events that are not about an email.
async fn suppress_and_pause(conn: &mut PgConnection, address: &str) {
    suppressions::add_recorded(
        conn,
        address,
        SuppressionType::Manual,
        Some("asked"),
        "test",
    )
    .await
    .expect("add");
    suppressions::remove_recorded(conn, &address.to_lowercase(), Some("mistake"), "test")
        .await
        .expect("remove");
    herald_shared::compliance::pause(
        &mut *conn,
        herald_shared::email::Category::Marketing,
        "bounce rate",
    )
    .await
    .expect("pause");
    herald_shared::compliance::resume(conn, &[Category::Marketing])
        .await
        .expect("resume");
}

/// Every event-type name the trigger functions spell is one of `EventType`'s (the behaviour test
/// above checks each is recorded; this catches a name only a rare branch would record).
#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_trigger_functions_spell_only_known_event_types(pool: PgPool) {
    let sources: Vec<String> = sqlx::query_scalar(
        "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname LIKE 'webhook\\_%'",
    )
    .fetch_all(&pool)
    .await
    .expect("functions");
    assert!(sources.len() >= 4, "the webhook functions exist");
    let literal =
        regex_lite::Regex::new(r"'((?:email|suppression|compliance)\.[a-z_]+)'").expect("regex");
    let mut spelled: Vec<String> = sources
        .iter()
        .flat_map(|s| literal.captures_iter(s).map(|c| c[1].to_owned()))
        .collect();
    spelled.sort();
    spelled.dedup();
    assert!(spelled.len() >= 7, "literals found: {spelled:?}");
    for name in &spelled {
        assert!(
            webhooks::EventType::parse(name).is_some(),
            "a trigger records {name}, which EventType does not know"
        );
    }
    // The ledger's events are spelled 'email.' || status for these statuses.
    for status in ["sent", "failed", "suppressed"] {
        assert!(webhooks::EventType::parse(&format!("email.{status}")).is_some());
    }
}

/// Each delivery transition is guarded: an attempt moves only a pending delivery (a rescued run's
/// late answer cannot undo what a newer run recorded, though the attempt is still logged), and
/// redelivery moves only the endpoint's own delivery.
#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn an_attempt_moves_only_a_pending_delivery_and_redelivery_only_the_endpoints_own(
    pool: PgPool,
) {
    use webhooks::{Attempt, DeliveryStatus};
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    let id = endpoint(&mut conn, &["suppression.created"]).await;
    suppressions::add_recorded(
        &mut conn,
        "dee@example.com",
        SuppressionType::Manual,
        None,
        "test",
    )
    .await
    .expect("add");
    assert_eq!(webhooks::fan_out(&mut conn, 10).await.expect("fan out"), 1);
    let delivery = webhooks::deliveries(&mut conn, id, None, 10)
        .await
        .expect("deliveries")
        .pop()
        .expect("one");
    let out = webhooks::outgoing(&mut conn, delivery.id)
        .await
        .expect("outgoing")
        .expect("found");
    let attempt = |status| Attempt {
        status_code: Some(if status == DeliveryStatus::Delivered {
            200
        } else {
            500
        }),
        latency_ms: 1,
        error: None,
        excerpt: None,
        status,
    };
    let first = webhooks::record_attempt(&mut conn, &out, &attempt(DeliveryStatus::Delivered))
        .await
        .expect("first");
    assert!(first.moved && !first.disabled);
    let late = webhooks::record_attempt(&mut conn, &out, &attempt(DeliveryStatus::Failed))
        .await
        .expect("late");
    assert!(!late.moved, "a delivered delivery stays delivered");
    let now = webhooks::deliveries(&mut conn, id, None, 10)
        .await
        .expect("deliveries")
        .pop()
        .expect("one");
    assert_eq!((now.status, now.attempts), (DeliveryStatus::Delivered, 1));
    assert_eq!(
        now.attempt_log.as_array().map(Vec::len),
        Some(2),
        "both POSTs are logged"
    );

    let other = endpoint(&mut conn, &["suppression.created"]).await;
    assert!(
        !webhooks::redeliver(&mut conn, other, delivery.id)
            .await
            .expect("other")
    );
    assert!(
        webhooks::redeliver(&mut conn, id, delivery.id)
            .await
            .expect("own")
    );
    let again = webhooks::outgoing(&mut conn, delivery.id)
        .await
        .expect("outgoing")
        .expect("found");
    assert_eq!(again.status, DeliveryStatus::Pending);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn each_recipient_s_first_report_is_an_event_of_its_own(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let mut conn = pool.acquire().await.expect("conn");
    let hook = endpoint(&mut conn, &["email.bounced", "email.complained"]).await;
    // Sent to ada@example.com (the ledger's first recipient) and, say, a cc.
    let id = sent_email(&mut conn).await;
    let message = format!("ses-{id}");
    let cc = "cc@other.example";
    for (who, kind, bounce) in [
        (cc, Feedback::Bounce, Some("Transient")),
        // The same recipient again: no new event.
        (cc, Feedback::Bounce, Some("Permanent")),
        ("ada@example.com", Feedback::Bounce, Some("Permanent")),
        ("ada@example.com", Feedback::Complaint, None),
    ] {
        assert!(
            ledger::record_feedback(&mut conn, &message, kind, Utc::now(), bounce, who)
                .await
                .expect("feedback")
        );
    }
    assert_eq!(webhooks::fan_out(&mut conn, 100).await.expect("fan out"), 3);
    let mut seen = Vec::new();
    for d in webhooks::deliveries(&mut conn, hook, None, 10)
        .await
        .expect("deliveries")
    {
        let out = webhooks::outgoing(&mut conn, d.id)
            .await
            .expect("outgoing")
            .expect("found");
        let body: serde_json::Value = serde_json::from_slice(&out.body()).expect("json");
        seen.push((
            body["type"].as_str().unwrap_or_default().to_owned(),
            body["data"]["recipient"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body["data"]["bounce_type"].as_str().map(str::to_owned),
        ));
    }
    seen.sort();
    let (ada, cc) = (
        herald_shared::address::mask("ada@example.com"),
        herald_shared::address::mask(cc),
    );
    assert_eq!(
        seen,
        vec![
            (
                "email.bounced".to_owned(),
                ada.clone(),
                Some("Permanent".to_owned())
            ),
            ("email.bounced".to_owned(), cc, Some("Transient".to_owned())),
            ("email.complained".to_owned(), ada, None),
        ]
    );
}
