//! Templates as data: publish versions (checked before they are stored), list, read, preview,
//! delete. Admin scope.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use herald_shared::email::templates::{self, Sources, store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// A new version of a template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutTemplate {
    /// BCP 47 locale (`en`, the default; `de`, `de-AT`).
    pub locale: Option<String>,
    /// Subject line (minijinja).
    pub subject: String,
    /// Plain-text part (minijinja).
    pub text: String,
    /// HTML part (minijinja, autoescaped).
    pub html: String,
    /// Data the sources are rendered with before they are stored (a JSON object); every
    /// variable they use must be in it.
    #[schema(value_type = Object)]
    pub sample_data: Value,
    /// Variables `data` must hold besides those the sources use (optional).
    pub required_variables: Option<Vec<String>>,
    /// A JSON Schema for `data` (optional); its top-level `required` list is enforced at
    /// enqueue, the rest is stored nowhere.
    #[schema(value_type = Option<Object>)]
    pub data_schema: Option<Value>,
}

/// A stored version.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateVersion {
    /// Name.
    pub name: String,
    /// Locale.
    pub locale: String,
    /// Version (1, 2, …).
    pub version: i32,
    /// Variables `data` must hold when an email uses this version.
    pub required_variables: Vec<String>,
    /// Who stored it (`token:<fingerprint>`, `migration`).
    pub created_by: Option<String>,
    /// When.
    #[serde(serialize_with = "herald_shared::time::ms_opt")]
    pub created_at: Option<DateTime<Utc>>,
}

/// A version with its sources.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSource {
    /// Name.
    pub name: String,
    /// Locale.
    pub locale: String,
    /// Version.
    pub version: i32,
    /// Subject source.
    pub subject: String,
    /// Text source.
    pub text: String,
    /// HTML source.
    pub html: String,
    /// The data it was checked with.
    #[schema(value_type = Object)]
    pub sample_data: Value,
    /// Variables `data` must hold.
    pub required_variables: Vec<String>,
    /// Who stored it.
    pub created_by: Option<String>,
    /// When.
    #[serde(serialize_with = "herald_shared::time::ms")]
    pub created_at: DateTime<Utc>,
}

/// Versions, newest first within each locale.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateVersions {
    /// The versions.
    pub items: Vec<TemplateVersion>,
}

/// What to preview.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The variables (a JSON object).
    #[schema(value_type = Object)]
    pub data: Value,
    /// Locale (with fallback, as for sending); default `en`.
    pub locale: Option<String>,
    /// A version; default the newest in that locale.
    pub version: Option<i32>,
}

/// A rendered preview.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    /// The locale used (after fallback).
    pub locale: String,
    /// The version used.
    pub version: i32,
    /// Subject.
    pub subject: String,
    /// Text part.
    pub text: String,
    /// HTML part.
    pub html: String,
}

/// `?locale=` of a version read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LocaleQuery {
    /// Locale; default `en`.
    pub locale: Option<String>,
}

/// `?force=true` to delete a template queued emails still use.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even if queued emails use it (they will fail).
    pub force: Option<bool>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if templates::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::Validation(
            "a template name is lower-case letters, digits and _, starting with a letter (at most 100)"
                .into(),
        ))
    }
}

fn check_locale(locale: Option<String>) -> Result<String, ApiError> {
    let locale = locale.unwrap_or_else(|| templates::DEFAULT_LOCALE.into());
    if templates::valid_locale(&locale) {
        Ok(locale)
    } else {
        Err(ApiError::Validation(format!(
            "locale {locale:?} is not a BCP 47 tag such as en or de-AT"
        )))
    }
}

