//! `webhook_endpoints`: the registered receivers, their signing secrets and their health. The only
//! code that writes that table; [`super::deliveries`] reads it to send, and moves an endpoint's
//! failure streak through [`HEALTH_AFTER_ATTEMPT`], which is written here.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::signing::{ROTATION_OVERLAP, Secrets};
use super::{EventType, type_names};

/// A registered endpoint, without its secrets.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// The operator's note.
    pub description: Option<String>,
    /// Event types it receives.
    pub events: Vec<EventType>,
    /// Whether payloads carry full addresses.
    pub include_addresses: bool,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// Why it was disabled (by an operator or after a day of failures).
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs (after a rotation).
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Registered.
    #[serde(serialize_with = "crate::time::ms")]
    pub created_at: DateTime<Utc>,
    /// Last changed.
    #[serde(serialize_with = "crate::time::ms")]
    pub updated_at: DateTime<Utc>,
}

/// The stored row: `events` as the `text[]` column holds it.
struct Row {
    id: Uuid,
    url: String,
    description: Option<String>,
    events: Vec<String>,
    include_addresses: bool,
    enabled: bool,
    disabled_reason: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for Endpoint {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            url: r.url,
            description: r.description,
            // Only the API writes the column, from parsed names.
            events: r
                .events
                .iter()
                .filter_map(|e| EventType::parse(e))
                .collect(),
            include_addresses: r.include_addresses,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            previous_secret_expires_at: r.previous_secret_expires_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint<'a> {
    /// Checked URL.
    pub url: &'a str,
    /// Note.
    pub description: Option<&'a str>,
    /// Event types (distinct).
    pub events: &'a [EventType],
    /// Full addresses in payloads.
    pub include_addresses: bool,
    /// Signing secret (base64).
    pub secret: &'a str,
}

/// Registers an endpoint.
pub async fn create(conn: &mut PgConnection, e: &NewEndpoint<'_>) -> Result<Endpoint, sqlx::Error> {
    let row = sqlx::query_as!(
        Row,
        r#"INSERT INTO webhook_endpoints (url, description, events, include_addresses, secret)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, url, description, events, include_addresses, enabled, disabled_reason,
                     previous_secret_expires_at, created_at, updated_at"#,
        e.url,
        e.description,
        &type_names(e.events),
        e.include_addresses,
        e.secret
    )
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

/// Every endpoint, oldest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Endpoint>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT id, url, description, events, include_addresses, enabled, disabled_reason,
                  previous_secret_expires_at, created_at, updated_at
           FROM webhook_endpoints ORDER BY id"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Endpoint::from).collect())
}

/// One endpoint.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT id, url, description, events, include_addresses, enabled, disabled_reason,
                  previous_secret_expires_at, created_at, updated_at
           FROM webhook_endpoints WHERE id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Endpoint::from))
}

/// What a PATCH changes (`None` leaves a field as it is).
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    /// Checked URL.
    pub url: Option<&'a str>,
    /// Note (`Some(None)` clears it).
    pub description: Option<Option<&'a str>>,
    /// Event types.
    pub events: Option<&'a [EventType]>,
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
    let events = c.events.map(type_names);
    let row = sqlx::query_as!(
        Row,
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
        events.as_deref(),
        c.include_addresses,
        c.enabled,
        c.new_secret,
        overlap_until
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Endpoint::from))
}

/// Deletes an endpoint (its deliveries go with it); whether it existed.
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

/// The endpoint's health after an attempt, as one CTE of the attempt's statement
/// ([`super::deliveries::record_attempt`]), so recording an attempt stays one round trip. Its
/// parameters there: `$6` the delivery's new status, `$7` the endpoint, `$8` the start of the
/// window ([`DISABLE_AFTER`] ago), `$9` [`AUTO_DISABLED`]. The row is written only when a failure
/// streak starts, ends or reaches a day, not on every failed attempt.
pub(crate) const HEALTH_AFTER_ATTEMPT: &str = "endpoint AS (
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
   )";
