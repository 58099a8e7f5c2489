//! The console's sign-in (its pages: [`super::console`]). Behind an admin-scope API token: `Authorization: Bearer …`, or a session from the POST login
//! form (an HMAC-signed cookie; state-changing forms carry a CSRF token and must come from this
//! origin). Every page sends a strict CSP, `X-Frame-Options: DENY` and `Cache-Control: no-store`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::AppState;
use crate::pages;

/// `__Host-`: only over https (browsers treat http://localhost as secure too), path `/`, no
/// `Domain`, so no sibling host can set or read it.
const COOKIE: &str = "__Host-herald_admin";

/// The pages' one stylesheet; its hash is the only style their CSP allows.
pub(crate) use super::console::STYLE;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// HMAC-SHA256 of `message` under `ADMIN_SESSION_SECRET`, hex.
fn mac_hex(state: &AppState, message: &str) -> String {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        state.config.admin_session_secret.expose().as_bytes(),
    );
    hex::encode(ring::hmac::sign(&key, message.as_bytes()))
}

/// A session cookie's value: `v1.<issued>.<expires>.<token fingerprint>.<HMAC of the rest>`.
/// It names the token it came from (by fingerprint, never the token), so removing that token
/// from `API_TOKEN`/`API_TOKENS` ends the session.
fn issue_session(state: &AppState, fingerprint: &str) -> (String, u64) {
    let issued = now_secs();
    let ttl = state.config.admin_session_ttl.as_secs();
    let body = format!("v1.{issued}.{}.{fingerprint}", issued + ttl);
    let mac = mac_hex(state, &body);
    (format!("{body}.{mac}"), ttl)
}

/// Whether a session cookie's value is genuine, unexpired and its token still configured.
fn valid_session(state: &AppState, value: &str) -> bool {
    let Some((body, mac)) = value.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = body.split('.').collect();
    let [version, issued, expires, fingerprint] = parts.as_slice() else {
        return false;
    };
    let (Ok(issued), Ok(expires)) = (issued.parse::<u64>(), expires.parse::<u64>()) else {
        return false;
    };
    let genuine = bool::from(subtle::ConstantTimeEq::ct_eq(
        mac_hex(state, body).as_bytes(),
        mac.as_bytes(),
    ));
    let now = now_secs();
    *version == "v1"
        && genuine
        && issued <= now + 60
        && now < expires
        && expires - issued <= state.config.admin_session_ttl.as_secs()
        && state.config.tokens.has_admin_fingerprint(fingerprint)
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
}

/// How a dashboard request is authenticated.
pub(crate) enum Access {
    /// `Authorization: Bearer` with an admin token: no cookie, so no CSRF check.
    Bearer,
    /// The session cookie (its value, which the CSRF token is derived from).
    Session(String),
}

pub(crate) fn access(state: &AppState, headers: &HeaderMap) -> Option<Access> {
    if crate::auth::bearer(headers).and_then(|t| state.config.tokens.scope_of(t))
        == Some(crate::auth::Scope::Admin)
    {
        return Some(Access::Bearer);
    }
    session_cookie(headers)
        .filter(|v| valid_session(state, v))
        .map(Access::Session)
}

/// The CSRF token of a session: forms carry it, state-changing requests must send it back.
pub(crate) fn csrf_token(state: &AppState, session: &str) -> String {
    mac_hex(state, &format!("csrf.{session}"))
}

/// A state-changing request from a browser must come from this origin: `Origin` (or, without it,
/// `Referer`) names the host the request was sent to. Requests with neither are refused.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    origin.is_some_and(|o| {
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .unwrap_or("");
        let o_host = rest.split(['/', '?', '#']).next().unwrap_or("");
        o_host.eq_ignore_ascii_case(host)
    })
}

/// The pages' CSP: the hashed stylesheet and nothing else (no script at all), computed once.
static CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| pages::csp_for(STYLE));

/// The headers every dashboard page carries: the CSP, no framing, no caching.
fn page_headers() -> [(header::HeaderName, HeaderValue); 5] {
    pages::headers(&CSP, "same-origin")
}

pub(crate) fn page(status: StatusCode, html: String) -> Response {
    (status, page_headers(), Html(html)).into_response()
}

fn login_form(message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Herald: sign in</title>\
         <style>{STYLE}</style></head><body><h1>Herald</h1>{message}\
         <form method=\"post\" action=\"/admin/login\"><label>API token (admin scope) \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label> \
         <button type=\"submit\">Sign in</button></form></body></html>"
    )
}

/// The login form.
pub async fn login_page() -> Response {
    page(StatusCode::OK, login_form(""))
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct Login {
    /// An API token with the admin scope.
    pub token: String,
}

/// Exchanges an admin token (POSTed, never in a URL) for a session cookie.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Login>,
) -> Response {
    if !same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            login_form("<p>Sign in from this page.</p>"),
        );
    }
    let Some(fingerprint) = state.config.tokens.admin_fingerprint(form.token.trim()) else {
        return page(
            StatusCode::UNAUTHORIZED,
            login_form("<p>Wrong token, or not an admin token.</p>"),
        );
    };
    let (value, ttl) = issue_session(&state, &fingerprint);
    let cookie =
        format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={ttl}");
    (
        [(header::SET_COOKIE, cookie)],
        page_headers(),
        Redirect::to("/admin"),
    )
        .into_response()
}

/// Ends the session (the cookie is cleared; a copy of it stays valid until it expires).
pub async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let cookie = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/admin/login")).into_response()
}
