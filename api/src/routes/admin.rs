//! The console's sign-in (its pages: [`super::console`]). Behind an admin-scope API token:
//! `Authorization: Bearer …`, or a session from the POST login form (an HMAC-signed cookie naming
//! a server-side session that sign-out ends; state-changing forms carry a CSRF token and must come
//! from this origin). Failed sign-ins are throttled per client and overall, and logged. Every page
//! sends a strict CSP, `X-Frame-Options: DENY` and `Cache-Control: no-store`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
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

/// A session cookie's value:
/// `v2.<session id>.<issued>.<expires>.<token fingerprint>.<HMAC of the rest>`. The id names the
/// server-side session sign-out ends; the fingerprint names the token it came from (never the
/// token), so removing that token from `API_TOKEN`/`API_TOKENS` ends the session too.
fn cookie_value(state: &AppState, id: uuid::Uuid, issued: u64, fingerprint: &str) -> String {
    let ttl = state.config.admin_session_ttl.as_secs();
    let body = format!("v2.{id}.{issued}.{}.{fingerprint}", issued + ttl);
    let mac = mac_hex(state, &body);
    format!("{body}.{mac}")
}

/// The session a cookie's value names, if the value is genuine, unexpired and its token still
/// configured (the database is not asked).
fn signed_session(state: &AppState, value: &str) -> Option<(uuid::Uuid, String)> {
    let (body, mac) = value.rsplit_once('.')?;
    let parts: Vec<&str> = body.split('.').collect();
    let [version, id, issued, expires, fingerprint] = parts.as_slice() else {
        return None;
    };
    let (Ok(issued), Ok(expires)) = (issued.parse::<u64>(), expires.parse::<u64>()) else {
        return None;
    };
    let genuine = bool::from(subtle::ConstantTimeEq::ct_eq(
        mac_hex(state, body).as_bytes(),
        mac.as_bytes(),
    ));
    let now = now_secs();
    let valid = *version == "v2"
        && genuine
        && issued <= now + 60
        && now < expires
        && expires.saturating_sub(issued) <= state.config.admin_session_ttl.as_secs()
        && state.config.tokens.has_admin_fingerprint(fingerprint);
    if !valid {
        return None;
    }
    Some((id.parse().ok()?, (*fingerprint).to_owned()))
}

/// Whether a session cookie's value is genuine and its session still open on the server (a
/// database error counts as no).
async fn valid_session(state: &AppState, value: &str) -> bool {
    let Some((id, fingerprint)) = signed_session(state, value) else {
        return false;
    };
    let open = async {
        let mut conn = state.db.acquire().await.map_err(|e| e.to_string())?;
        crate::sessions::is_open(&mut conn, id, &fingerprint)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    open.unwrap_or_else(|error| {
        tracing::warn!(%error, "console session could not be checked; treated as signed out");
        false
    })
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

pub(crate) async fn access(state: &AppState, headers: &HeaderMap) -> Option<Access> {
    if crate::auth::bearer(headers).and_then(|t| state.config.tokens.scope_of(t))
        == Some(crate::auth::Scope::Admin)
    {
        return Some(Access::Bearer);
    }
    let value = session_cookie(headers)?;
    valid_session(state, &value)
        .await
        .then_some(Access::Session(value))
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

/// Failed sign-ins allowed per client address per [`SIGN_IN_WINDOW`].
pub const SIGN_IN_FAILURES_PER_CLIENT: u32 = 10;
/// Failed sign-ins allowed from all clients together per minute.
pub const SIGN_IN_FAILURES_OVERALL: u32 = 100;
/// The window of the per-client budget.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Budgets of failed console sign-ins: per client address (IPv6 per /64) and overall.
#[derive(Debug)]
pub struct SignInLimits {
    per_client: crate::limiter::RateLimiter,
    overall: crate::limiter::RateLimiter,
}

impl Default for SignInLimits {
    fn default() -> Self {
        Self {
            per_client: crate::limiter::RateLimiter::with_window(
                SIGN_IN_FAILURES_PER_CLIENT,
                SIGN_IN_WINDOW,
                crate::limiter::MAX_CLIENTS,
            ),
            overall: crate::limiter::RateLimiter::with_window(
                SIGN_IN_FAILURES_OVERALL,
                Duration::from_secs(60),
                1,
            ),
        }
    }
}

/// The one key the overall budget counts under.
const EVERYONE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl SignInLimits {
    /// How long `client` must wait before trying again, if a budget is spent.
    fn wait(&self, client: IpAddr) -> Option<Duration> {
        match (
            self.per_client.retry_after(client),
            self.overall.retry_after(EVERYONE),
        ) {
            (None, None) => None,
            (a, b) => a.max(b),
        }
    }

    /// Counts a failed sign-in.
    fn failed(&self, client: IpAddr) {
        self.per_client.allow(client);
        self.overall.allow(EVERYONE);
    }
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct Login {
    /// An API token with the admin scope.
    pub token: String,
}

/// Exchanges an admin token (POSTed, never in a URL) for a session cookie. A client over its
/// budget of failed attempts (or all clients over theirs) gets 429 with `Retry-After`, before
/// the token is looked at.
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<Login>,
) -> Response {
    if !same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            login_form("<p>Sign in from this page.</p>"),
        );
    }
    let peer = peer.map_or(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        |Extension(ConnectInfo(p))| p,
    );
    let client = super::unsubscribe::client(&state, peer, &headers);
    if let Some(wait) = state.sign_in_limits.wait(client) {
        let secs = wait.as_secs().max(1);
        tracing::warn!(client = %client, retry_after_secs = secs, "console sign-in refused: too many failed attempts");
        let mut res = page(
            StatusCode::TOO_MANY_REQUESTS,
            login_form("<p>Too many failed attempts; try again later.</p>"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let Some(fingerprint) = state.config.tokens.admin_fingerprint(form.token.trim()) else {
        state.sign_in_limits.failed(client);
        // The client's address, never the token.
        tracing::warn!(client = %client, "console sign-in failed: wrong token, or not an admin token");
        return page(
            StatusCode::UNAUTHORIZED,
            login_form("<p>Wrong token, or not an admin token.</p>"),
        );
    };
    let issued = now_secs();
    let ttl = state.config.admin_session_ttl.as_secs();
    let expires =
        chrono::DateTime::from_timestamp(i64::try_from(issued + ttl).unwrap_or(i64::MAX), 0)
            .unwrap_or_else(chrono::Utc::now);
    let opened = async {
        let mut conn = state.db.acquire().await.map_err(|e| e.to_string())?;
        let _ = crate::sessions::prune(&mut conn).await;
        crate::sessions::open(&mut conn, &fingerprint, expires)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let id = match opened {
        Ok(id) => id,
        Err(error) => {
            tracing::warn!(%error, "console session could not be opened");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                login_form("<p>The database is unavailable; try again shortly.</p>"),
            );
        }
    };
    tracing::info!(client = %client, session = %id, "console sign-in");
    let value = cookie_value(&state, id, issued, &fingerprint);
    let cookie =
        format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={ttl}");
    (
        [(header::SET_COOKIE, cookie)],
        page_headers(),
        Redirect::to("/admin"),
    )
        .into_response()
}

/// Ends the session on the server (a copy of the cookie no longer works) and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some((id, _)) = session_cookie(&headers).and_then(|v| signed_session(&state, &v)) {
        let ended = async {
            let mut conn = state.db.acquire().await.map_err(|e| e.to_string())?;
            crate::sessions::end(&mut conn, id)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = ended {
            tracing::warn!(%error, "console session could not be ended");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let cookie = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/admin/login")).into_response()
}
