//! Outbound webhooks: registered endpoints, their signing secrets (Standard Webhooks), and what
//! the delivery jobs read and record (docs/webhooks.md). Which URLs may be called: [`crate::outbound`].

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// Every event type an endpoint can subscribe to.
pub const EVENT_TYPES: [&str; 10] = [
    "email.sent",
    "email.delivered",
    "email.bounced",
    "email.complained",
    "email.failed",
    "email.suppressed",
    "suppression.created",
    "suppression.removed",
    "compliance.paused",
    "compliance.resumed",
];

/// An example body of each event type, as an endpoint that did not opt into addresses receives it
/// (the OpenAPI document's `webhooks` section; a test checks each against a real event's fields).
pub fn example_body(event_type: &str) -> serde_json::Value {
    use serde_json::json;
    let email = json!({
        "job_id": "01KBDB7CW0J3M4N5P6Q7R8S9TV",
        "template": "welcome",
        "category": "transactional",
        "ses_message_id": "0100019ae3b1a2c3-5f1e2d3c-0000-4a5b-9c8d-7e6f5a4b3c2d-000000",
        "recipient": "a***@example.com",
    });
    let (extra, sequence) = match event_type {
        "email.sent" => (json!({"sent_at": "2026-12-02T05:40:20.400Z"}), 1),
        "email.delivered" => (json!({"delivered_at": "2026-12-02T05:40:21.950Z"}), 2),
        "email.bounced" => (
            json!({"bounced_at": "2026-12-02T05:40:22.100Z", "bounce_type": "Permanent", "hard": true}),
            2,
        ),
        "email.complained" => (json!({"complained_at": "2026-12-02T07:12:03.000Z"}), 3),
        "email.failed" => (
            json!({"reason": "SES: MessageRejected: Email address is not verified", "ses_message_id": null}),
            1,
        ),
        "email.suppressed" => (json!({"ses_message_id": null}), 1),
        "suppression.created" => {
            return example(
                event_type,
                json!({"type": "bounce", "reason": "Permanent bounce (General)",
                       "transactional": true, "marketing": true,
                       "recipient": "a***@example.com"}),
            );
        }
        "suppression.removed" => {
            return example(
                event_type,
                json!({"type": "bounce", "recipient": "a***@example.com"}),
            );
        }
        "compliance.paused" => {
            return example(
                event_type,
                json!({"category": "marketing", "reason": "bounce rate 5.2 % over 24 h (threshold 5 %)"}),
            );
        }
        "compliance.resumed" => {
            return example(event_type, json!({"category": "marketing", "reason": null}));
        }
        _ => return serde_json::Value::Null,
    };
    let mut data = email;
    if let (Some(map), serde_json::Value::Object(more)) = (data.as_object_mut(), extra) {
        map.extend(more);
        map.insert("sequence".into(), json!(sequence));
    }
    example(event_type, data)
}

fn example(event_type: &str, data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type": event_type, "timestamp": "2026-12-02T05:40:20.400Z", "data": data})
}

/// How long a rotated-out secret still signs, beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);

/// The prefix of a signing secret as Standard Webhooks writes it.
pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh signing secret: 24 random bytes, base64 (store this; show it with [`SECRET_PREFIX`]).
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut key = [0u8; 24];
    getrandom::fill(&mut key)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// The Standard Webhooks signature of one message under one secret (base64 key, with or without
/// `whsec_`): `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`. `None` for a key that is
/// not base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .ok()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    ))
}

/// A registered endpoint, without its secrets.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// The operator's note.
    pub description: Option<String>,
    /// Event types it receives.
    pub events: Vec<String>,
    /// Whether payloads carry full addresses.
    pub include_addresses: bool,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// Why it was disabled (by an operator or after a day of failures).
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs (after a rotation).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Registered.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint<'a> {
    /// Checked URL.
    pub url: &'a str,
    /// Note.
    pub description: Option<&'a str>,
    /// Event types (known ones, distinct).
    pub events: &'a [String],
    /// Full addresses in payloads.
    pub include_addresses: bool,
    /// Signing secret (base64).
    pub secret: &'a str,
}

/// Registers an endpoint.
pub async fn create(conn: &mut PgConnection, e: &NewEndpoint<'_>) -> Result<Endpoint, sqlx::Error> {
    sqlx::query_as!(
        Endpoint,
        r#"INSERT INTO webhook_endpoints (url, description, events, include_addresses, secret)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, url, description, events, include_addresses, enabled, disabled_reason,
                     previous_secret_expires_at, created_at, updated_at"#,
        e.url,
        e.description,
        e.events,
        e.include_addresses,
        e.secret
    )
    .fetch_one(conn)
    .await
}

