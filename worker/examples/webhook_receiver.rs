//! A receiver of Herald's webhooks: checks each delivery's signature (Standard Webhooks) and age,
//! answers a duplicate (a retry of a delivery it already took) with 200 without handling it again,
//! and prints the event. Run it with the secret Herald returned:
//! `HERALD_WEBHOOK_SECRET=whsec_… cargo run -p herald-worker --example webhook_receiver`
//! (listens on `RECEIVER_ADDR`, default 127.0.0.1:8787).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;

/// How far a delivery's `webhook-timestamp` may be from now, in seconds (replays are older).
pub const TOLERANCE_SECS: i64 = 300;

/// Whether a delivery is genuine and fresh: its timestamp within [`TOLERANCE_SECS`] of `now` and
/// one of its signatures (two during a secret rotation) an HMAC-SHA256 of `id.timestamp.body`
/// under `secret`, compared in constant time.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(key) = b64.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > TOLERANCE_SECS {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    signatures.split(' ').any(|s| {
        s.strip_prefix("v1,")
            .and_then(|sig| b64.decode(sig).ok())
            .is_some_and(|sig| ring::hmac::verify(&key, &signed, &sig).is_ok())
    })
}

/// The ids of the deliveries taken lately, the oldest dropped first. A real receiver keeps them
/// where its work is recorded (a unique column), for longer than Herald retries (three days).
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time an id is seen.
    fn first(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > 100_000
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

struct Receiver {
    secret: String,
    seen: Mutex<Seen>,
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if !verify(
        &rx.secret,
        id,
        timestamp,
        header("webhook-signature"),
        &body,
        now,
    ) {
        // 4xx other than 408/409/429: Herald fails the delivery at once instead of retrying.
        return StatusCode::UNAUTHORIZED;
    }
    let first = rx.seen.lock().is_ok_and(|mut seen| seen.first(id));
    if first {
        // Answer quickly; real work belongs on the application's own queue.
        println!("{id}: {}", String::from_utf8_lossy(&body));
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let secret = std::env::var("HERALD_WEBHOOK_SECRET").map_err(|_| {
        std::io::Error::other("set HERALD_WEBHOOK_SECRET to the endpoint's whsec_… secret")
    })?;
    let addr = std::env::var("RECEIVER_ADDR").unwrap_or_else(|_| "127.0.0.1:8787".into());
    let state = Arc::new(Receiver {
        secret,
        seen: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/", axum::routing::post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("receiving Herald's webhooks on http://{addr}/");
    axum::serve(listener, app).await
}
