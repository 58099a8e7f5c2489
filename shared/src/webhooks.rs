//! Outbound webhooks: registered endpoints, their signing secrets (Standard Webhooks), the rule for
//! which URLs may be called, and what the delivery jobs read and record (docs/webhooks.md).

use std::net::IpAddr;

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::AppEnv;

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

/// How long a rotated-out secret still signs, beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);

/// The prefix of a signing secret as Standard Webhooks writes it.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a webhook URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not an absolute http(s) URL with a host.
    #[error("url must be an absolute http(s) URL: {0}")]
    Malformed(String),
    /// `http` in production.
    #[error("url must use https when APP_ENV=production")]
    NotHttps,
    /// User name or password in the URL.
    #[error("url must not carry a user name or password")]
    Credentials,
    /// The host is (or resolves to) an address Herald must not call in production.
    #[error(
        "url's host resolves to a loopback, link-local, private or otherwise internal address ({0})"
    )]
    Internal(IpAddr),
    /// The host does not resolve.
    #[error("url's host does not resolve: {0}")]
    Unresolved(String),
}

/// Whether `ip` is one a webhook must not reach in production: loopback, private (RFC 1918, ULA),
/// link-local (cloud metadata lives there), carrier-grade NAT, unspecified, multicast, broadcast,
/// documentation and benchmarking ranges, and IPv4 written inside IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b
        }
    }
}

/// Checks a webhook URL: absolute http(s) with a host and no credentials; in production https only
/// and every address the host resolves to public. Returns the URL as parsed (normalised).
pub async fn check_url(raw: &str, env: AppEnv) -> Result<url::Url, UrlError> {
    let url = url::Url::parse(raw.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::Malformed("scheme and host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if env == AppEnv::Production {
        if url.scheme() != "https" {
            return Err(UrlError::NotHttps);
        }
        for ip in resolve(&url).await? {
            if is_internal(ip) {
                return Err(UrlError::Internal(ip));
            }
        }
    }
    Ok(url)
}

/// Every address `url`'s host stands for (an IP literal is itself).
pub async fn resolve(url: &url::Url) -> Result<Vec<IpAddr>, UrlError> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => Ok(vec![IpAddr::V4(ip)]),
        Some(url::Host::Ipv6(ip)) => Ok(vec![IpAddr::V6(ip)]),
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            let found: Vec<IpAddr> = tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| UrlError::Unresolved(e.to_string()))?
                .map(|a| a.ip())
                .collect();
            if found.is_empty() {
                Err(UrlError::Unresolved(name.to_owned()))
            } else {
                Ok(found)
            }
        }
        None => Err(UrlError::Malformed("no host".into())),
    }
}

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
        let mut out = vec![r.secret];
        if let (Some(previous), Some(until)) = (r.previous_secret, r.previous_secret_expires_at)
            && until > Utc::now()
        {
            out.push(previous);
        }
        out
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised_in_both_families() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn production_wants_https_and_public_hosts_development_allows_local_ones() {
        let prod = AppEnv::Production;
        assert_eq!(
            check_url("http://hooks.example.com/x", prod).await,
            Err(UrlError::NotHttps)
        );
        assert!(matches!(
            check_url("https://127.0.0.1/x", prod).await,
            Err(UrlError::Internal(_))
        ));
        assert!(matches!(
            check_url("https://[::ffff:169.254.169.254]/", prod).await,
            Err(UrlError::Internal(_))
        ));
        assert!(matches!(
            check_url("https://localhost:8443/hook", prod).await,
            Err(UrlError::Internal(_))
        ));
        assert_eq!(
            check_url("https://user:pw@hooks.example.com/", prod).await,
            Err(UrlError::Credentials)
        );
        assert!(matches!(
            check_url("ftp://example.com/", AppEnv::Development).await,
            Err(UrlError::Malformed(_))
        ));
        assert!(
            check_url("http://127.0.0.1:9000/hook", AppEnv::Development)
                .await
                .is_ok()
        );
    }

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

/// Loads a delivery for sending; `None` when it is gone (its endpoint was deleted).
pub async fn outgoing(
    conn: &mut PgConnection,
    delivery: Uuid,
) -> Result<Option<Outgoing>, sqlx::Error> {
    sqlx::query_as!(
        Outgoing,
        r#"SELECT d.id AS delivery_id, d.status, e.id AS event_id, e.event_type, e.occurred_at,
                  e.email_job_id, e.sequence, e.data, e.recipient, p.id AS endpoint_id, p.url,
                  p.include_addresses, p.enabled
           FROM webhook_deliveries d
           JOIN webhook_events e ON e.id = d.event_id
           JOIN webhook_endpoints p ON p.id = d.endpoint_id
           WHERE d.id = $1"#,
        delivery
    )
    .fetch_optional(conn)
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

/// Records an attempt on its delivery and the endpoint's health; returns true when this attempt
/// disabled the endpoint (it had failed everything for [`DISABLE_AFTER`]).
pub async fn record_attempt(
    conn: &mut PgConnection,
    out: &Outgoing,
    a: &Attempt<'_>,
) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    sqlx::query!(
        "INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error, response_excerpt)
         VALUES ($1, $2, $3, $4, $5)",
        out.delivery_id,
        a.status_code.map(i32::from),
        i32::try_from(a.latency_ms).unwrap_or(i32::MAX),
        a.error,
        a.excerpt
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1 WHERE id = $1",
        out.delivery_id,
        a.status
    )
    .execute(&mut *tx)
    .await?;
    let disabled = if a.status == "delivered" {
        sqlx::query!(
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            out.endpoint_id
        )
        .execute(&mut *tx)
        .await?;
        false
    } else {
        let since = Utc::now() - DISABLE_AFTER;
        sqlx::query_scalar!(
            r#"UPDATE webhook_endpoints
               SET failing_since = coalesce(failing_since, now()),
                   enabled = CASE WHEN failing_since < $2 THEN false ELSE enabled END,
                   disabled_reason = CASE WHEN failing_since < $2 AND enabled
                                          THEN 'every delivery failed for a day' ELSE disabled_reason END
               WHERE id = $1
               RETURNING (failing_since < $2 AND NOT enabled) AS "disabled!""#,
            out.endpoint_id,
            since
        )
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(false)
    };
    tx.commit().await?;
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
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM webhook_events WHERE created_at < $1 ORDER BY created_at LIMIT $2)
         DELETE FROM webhook_events e USING doomed WHERE e.id = doomed.id",
        before,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}