/// Every endpoint, oldest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as!(
        Endpoint,
        r#"SELECT id, url, description, events, include_addresses, enabled, disabled_reason,
                  previous_secret_expires_at, created_at, updated_at
           FROM webhook_endpoints ORDER BY id"#
    )
    .fetch_all(conn)
    .await
}

/// One endpoint.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as!(
        Endpoint,
        r#"SELECT id, url, description, events, include_addresses, enabled, disabled_reason,
                  previous_secret_expires_at, created_at, updated_at
           FROM webhook_endpoints WHERE id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// What a PATCH changes (`None` leaves a field as it is).
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    /// Checked URL.
    pub url: Option<&'a str>,
    /// Note (`Some(None)` clears it).
    pub description: Option<Option<&'a str>>,
    /// Event types.
    pub events: Option<&'a [String]>,
    /// Full addresses in payloads.
    pub include_addresses: Option<bool>,
    /// Enable or disable (an operator's disable records `disabled_reason`).
    pub enabled: Option<bool>,
    /// A new secret: the current one keeps signing beside it for [`ROTATION_OVERLAP`].
    pub new_secret: Option<&'a str>,
}

/// Applies a change; `None` for an unknown id.
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    c: &Change<'_>,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let overlap_until = Utc::now() + ROTATION_OVERLAP;
    sqlx::query_as!(
        Endpoint,
        r#"UPDATE webhook_endpoints SET
               url = coalesce($2, url),
               description = CASE WHEN $3 THEN $4 ELSE description END,
               events = coalesce($5, events),
               include_addresses = coalesce($6, include_addresses),
               enabled = coalesce($7, enabled),
               disabled_reason = CASE WHEN $7 IS NULL THEN disabled_reason
                                      WHEN $7 THEN NULL ELSE 'disabled by an operator' END,
               failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END,
               previous_secret = CASE WHEN $8::text IS NULL THEN previous_secret ELSE secret END,
               previous_secret_expires_at = CASE WHEN $8::text IS NULL THEN previous_secret_expires_at
                                                 ELSE $9 END,
               secret = coalesce($8, secret)
           WHERE id = $1
           RETURNING id, url, description, events, include_addresses, enabled, disabled_reason,
                     previous_secret_expires_at, created_at, updated_at"#,
        id,
        c.url,
        c.description.is_some(),
        c.description.flatten(),
        c.events,
        c.include_addresses,
        c.enabled,
        c.new_secret,
        overlap_until
    )
    .fetch_optional(conn)
    .await
}

/// Deletes an endpoint; whether it existed.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!("DELETE FROM webhook_endpoints WHERE id = $1", id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The secrets that sign a delivery now: the current one, and the previous one during a
/// rotation's overlap.
pub async fn signing_secrets(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Vec<String>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT secret, previous_secret, previous_secret_expires_at FROM webhook_endpoints WHERE id = $1",
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or_else(Vec::new, |r| {
        Secrets::of(r.secret, r.previous_secret, r.previous_secret_expires_at).0
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The worked example of the Standard Webhooks specification (standardwebhooks.com).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("whsec_!!!", "id", 1, b""), None);
    }
}

/// The queue of webhook deliveries (the outbox trigger queues one job per delivery).
pub const WEBHOOK_QUEUE: &str = "herald.webhooks";

/// Runs a delivery job is allowed: with the worker's backoff, about three days.
pub const DELIVERY_RUNS: u32 = 24;

/// The payload of a delivery job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookJob {
    /// The `webhook_deliveries` row.
    pub delivery_id: Uuid,
}

impl crate::jobs::QueueJob for WebhookJob {
    const QUEUE: &'static str = WEBHOOK_QUEUE;
}

/// One delivery with its event and endpoint, as the worker sends it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Event id: the `webhook-id`, the same on every attempt.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The email's job id and its place among that email's events.
    pub email_job_id: Option<String>,
    /// See [`Outgoing::email_job_id`].
    pub sequence: Option<i32>,
    /// The data without addresses.
    pub data: serde_json::Value,
    /// The address the event is about, if any.
    pub recipient: Option<String>,
    /// Endpoint id.
    pub endpoint_id: Uuid,
    /// Endpoint URL.
    pub url: String,
    /// Whether the endpoint gets full addresses.
    pub include_addresses: bool,
    /// Whether the endpoint is enabled.
    pub enabled: bool,
    /// The secrets to sign with: the current one, and the previous one during a rotation.
    pub secrets: Secrets,
}

