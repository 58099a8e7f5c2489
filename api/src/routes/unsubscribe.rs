//! The public listener (`PUBLIC_ADDR`): one-click unsubscribe from marketing mail (RFC 8058).
//! A GET shows a page with a button and changes nothing (link scanners follow GETs); a POST, from
//! that button or from a mail client's one-click, suppresses marketing mail to the token's address.
//! Pages carry no script, a strict CSP, and are not framed or cached.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use herald_shared::address;
use herald_shared::email::Category;
use herald_shared::suppressions::{self, Raise};
use herald_shared::unsubscribe::Claim;
use serde_json::json;
use sqlx::Connection;

use crate::AppState;
use crate::pages::{self, escape};

/// The pages' stylesheet; its hash is the only style their CSP allows.
const STYLE: &str = "body{font:16px system-ui,sans-serif;max-width:32em;margin:3em auto;padding:0 1em}\
button{font:inherit;padding:.5em 1.2em}";

pub use crate::limiter::RateLimiter;

/// The public listener's routes: `/unsubscribe/{token}` only.
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/unsubscribe/{token}", get(page).post(unsubscribe))
        .fallback(|| async {
            respond(StatusCode::NOT_FOUND, "Not found", "There is nothing here.")
        })
        .layer(axum::extract::DefaultBodyLimit::max(4096))
        .with_state(state)
}

/// The client's address: the peer, or with `PUBLIC_TRUST_PROXY` the last `X-Forwarded-For`
/// entry (the one the site's proxy appended; earlier ones are the client's to forge).
pub(crate) fn client(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if state.config.public_trust_proxy
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return ip;
    }
    peer.ip()
}

/// What a token says, if genuine and for marketing mail.
fn verify(state: &AppState, token: &str) -> Option<Claim> {
    let marketing = state.config.marketing.as_ref()?;
    marketing
        .signer
        .verify(token)
        .filter(|claim| claim.category == Category::Marketing)
}

fn refused() -> Response {
    respond(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        "This unsubscribe link is not valid. Use the link from the email itself, or reply to it.",
    )
}

fn too_many() -> Response {
    respond(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "Too many requests from your address; try again in a minute.",
    )
}

/// Why a request to the public listener is turned away.
enum Refusal {
    TooMany,
    BadToken,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::TooMany => too_many(),
            Self::BadToken => refused(),
        }
    }
}

/// The claim of a request within its client's budget and with a genuine token.
fn admit(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    token: &str,
) -> Result<Claim, Refusal> {
    if !state.public_limiter.allow(client(state, peer, headers)) {
        return Err(Refusal::TooMany);
    }
    verify(state, token).ok_or(Refusal::BadToken)
}

/// `GET /unsubscribe/{token}`: names the (masked) address and asks for a click; changes nothing.
async fn page(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let claim = match admit(&state, peer, &headers, &token) {
        Ok(claim) => claim,
        Err(refusal) => return refusal.into_response(),
    };
    let body = format!(
        "<p>Stop marketing email to <strong>{}</strong>? Account and security email still arrives.</p>\
         <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>",
        escape(&address::mask(&claim.email))
    );
    respond(StatusCode::OK, "Unsubscribe", &body)
}

/// `POST /unsubscribe/{token}`: RFC 8058 one-click (`List-Unsubscribe=One-Click`) and the page's
/// button. Raises an `unsubscribe` suppression (a stronger one stays), records it once; repeating
/// it changes nothing.
async fn unsubscribe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let claim = match admit(&state, peer, &headers, &token) {
        Ok(claim) => claim,
        Err(refusal) => return refusal.into_response(),
    };
    let done = async {
        let mut conn = state.db.acquire().await?;
        let mut tx = conn.begin().await?;
        let already = suppressions::find(&mut tx, &claim.email)
            .await?
            .is_some_and(|s| s.suppress_marketing);
        if !already {
            suppressions::raise(
                &mut tx,
                &Raise::unsubscribe(&claim.email, "one-click unsubscribe"),
            )
            .await?;
            let detail = json!({
                "type": "unsubscribe",
                "via": "one-click",
                "link_issued_at": claim.issued_at,
            });
            herald_shared::feedback::record_admin_event(
                &mut tx,
                "suppression_added",
                &claim.email,
                &detail,
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(already)
    }
    .await;
    match done {
        Ok(already) => {
            tracing::info!(to = %address::mask(&claim.email), already, "unsubscribed from marketing email");
            let body = format!(
                "<p><strong>{}</strong> will get no more marketing email from us.</p>",
                escape(&address::mask(&claim.email))
            );
            respond(StatusCode::OK, "Unsubscribed", &body)
        }
        Err(error) => {
            tracing::error!(%error, "cannot record an unsubscribe");
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "We could not record this just now; please try again in a minute.",
            )
        }
    }
}

/// A page: no script at all, only the hashed stylesheet, posting only to itself, never framed.
fn respond(status: StatusCode, title: &str, body: &str) -> Response {
    static CSP: std::sync::LazyLock<HeaderValue> =
        std::sync::LazyLock::new(|| pages::csp_for(STYLE));
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><meta name=\"robots\" content=\"noindex\">\
         <title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>"
    );
    (status, pages::headers(&CSP, "no-referrer"), Html(html)).into_response()
}
