//! A local SES v2 `SendEmail` endpoint that counts what it accepts per recipient and can be told to
//! fail: throttle (429), break (500) or hang past the client's deadline. Used by the fault tests and
//! the benchmarks (which include this file by path).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::Mutex;

/// How the stub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with a message id: the email is accepted.
    Accept = 0,
    /// 429 `TooManyRequestsException`: nothing accepted.
    Throttle = 1,
    /// 500 `InternalFailure`: nothing accepted.
    Fail = 2,
    /// Accepts the email, then answers only after `HANG`: the client gives up first, so it cannot
    /// know the email went out (the documented uncertain window).
    Hang = 3,
}

/// How long a hanging call waits before answering.
pub const HANG: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    mode: AtomicU8,
    calls: AtomicU64,
    refused: AtomicU64,
    hung: AtomicU64,
    accepted: Mutex<HashMap<String, u32>>,
    call_times: Mutex<Vec<Instant>>,
    /// Each call's time and recipient, kept only when asked (the soak).
    log: Option<Mutex<Vec<(Instant, String)>>>,
}

/// A running stub; clones share the counts.
#[derive(Clone)]
pub struct SesStub {
    /// Its base URL, for `AWS_ENDPOINT_URL`.
    pub url: String,
    state: Arc<State>,
}

impl SesStub {
    /// Binds a free local port and serves until the runtime ends.
    pub async fn start() -> Self {
        Self::start_with(State::default()).await
    }

    /// As [`SesStub::start`], and keeps each call's time and recipient for [`SesStub::log_since`].
    pub async fn start_logging() -> Self {
        Self::start_with(State {
            log: Some(Mutex::new(Vec::new())),
            ..State::default()
        })
        .await
    }

    async fn start_with(state: State) -> Self {
        use axum::routing::post;
        let state = Arc::new(state);
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/v2/email/outbound-emails",
            post(move |body: axum::body::Bytes| {
                let state = shared.clone();
                async move { answer(&state, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SES stub");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("SES stub") });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Changes how later calls are answered.
    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Every call received, whatever the answer.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Calls answered 429 or 500.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Calls accepted but left hanging.
    pub fn hung(&self) -> u64 {
        self.state.hung.load(Ordering::SeqCst)
    }

    /// Emails accepted (including hung ones), per recipient.
    pub async fn accepted(&self) -> HashMap<String, u32> {
        self.state.accepted.lock().await.clone()
    }

    /// When each call arrived.
    pub async fn call_times(&self) -> Vec<Instant> {
        self.state.call_times.lock().await.clone()
    }

    /// The calls after the first `from`, with their recipients (a stub from `start_logging`).
    pub async fn log_since(&self, from: usize) -> Vec<(Instant, String)> {
        match &self.state.log {
            Some(log) => log.lock().await.get(from..).unwrap_or_default().to_vec(),
            None => Vec::new(),
        }
    }
}

async fn answer(state: &State, body: &[u8]) -> (StatusCode, HeaderMap, String) {
    let n = state.calls.fetch_add(1, Ordering::SeqCst);
    state.call_times.lock().await.push(Instant::now());
    let to = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["Destination"]["ToAddresses"][0]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let error = |status: StatusCode, code: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-errortype", code.parse().expect("header"));
        headers.insert("content-type", "application/json".parse().expect("header"));
        (status, headers, format!(r#"{{"message":"stub: {code}"}}"#))
    };
    if let Some(log) = &state.log {
        log.lock().await.push((Instant::now(), to.clone()));
    }
    let mode = state.mode.load(Ordering::SeqCst);
    if mode == Mode::Throttle as u8 {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException");
    }
    if mode == Mode::Fail as u8 {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure");
    }
    *state.accepted.lock().await.entry(to).or_default() += 1;
    if mode == Mode::Hang as u8 {
        state.hung.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(HANG).await;
    }
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("header"));
    (
        StatusCode::OK,
        headers,
        format!(r#"{{"MessageId":"stub-{n}"}}"#),
    )
}