/// Signing secrets, kept out of `Debug` output.
#[derive(Clone, Default)]
pub struct Secrets(pub Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// The current secret, and the previous one while its overlap lasts.
    fn of(current: String, previous: Option<String>, until: Option<DateTime<Utc>>) -> Self {
        let mut out = vec![current];
        if let (Some(previous), Some(until)) = (previous, until)
            && until > Utc::now()
        {
            out.push(previous);
        }
        Self(out)
    }

    /// The `webhook-signature` header: one `v1,…` per secret, space-separated.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0
            .iter()
            .filter_map(|s| sign(s, id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Outgoing {
    /// The request body: `{"type", "timestamp", "data"}` (Standard Webhooks), the data with the
    /// address (masked unless the endpoint opted in), the email's job id and sequence.
    pub fn body(&self) -> Vec<u8> {
        let mut data = self.data.clone();
        if let serde_json::Value::Object(map) = &mut data {
            if let Some(to) = &self.recipient {
                let shown = if self.include_addresses {
                    to.clone()
                } else {
                    crate::address::mask(to)
                };
                map.insert("recipient".into(), serde_json::Value::String(shown));
            }
            if let Some(seq) = self.sequence {
                map.insert("sequence".into(), serde_json::json!(seq));
            }
        }
        serde_json::to_vec(&serde_json::json!({
            "type": self.event_type,
            "timestamp": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        }))
        .unwrap_or_default()
    }

    /// The `webhook-id` header: the event's id, the same on every attempt and every endpoint.
    pub fn message_id(&self) -> String {
        format!("msg_{}", self.event_id.simple())
    }
}

/// Loads a delivery for sending, with its signing secrets; `None` when it is gone (its endpoint
/// was deleted).
pub async fn outgoing(
    conn: &mut PgConnection,
    delivery: Uuid,
) -> Result<Option<Outgoing>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT d.id AS delivery_id, d.status, e.id AS event_id, e.event_type, e.occurred_at,
                  e.email_job_id, e.sequence, e.data, e.recipient, p.id AS endpoint_id, p.url,
                  p.include_addresses, p.enabled, p.secret, p.previous_secret,
                  p.previous_secret_expires_at
           FROM webhook_deliveries d
           JOIN webhook_events e ON e.id = d.event_id
           JOIN webhook_endpoints p ON p.id = d.endpoint_id
           WHERE d.id = $1"#,
        delivery
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| Outgoing {
        delivery_id: r.delivery_id,
        status: r.status,
        event_id: r.event_id,
        event_type: r.event_type,
        occurred_at: r.occurred_at,
        email_job_id: r.email_job_id,
        sequence: r.sequence,
        data: r.data,
        recipient: r.recipient,
        endpoint_id: r.endpoint_id,
        url: r.url,
        include_addresses: r.include_addresses,
        enabled: r.enabled,
        secrets: Secrets::of(r.secret, r.previous_secret, r.previous_secret_expires_at),
    }))
}

/// Makes the deliveries (and their jobs) of up to `batch` events the triggers recorded; returns
/// how many events it took. Workers call it in a loop; concurrent callers take different events.
pub async fn fan_out(conn: &mut PgConnection, batch: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT webhook_fan_out($1) AS "taken!""#, batch)
        .fetch_one(conn)
        .await
}

/// One POST's result, to be recorded.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The HTTP status, if an answer came.
    pub status_code: Option<u16>,
    /// How long it took.
    pub latency_ms: u32,
    /// Why it failed, if it did.
    pub error: Option<&'a str>,
    /// The first bytes of the answer's body.
    pub excerpt: Option<&'a str>,
    /// The delivery's status after it: `delivered`, `pending` (another attempt comes) or `failed`.
    pub status: &'a str,
}

/// How long an endpoint may fail every delivery before it is disabled.
pub const DISABLE_AFTER: Duration = Duration::hours(24);

/// The `disabled_reason` of an endpoint the worker disabled after [`DISABLE_AFTER`] of failures.
pub const AUTO_DISABLED: &str = "every delivery failed for a day";

/// How many endpoints the worker disabled (a metric, and a warning on the console).
pub async fn auto_disabled(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM webhook_endpoints WHERE NOT enabled AND disabled_reason = $1"#,
        AUTO_DISABLED
    )
    .fetch_one(conn)
    .await
}

