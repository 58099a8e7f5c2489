//! The dashboard's templates page: every name, locale and version, each with a preview rendered
//! from its sample data. The preview is its own document, framed in an `iframe sandbox` and served
//! with a CSP that allows no script, so a template's HTML cannot act on the dashboard.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use herald_shared::email::templates::{self, store};

use super::admin::{Access, STYLE, access};
use crate::AppState;
use crate::pages::{self, escape};

/// `GET /admin/templates`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if access(&state, &headers).await.is_none() {
        return Redirect::to("/admin/login").into_response();
    }
    let rows = async {
        let mut conn = state.db.acquire().await?;
        store::list(&mut conn).await
    }
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            tracing::error!(%error, "templates page query failed");
            return super::admin::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "<p>The database did not answer.</p>".to_owned(),
            );
        }
    };
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Herald templates</title>\
         <style>{STYLE}</style></head><body><p><a href=\"/admin\">Queues</a></p><h1>Templates</h1>\
         <table id=\"templates\"><tr><th>name</th><th>locale</th><th>newest version</th><th>by</th><th>at</th></tr>"
    );
    for r in &rows {
        html.push_str(&format!(
            "<tr data-template=\"{name}\"><td>{name}</td><td>{locale}</td><td>{v}</td><td>{by}</td><td>{at}</td></tr>",
            name = escape(&r.name),
            locale = escape(&r.locale),
            v = r.version,
            by = escape(r.created_by.as_deref().unwrap_or("")),
            at = r.created_at.format("%Y-%m-%d %H:%M UTC"),
        ));
    }
    html.push_str("</table>");
    for r in &rows {
        let src = format!(
            "/admin/templates/{}/{}/{}/preview",
            escape(&r.name),
            escape(&r.locale),
            r.version
        );
        html.push_str(&format!(
            "<h2>{} ({}, v{})</h2><iframe sandbox src=\"{src}\" title=\"preview\" width=\"640\" height=\"240\"></iframe>",
            escape(&r.name),
            escape(&r.locale),
            r.version
        ));
    }
    html.push_str("</body></html>");
    static CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        let base = pages::csp_for(STYLE);
        let csp = format!(
            "{}; frame-src 'self'",
            base.to_str().unwrap_or("default-src 'none'")
        );
        HeaderValue::from_str(&csp).unwrap_or(base)
    });
    (
        StatusCode::OK,
        pages::headers(&CSP, "same-origin"),
        Html(html),
    )
        .into_response()
}

/// `GET /admin/templates/{name}/{locale}/{version}/preview`: the HTML part rendered from the
/// version's sample data, as a document of its own (sandboxed, no script).
pub async fn preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, locale, version)): Path<(String, String, String)>,
) -> Response {
    if !matches!(
        access(&state, &headers).await,
        Some(Access::Bearer | Access::Session(_))
    ) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(version) = version.parse::<i32>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let rendered = async {
        let mut conn = state.db.acquire().await?;
        let Some(stored) = store::load(&mut conn, &name, &locale, version).await? else {
            return Ok(None);
        };
        let compiled = state
            .templates
            .get(&mut conn, &name, &locale, version)
            .await?;
        Ok::<_, store::StoreError>(Some(
            templates::render_blocking(
                compiled,
                stored.sample_data,
                "https://example.invalid/unsubscribe/preview".to_owned(),
            )
            .await,
        ))
    }
    .await;
    let html = match rendered {
        Ok(Some(Ok(r))) => r.html,
        Ok(Some(Err(e))) => format!("<pre>{}</pre>", escape(&e.to_string())),
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::error!(%error, "template preview failed");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'self'",
                ),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        Html(html),
    )
        .into_response()
}
