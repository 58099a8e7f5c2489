//! What every HTML page Herald serves shares: a CSP that allows one hashed stylesheet and no
//! script, no framing, no caching, and escaping of the text put into it.

use axum::http::{HeaderValue, header};

/// The CSP for pages whose only style is `style` (inline, allowed by its SHA-256).
pub fn csp_for(style: &str) -> HeaderValue {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    );
    HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The headers of a page: its CSP, no framing, no caching, no sniffing, and `referrer`.
pub fn headers(
    csp: &HeaderValue,
    referrer: &'static str,
) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_SECURITY_POLICY, csp.clone()),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::REFERRER_POLICY, HeaderValue::from_static(referrer)),
    ]
}

/// Text made safe for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
