//! The webhook outbox: an event exists exactly when the change that causes it committed, only for
//! kinds an enabled endpoint subscribes to, numbered per email, one delivery per endpoint.

use chrono::Utc;
use herald_shared::email::Category;
use herald_shared::email::ledger::{self, Feedback, LockWait};
use herald_shared::suppressions::{self, SuppressionType};
use herald_shared::webhooks::{self, NewEndpoint};
use sqlx::{Connection, PgConnection, PgPool};

async fn endpoint(conn: &mut PgConnection, events: &[&str]) -> uuid::Uuid {
    let events: Vec<String> = events.iter().map(|e| (*e).to_owned()).collect();
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
    sqlx::query_as("SELECT event_type, email_job_id, sequence FROM webhook_events ORDER BY id")
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
        std::slice::from_ref(&id),
        &[Some(format!("ses-{id}"))],
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
        ledger::record_feedback(&mut conn, &message, Feedback::Delivery, Utc::now(), None)
            .await
            .expect("delivery")
    );
    assert!(
        ledger::record_feedback(
            &mut conn,
            &message,
            Feedback::Bounce,
            Utc::now(),
            Some("Permanent")
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
    suppressions::add_recorded(
        &mut conn,
        "Bo@Example.com",
        SuppressionType::Manual,
        Some("asked"),
        "test",
    )
    .await
    .expect("add");
    suppressions::remove_recorded(&mut conn, "bo@example.com", Some("mistake"), "test")
        .await
        .expect("remove");
    sqlx::query("UPDATE compliance_pauses SET paused = true, reason = 'bounce rate' WHERE category = 'marketing'")
        .execute(&mut *conn)
        .await
        .expect("pause");
    herald_shared::compliance::resume(&mut conn, &[Category::Marketing])
        .await
        .expect("resume");
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
