//! `webhook_deliveries` and `webhook_attempts` as a state machine, and the only code that writes
//! them after the relay made them. One delivery per (event, endpoint); every transition is one
//! guarded statement that reports whether it happened:
//!
//! | from → to | by |
//! |---|---|
//! | (none) → pending | the relay ([`super::outbox::fan_out`], SQL `webhook_fan_out`), with its job |
//! | pending → delivered, pending, failed | [`record_attempt`]: a POST's answer (pending: another run comes) |
//! | pending, delivered, failed → pending | [`redeliver`]: an operator sends it again, with a new job |
//!
//! A delivery that is no longer `pending` when an attempt is recorded keeps its status (a rescued
//! run's late answer cannot undo what a newer run recorded); the attempt itself is still logged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::endpoints::{AUTO_DISABLED, DISABLE_AFTER, HEALTH_AFTER_ATTEMPT};
use super::signing::Secrets;
use super::{DELIVERY_RUNS, EventType, WebhookJob};

/// A delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "varchar", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its (next) POST.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Given up: a final refusal, the endpoint disabled, or the last run failed.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// One delivery with its event and endpoint, as the worker sends it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Its status when loaded.
    pub status: DeliveryStatus,
    /// Event id: the `webhook-id`, the same on every attempt.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: EventType,
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

/// Loads a delivery for sending, with its event and its endpoint's signing secrets; `None` when it
/// is gone (its endpoint was deleted).
pub async fn outgoing(
    conn: &mut PgConnection,
    delivery: Uuid,
) -> Result<Option<Outgoing>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT d.id AS delivery_id, d.status AS "status: DeliveryStatus", e.id AS event_id,
                  e.event_type AS "event_type: EventType", e.occurred_at,
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
    /// The delivery's status after it: `Delivered`, `Pending` (another run comes) or `Failed`.
    pub status: DeliveryStatus,
}

/// What recording an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The delivery moved (it was `pending`); false when a newer run had already decided it.
    pub moved: bool,
    /// This attempt disabled the endpoint (it had failed everything for [`DISABLE_AFTER`]).
    pub disabled: bool,
}

/// pending → `a.status`: logs the attempt, moves the delivery if it is still pending, and the
/// endpoint's health with it, in one statement (one round trip, its own transaction).
pub async fn record_attempt(
    conn: &mut PgConnection,
    out: &Outgoing,
    a: &Attempt<'_>,
) -> Result<Recorded, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH attempt AS (
                 INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error, response_excerpt)
                 VALUES ($1, $2, $3, $4, $5)
             ), delivery AS (
                 UPDATE webhook_deliveries SET status = $6, attempts = attempts + 1
                 WHERE id = $1 AND status = 'pending'
                 RETURNING id
             ), {HEALTH_AFTER_ATTEMPT}
             SELECT EXISTS (SELECT 1 FROM delivery) AS moved,
                    coalesce((SELECT disabled FROM endpoint), false) AS disabled"
        )
    });
    let since = Utc::now() - DISABLE_AFTER;
    let (moved, disabled): (bool, bool) = sqlx::query_as(SQL.as_str())
        .bind(out.delivery_id)
        .bind(a.status_code.map(i32::from))
        .bind(i32::try_from(a.latency_ms).unwrap_or(i32::MAX))
        .bind(a.error)
        .bind(a.excerpt)
        .bind(a.status.as_str())
        .bind(out.endpoint_id)
        .bind(since)
        .bind(AUTO_DISABLED)
        .fetch_one(conn)
        .await?;
    Ok(Recorded { moved, disabled })
}

/// A delivery as `GET /v1/webhooks/{id}/deliveries` and the console list it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// Delivery id.
    pub id: Uuid,
    /// The `webhook-id` it is sent with.
    pub message_id: String,
    /// Event type.
    pub event_type: EventType,
    /// Its status.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i32,
    /// Created (the event's commit).
    #[serde(serialize_with = "crate::time::ms")]
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
        r#"SELECT d.id, 'msg_' || replace(d.event_id::text, '-', '') AS "message_id!",
                  e.event_type AS "event_type: EventType", d.status AS "status: DeliveryStatus",
                  d.attempts, d.created_at,
                  coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'at', api_time(a.attempted_at), 'status_code', a.status_code,
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

/// any → pending with a new job: an operator sends a delivery again. False when the delivery is
/// not the endpoint's.
pub async fn redeliver(
    conn: &mut PgConnection,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<bool, crate::jobs::JobError> {
    let found = sqlx::query!(
        "UPDATE webhook_deliveries SET status = 'pending'
         WHERE id = $1 AND endpoint_id = $2 AND status IN ('pending', 'delivered', 'failed')",
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
