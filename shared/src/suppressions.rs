//! The suppression list (`email_suppressions`): raising (never lowering) suppressions, removing
//! them, reading them; the only code that writes the table. Its trigger
//! `webhook_suppression_events` records `suppression.created` and `suppression.removed` webhook
//! events ([`crate::webhooks::outbox`]); each operator change is also an audit event
//! ([`crate::feedback::record_admin_event`]). A `BEFORE INSERT OR UPDATE OF email` trigger
//! normalises addresses (trimmed, lower-cased), so look them up with `email = lower(btrim($1))`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// Why an address is suppressed; a stronger type is never replaced by a weaker one
/// (`suppression_rank` in SQL: unsubscribe < bounce < complaint < manual).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sqlx(type_name = "varchar", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SuppressionType {
    /// A permanent bounce, or soft bounces past the threshold.
    Bounce,
    /// The recipient complained.
    Complaint,
    /// The recipient unsubscribed (marketing only).
    Unsubscribe,
    /// An operator suppressed it.
    Manual,
}

impl SuppressionType {
    /// Every type.
    pub const ALL: [Self; 4] = [
        Self::Bounce,
        Self::Complaint,
        Self::Unsubscribe,
        Self::Manual,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bounce => "bounce",
            Self::Complaint => "complaint",
            Self::Unsubscribe => "unsubscribe",
            Self::Manual => "manual",
        }
    }

    /// Reads a stored or requested name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// One row of `email_suppressions`, as the API and the console show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Suppression {
    /// Row id (UUIDv7; pages are in this order).
    pub id: Uuid,
    /// Address, normalised (trimmed, lower case).
    pub email: String,
    /// `bounce`, `complaint`, `unsubscribe` or `manual`.
    #[serde(rename = "type")]
    pub suppression_type: SuppressionType,
    /// Why.
    pub reason: Option<String>,
    /// Transactional mail is not sent.
    pub suppress_transactional: bool,
    /// Marketing mail is not sent.
    pub suppress_marketing: bool,
    /// Soft bounces counted for this address.
    pub bounce_count: i32,
    /// The last bounce.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub last_bounce_at: Option<DateTime<Utc>>,
    /// When first suppressed.
    #[serde(serialize_with = "crate::time::ms")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(serialize_with = "crate::time::ms")]
    pub updated_at: DateTime<Utc>,
}

/// A suppression to add or strengthen.
#[derive(Debug, Clone)]
pub struct Raise<'a> {
    /// Address (normalised here).
    pub email: &'a str,
    /// The type this event implies.
    pub suppression_type: SuppressionType,
    /// Why.
    pub reason: Option<&'a str>,
    /// Suppress transactional mail.
    pub transactional: bool,
    /// Suppress marketing mail.
    pub marketing: bool,
    /// Soft bounces counted so far (0 if not a bounce).
    pub bounce_count: i32,
    /// Time of the bounce, if one.
    pub bounce_at: Option<DateTime<Utc>>,
}

impl<'a> Raise<'a> {
    /// A suppression of `suppression_type` for the given categories, without a reason or a bounce
    /// history.
    pub fn new(
        email: &'a str,
        suppression_type: SuppressionType,
        transactional: bool,
        marketing: bool,
    ) -> Self {
        Self {
            email,
            suppression_type,
            reason: None,
            transactional,
            marketing,
            bounce_count: 0,
            bounce_at: None,
        }
    }

    /// An unsubscribe: marketing mail stops, transactional mail still goes.
    pub fn unsubscribe(email: &'a str, reason: &'a str) -> Self {
        Self {
            reason: Some(reason),
            ..Self::new(email, SuppressionType::Unsubscribe, false, true)
        }
    }
}

/// Adds a suppression or strengthens the existing one: categories are only ever added, and the
/// type (and its reason) changes only to a stronger one (`suppression_rank`: unsubscribe < bounce <
/// complaint < manual). Returns the row as it now is.
pub async fn raise(conn: &mut PgConnection, s: &Raise<'_>) -> Result<Suppression, sqlx::Error> {
    sqlx::query_as!(
        Suppression,
        r#"INSERT INTO email_suppressions AS e
               (email, suppression_type, reason, suppress_transactional, suppress_marketing,
                bounce_count, last_bounce_at)
           VALUES (lower(btrim($1)), $2, $3, $4, $5, $6, $7)
           ON CONFLICT (email) DO UPDATE SET
               suppression_type = CASE WHEN suppression_rank(EXCLUDED.suppression_type) > suppression_rank(e.suppression_type)
                                       THEN EXCLUDED.suppression_type ELSE e.suppression_type END,
               reason = CASE WHEN suppression_rank(EXCLUDED.suppression_type) > suppression_rank(e.suppression_type)
                             THEN EXCLUDED.reason ELSE e.reason END,
               suppress_transactional = e.suppress_transactional OR EXCLUDED.suppress_transactional,
               suppress_marketing = e.suppress_marketing OR EXCLUDED.suppress_marketing,
               bounce_count = GREATEST(e.bounce_count, EXCLUDED.bounce_count),
               last_bounce_at = GREATEST(e.last_bounce_at, EXCLUDED.last_bounce_at)
           RETURNING id, email, suppression_type AS "suppression_type: SuppressionType", reason, suppress_transactional, suppress_marketing,
                     bounce_count, last_bounce_at, created_at, updated_at"#,
        s.email,
        s.suppression_type.as_str(),
        s.reason,
        s.transactional,
        s.marketing,
        s.bounce_count,
        s.bounce_at
    )
    .fetch_one(conn)
    .await
}