/// Stores a new version of a template after parsing it and rendering it with `sample_data`. The
/// locale comes from the body or `?locale=` (they must agree when both are given).
#[utoipa::path(put, path = "/v1/templates/{name}", operation_id = "putTemplate", tag = "templates", security(("bearer" = [])),
    params(("name" = String, Path, description = "Template name (lower-case letters, digits, _)"), LocaleQuery),
    request_body = PutTemplate,
    responses(
        (status = 201, description = "Stored as the next version", body = TemplateVersion),
        (status = 422, description = "A part does not parse or does not render with sample_data (`template_invalid`, naming the part, the line and the variable)", body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<LocaleQuery>, QueryRejection>,
    headers: HeaderMap,
    body: JsonBody<PutTemplate>,
) -> Result<(StatusCode, Json<TemplateVersion>), ApiError> {
    check_name(&name)?;
    let Query(query) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let req = body.value;
    let locale = match (req.locale, query.locale) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::Validation(format!(
                "locale {a:?} in the body and {b:?} in the query differ"
            )));
        }
        (body, query) => check_locale(body.or(query))?,
    };
    if !req.sample_data.is_object() {
        return Err(ApiError::Validation(
            "sample_data must be a JSON object".into(),
        ));
    }
    // PostgreSQL stores no NUL in text or jsonb.
    if [&req.subject, &req.text, &req.html]
        .iter()
        .any(|s| s.contains('\0'))
        || req.sample_data.to_string().contains("\\u0000")
    {
        return Err(ApiError::Validation(
            "templates and sample_data cannot hold NUL characters".into(),
        ));
    }
    let mut declared = req.required_variables.unwrap_or_default();
    if let Some(schema) = &req.data_schema {
        let required = schema
            .get("required")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let list: Option<Vec<String>> = required
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect());
        match (schema.is_object(), list) {
            (true, Some(list)) => declared.extend(list),
            _ => {
                return Err(ApiError::Validation(
                    "data_schema must be a JSON Schema object whose required is a list of names"
                        .into(),
                ));
            }
        }
    }
    let identifier = |v: &String| {
        (1..=100).contains(&v.len())
            && v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if let Some(bad) = declared.iter().find(|v| !identifier(v)) {
        return Err(ApiError::Validation(format!(
            "required variable {bad:?} is not a name (letters, digits, _)"
        )));
    }
    let sources = Sources {
        subject: req.subject,
        text: req.text,
        html: req.html,
    };
    let by = crate::auth::caller(&state, &headers);
    let mut conn = state.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let (version, required_variables) = store::publish(
        &mut tx,
        &name,
        &locale,
        &sources,
        &req.sample_data,
        &declared,
        &by,
    )
    .await
    .map_err(|e| match e {
        store::StoreError::Template(e) => ApiError::TemplateInvalid(e.to_string()),
        store::StoreError::Db(e) => e.into(),
    })?;
    tx.commit().await?;
    tracing::info!(template = %name, %locale, version, "template version stored");
    Ok((
        StatusCode::CREATED,
        Json(TemplateVersion {
            name,
            locale,
            version,
            required_variables,
            created_by: Some(by),
            created_at: Some(Utc::now()),
        }),
    ))
}

fn view(v: store::VersionInfo) -> TemplateVersion {
    TemplateVersion {
        name: v.name,
        locale: v.locale,
        version: v.version,
        required_variables: v.required_variables,
        created_by: v.created_by,
        created_at: Some(v.created_at),
    }
}

/// The newest version of every template in every locale.
#[utoipa::path(get, path = "/v1/templates", operation_id = "listTemplates", tag = "templates", security(("bearer" = [])),
    responses((status = 200, description = "Newest version per name and locale", body = TemplateVersions)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TemplateVersions>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let items = store::list(&mut conn)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(Json(TemplateVersions { items }))
}

/// Every version of a template, by locale.
#[utoipa::path(get, path = "/v1/templates/{name}", operation_id = "getTemplate", tag = "templates", security(("bearer" = [])),
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "Its versions", body = TemplateVersions),
        (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TemplateVersions>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let items: Vec<_> = store::versions(&mut conn, &name)
        .await?
        .into_iter()
        .map(view)
        .collect();
    if items.is_empty() {
        return Err(ApiError::NotFound("template"));
    }
    Ok(Json(TemplateVersions { items }))
}

