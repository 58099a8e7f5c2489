//! `email_templates`: every version of every template, per locale. A version never changes once
//! stored; publishing makes the next one.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use super::{Compiled, Sources, TemplateError, locale_chain};

/// Store failures: the template's own, or the database's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The template is unknown, does not parse, or does not render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A query failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// One stored version.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Template name.
    pub name: String,
    /// Its locale.
    pub locale: String,
    /// Its version (1, 2, …).
    pub version: i32,
    /// The parts.
    pub sources: Sources,
    /// The data it was checked against.
    pub sample_data: Value,
    /// Variables data must hold.
    pub required_variables: Vec<String>,
    /// Who stored it (the API token's scope and fingerprint, or `migration`).
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A version, without its sources.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// Template name.
    pub name: String,
    /// Locale.
    pub locale: String,
    /// Version.
    pub version: i32,
    /// Variables data must hold.
    pub required_variables: Vec<String>,
    /// Who stored it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The newest version of `name` in the first locale of `locale`'s fallback chain that has one.
pub async fn resolve(
    conn: &mut PgConnection,
    name: &str,
    locale: &str,
) -> Result<Option<(String, i32)>, sqlx::Error> {
    let chain = locale_chain(locale);
    let row = sqlx::query!(
        r#"SELECT t.locale AS "locale!", max(t.version) AS "version!"
           FROM email_templates t
           JOIN unnest($2::text[]) WITH ORDINALITY AS c(locale, rank) ON c.locale = t.locale
           WHERE t.name = $1
           GROUP BY t.locale, c.rank ORDER BY c.rank LIMIT 1"#,
        name,
        &chain
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.locale, r.version)))
}

/// One version.
pub async fn load(
    conn: &mut PgConnection,
    name: &str,
    locale: &str,
    version: i32,
) -> Result<Option<Stored>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT name, locale, version, subject, text_body, html_body, sample_data,
                  required_variables, created_by, created_at
           FROM email_templates WHERE name = $1 AND locale = $2 AND version = $3"#,
        name,
        locale,
        version
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| Stored {
        name: r.name,
        locale: r.locale,
        version: r.version,
        sources: Sources {
            subject: r.subject,
            text: r.text_body,
            html: r.html_body,
        },
        sample_data: r.sample_data,
        required_variables: r.required_variables,
        created_by: r.created_by,
        created_at: r.created_at,
    }))
}

/// Checks `sources` (they parse, and render against `sample_data`) and stores them as the next
/// version of (`name`, `locale`); returns that version and the variables data must hold (those
/// the sources use and those `declared` required).
pub async fn publish(
    conn: &mut PgConnection,
    name: &str,
    locale: &str,
    sources: &Sources,
    sample_data: &Value,
    declared: &[String],
    created_by: &str,
) -> Result<(i32, Vec<String>), StoreError> {
    let mut compiled = Compiled::compile(sources)?;
    compiled.require(declared);
    let compiled = std::sync::Arc::new(compiled);
    // As marketing mail would have it.
    super::render_blocking(
        compiled.clone(),
        sample_data.clone(),
        "https://example.invalid/unsubscribe/sample".to_owned(),
    )
    .await?;
    // One publisher at a time per (name, locale), so versions are consecutive.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('herald.template:' || $1 || ':' || $2, 0))",
        name,
        locale
    )
    .execute(&mut *conn)
    .await?;
    let version = sqlx::query_scalar!(
        r#"INSERT INTO email_templates
               (name, locale, version, subject, text_body, html_body, sample_data,
                required_variables, created_by)
           SELECT $1::text, $2::text, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7, $8
           FROM email_templates WHERE name = $1::text AND locale = $2::text
           RETURNING version"#,
        name,
        locale,
        sources.subject,
        sources.text,
        sources.html,
        sample_data,
        &compiled.required,
        created_by
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((version, compiled.required.clone()))
}

/// The newest version of every (name, locale).
pub async fn list(conn: &mut PgConnection) -> Result<Vec<VersionInfo>, sqlx::Error> {
    sqlx::query_as!(
        VersionInfo,
        r#"SELECT DISTINCT ON (name, locale) name, locale, version, required_variables,
                  created_by, created_at
           FROM email_templates ORDER BY name, locale, version DESC"#
    )
    .fetch_all(conn)
    .await
}

/// Every version of `name`, by locale, newest first.
pub async fn versions(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Vec<VersionInfo>, sqlx::Error> {
    sqlx::query_as!(
        VersionInfo,
        r#"SELECT name, locale, version, required_variables, created_by, created_at
           FROM email_templates WHERE name = $1 ORDER BY locale, version DESC"#,
        name
    )
    .fetch_all(conn)
    .await
}

/// Deletes every version of `name`; returns how many.
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM email_templates WHERE name = $1", name)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}