/// Records an attempt on its delivery and the endpoint's health; returns true when this attempt
/// disabled the endpoint (it had failed everything for [`DISABLE_AFTER`]).
pub async fn record_attempt(
    conn: &mut PgConnection,
    out: &Outgoing,
    a: &Attempt<'_>,
) -> Result<bool, sqlx::Error> {
    // One statement, so one round trip and its own transaction. The endpoint row is written only
    // when its failure streak starts, ends or reaches a day, not on every failed attempt.
    let since = Utc::now() - DISABLE_AFTER;
    let disabled = sqlx::query_scalar!(
        r#"WITH attempt AS (
               INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error, response_excerpt)
               VALUES ($1, $2, $3, $4, $5)
           ), delivery AS (
               UPDATE webhook_deliveries SET status = $6, attempts = attempts + 1 WHERE id = $1
           ), endpoint AS (
               UPDATE webhook_endpoints
               SET failing_since = CASE WHEN $6 = 'delivered' THEN NULL
                                        ELSE coalesce(failing_since, now()) END,
                   enabled = CASE WHEN $6 <> 'delivered' AND failing_since < $8 THEN false
                                  ELSE enabled END,
                   disabled_reason = CASE WHEN $6 <> 'delivered' AND failing_since < $8
                                          THEN $9 ELSE disabled_reason END
               WHERE id = $7
                 AND CASE WHEN $6 = 'delivered' THEN failing_since IS NOT NULL
                          ELSE failing_since IS NULL OR (failing_since < $8 AND enabled) END
               RETURNING ($6 <> 'delivered' AND NOT enabled) AS disabled
           )
           SELECT coalesce((SELECT disabled FROM endpoint), false) AS "disabled!""#,
        out.delivery_id,
        a.status_code.map(i32::from),
        i32::try_from(a.latency_ms).unwrap_or(i32::MAX),
        a.error,
        a.excerpt,
        a.status,
        out.endpoint_id,
        since,
        AUTO_DISABLED
    )
    .fetch_one(conn)
    .await?;
    Ok(disabled)
}

/// A delivery as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// Delivery id.
    pub id: Uuid,
    /// The `webhook-id` it is sent with.
    pub message_id: String,
    /// Event type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// Created (the event's commit).
    pub created_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub attempt_log: serde_json::Value,
}

/// An endpoint's deliveries, newest first, `limit` at most, before the `before` id.
pub async fn deliveries(
    conn: &mut PgConnection,
    endpoint: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    sqlx::query_as!(
        DeliveryView,
        r#"SELECT d.id, 'msg_' || replace(d.event_id::text, '-', '') AS "message_id!", e.event_type,
                  d.status, d.attempts, d.created_at,
                  coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'at', a.attempted_at, 'status_code', a.status_code,
                                'latency_ms', a.latency_ms, 'error', a.error,
                                'response', a.response_excerpt) ORDER BY a.id)
                            FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]') AS "attempt_log!"
           FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
           WHERE d.endpoint_id = $1 AND ($2::uuid IS NULL OR d.id < $2)
           ORDER BY d.id DESC LIMIT $3"#,
        endpoint,
        before,
        limit
    )
    .fetch_all(conn)
    .await
}

/// Sends a delivery again (any status): back to `pending` with a new job. False when the delivery
/// is not the endpoint's.
pub async fn redeliver(
    conn: &mut PgConnection,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<bool, crate::jobs::JobError> {
    let found = sqlx::query!(
        "UPDATE webhook_deliveries SET status = 'pending' WHERE id = $1 AND endpoint_id = $2",
        delivery,
        endpoint
    )
    .execute(&mut *conn)
    .await?;
    if found.rows_affected() == 0 {
        return Ok(false);
    }
    crate::jobs::enqueue(
        conn,
        &WebhookJob {
            delivery_id: delivery,
        },
        crate::jobs::EnqueueOptions {
            max_attempts: DELIVERY_RUNS,
            ..Default::default()
        },
    )
    .await?;
    Ok(true)
}

/// Deletes up to `limit` events recorded before `before`, their deliveries and attempts with them
/// (retention: far past the three days a delivery is retried); returns how many events.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    // Events are keyed by UUIDv7, which begins with its time in ms: the smallest id of `before`'s
    // millisecond bounds the older ones, so the primary key serves.
    let ms = u128::try_from(before.timestamp_millis()).unwrap_or(0);
    let bound = Uuid::from_u128(ms << 80);
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM webhook_events WHERE id < $1 ORDER BY id LIMIT $2)
         DELETE FROM webhook_events e USING doomed WHERE e.id = doomed.id",
        bound,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}