/// Records a soft bounce on an existing suppression row (no row is created).
pub async fn note_soft_bounce(
    conn: &mut PgConnection,
    email: &str,
    count: i32,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE email_suppressions
         SET bounce_count = GREATEST(bounce_count, $2), last_bounce_at = GREATEST(last_bounce_at, $3)
         WHERE email = lower(btrim($1))",
        email,
        count,
        at
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The suppression of an address (case-insensitive).
pub async fn find(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<Suppression>, sqlx::Error> {
    sqlx::query_as!(
        Suppression,
        r#"SELECT id, email, suppression_type AS "suppression_type: SuppressionType", reason, suppress_transactional, suppress_marketing,
                bounce_count, last_bounce_at, created_at, updated_at
         FROM email_suppressions WHERE email = lower(btrim($1))"#,
        email
    )
    .fetch_optional(conn)
    .await
}

/// Removes an address's suppression; returns it if there was one.
pub async fn remove(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<Suppression>, sqlx::Error> {
    sqlx::query_as!(
        Suppression,
        r#"DELETE FROM email_suppressions WHERE email = lower(btrim($1))
         RETURNING id, email, suppression_type AS "suppression_type: SuppressionType", reason, suppress_transactional, suppress_marketing,
                   bounce_count, last_bounce_at, created_at, updated_at"#,
        email
    )
    .fetch_optional(conn)
    .await
}

/// A page of suppressions in id (creation) order, after `after`, optionally filtered.
pub async fn list(
    conn: &mut PgConnection,
    email: Option<&str>,
    suppression_type: Option<SuppressionType>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Suppression>, sqlx::Error> {
    sqlx::query_as!(
        Suppression,
        r#"SELECT id, email, suppression_type AS "suppression_type: SuppressionType", reason, suppress_transactional, suppress_marketing,
                bounce_count, last_bounce_at, created_at, updated_at
         FROM email_suppressions
         WHERE ($1::text IS NULL OR email = lower(btrim($1)))
           AND ($2::text IS NULL OR suppression_type = $2)
           AND ($3::uuid IS NULL OR id > $3)
         ORDER BY id
         LIMIT $4"#,
        email,
        suppression_type.map(SuppressionType::as_str),
        after,
        limit
    )
    .fetch_all(conn)
    .await
}

/// The longest reason an operator may give for adding or removing a suppression.
pub const REASON_MAX: usize = 500;

/// An operator's suppression, checked the same way wherever it is made (the API, the console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSuppression {
    /// The address, validated.
    pub email: crate::address::EmailAddress,
    /// `Manual` or `Unsubscribe`: the types an operator may set.
    pub kind: SuppressionType,
    /// Why, trimmed; `None` when empty.
    pub reason: Option<String>,
}

impl OperatorSuppression {
    /// Checks an operator's input; the message says what is wrong.
    pub fn parse(email: &str, kind: &str, reason: Option<&str>) -> Result<Self, String> {
        let email = crate::address::validate(email)
            .map_err(|e| format!("the address is not valid: {e}"))?;
        let kind = SuppressionType::parse(kind)
            .filter(|k| matches!(k, SuppressionType::Manual | SuppressionType::Unsubscribe))
            .ok_or_else(|| "type must be manual or unsubscribe".to_owned())?;
        Ok(Self {
            email,
            kind,
            reason: operator_reason(reason, false)?,
        })
    }
}

/// An operator's reason, trimmed and bounded by [`REASON_MAX`]; `required` refuses none.
pub fn operator_reason(reason: Option<&str>, required: bool) -> Result<Option<String>, String> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    match reason {
        None if required => Err(format!(
            "say why (a reason of at most {REASON_MAX} characters)"
        )),
        Some(r) if r.chars().count() > REASON_MAX => {
            Err(format!("the reason is longer than {REASON_MAX} characters"))
        }
        r => Ok(r.map(str::to_owned)),
    }
}

/// An operator's suppression (`manual`: no mail at all; `unsubscribe`: no marketing mail) with its
/// audit event, in one transaction; `via` names where it was made (`api`, `console`). Returns the
/// row as it now is, or `None` for another type.
pub async fn add_recorded(
    conn: &mut PgConnection,
    email: &str,
    kind: SuppressionType,
    reason: Option<&str>,
    via: &str,
) -> Result<Option<Suppression>, sqlx::Error> {
    use sqlx::Connection as _;
    let transactional = match kind {
        SuppressionType::Manual => true,
        SuppressionType::Unsubscribe => false,
        _ => return Ok(None),
    };
    let mut tx = conn.begin().await?;
    let row = raise(
        &mut tx,
        &Raise {
            reason,
            ..Raise::new(email, kind, transactional, true)
        },
    )
    .await?;
    let detail = serde_json::json!({"type": kind.as_str(), "reason": reason, "via": via});
    crate::feedback::record_admin_event(&mut tx, "suppression_added", email, &detail).await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Removes an address's suppression with its audit event (the operator's `reason`, the removed
/// row's type and reason), in one transaction; `None` when it was not suppressed.
pub async fn remove_recorded(
    conn: &mut PgConnection,
    email: &str,
    reason: Option<&str>,
    via: &str,
) -> Result<Option<Suppression>, sqlx::Error> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    let Some(row) = remove(&mut tx, email).await? else {
        return Ok(None);
    };
    let detail = serde_json::json!({
        "type": row.suppression_type, "reason": row.reason, "removal_reason": reason, "via": via
    });
    crate::feedback::record_admin_event(&mut tx, "suppression_removed", &row.email, &detail)
        .await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// How many addresses are suppressed, per type (the metrics' gauge).
pub async fn count_by_type<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT suppression_type AS "kind!", count(*) AS "n!" FROM email_suppressions GROUP BY 1"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.kind, r.n)).collect())
}