/// One version with its sources.
#[utoipa::path(get, path = "/v1/templates/{name}/versions/{version}", operation_id = "getTemplateVersion", tag = "templates", security(("bearer" = [])),
    params(("name" = String, Path, description = "Template name"), ("version" = i32, Path, description = "Version"), LocaleQuery),
    responses(
        (status = 200, description = "The version", body = TemplateSource),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 422, description = "A bad locale or query", body = ErrorBody)))]
pub async fn version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    query: Result<Query<LocaleQuery>, QueryRejection>,
) -> Result<Json<TemplateSource>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let version: i32 = version
        .parse()
        .map_err(|_| ApiError::NotFound("template version"))?;
    let locale = check_locale(query.locale)?;
    let mut conn = state.db.acquire().await?;
    let t = store::load(&mut conn, &name, &locale, version)
        .await?
        .ok_or(ApiError::NotFound("template version"))?;
    Ok(Json(TemplateSource {
        name: t.name,
        locale: t.locale,
        version: t.version,
        subject: t.sources.subject,
        text: t.sources.text,
        html: t.sources.html,
        sample_data: t.sample_data,
        required_variables: t.required_variables,
        created_by: t.created_by,
        created_at: t.created_at,
    }))
}

/// Deletes every version of a template; refused while queued emails use it, unless forced.
#[utoipa::path(delete, path = "/v1/templates/{name}", operation_id = "deleteTemplate", tag = "templates", security(("bearer" = [])),
    params(("name" = String, Path, description = "Template name"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "Queued emails use it (`template_in_use`)", body = ErrorBody),
        (status = 422, description = "A bad query (`force` is true or false)", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::Validation(e.body_text()))?;
    let mut conn = state.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let queued = herald_shared::email::ledger::queued_with_template(&mut tx, &name).await?;
    if queued > 0 && !query.force.unwrap_or(false) {
        return Err(ApiError::TemplateInUse(queued));
    }
    if store::delete(&mut tx, &name).await? == 0 {
        return Err(ApiError::NotFound("template"));
    }
    tx.commit().await?;
    tracing::info!(template = %name, queued, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Renders a version with `data`, as an email would be.
#[utoipa::path(post, path = "/v1/templates/{name}/preview", operation_id = "previewTemplate", tag = "templates", security(("bearer" = [])),
    params(("name" = String, Path, description = "Template name")),
    request_body = PreviewRequest,
    responses(
        (status = 200, description = "Rendered", body = Preview),
        (status = 404, description = "No such template or version", body = ErrorBody),
        (status = 422, description = "data lacks a variable, or does not render (`template_data_invalid`)", body = ErrorBody)))]
pub async fn preview(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: JsonBody<PreviewRequest>,
) -> Result<Json<Preview>, ApiError> {
    let req = body.value;
    let wanted = check_locale(req.locale)?;
    let mut conn = state.db.acquire().await?;
    let (locale, newest) = store::resolve(&mut conn, &name, &wanted)
        .await?
        .ok_or(ApiError::NotFound("template"))?;
    let version = req.version.unwrap_or(newest);
    let compiled = state
        .templates
        .get(&mut conn, &name, &locale, version)
        .await
        .map_err(|e| match e {
            store::StoreError::Template(templates::TemplateError::Unknown(_)) => {
                ApiError::NotFound("template version")
            }
            other => ApiError::from_template_store(other),
        })?;
    let rendered = templates::render_blocking(
        compiled,
        req.data,
        "https://example.invalid/unsubscribe/preview".to_owned(),
    )
    .await
    .map_err(|e| ApiError::TemplateData(e.to_string()))?;
    Ok(Json(Preview {
        locale,
        version,
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
    }))
}
