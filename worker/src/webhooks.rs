//! Webhook delivery: one job per (event, endpoint) on `herald.webhooks`, queued by the outbox
//! trigger. A run POSTs the event signed (Standard Webhooks), records the attempt, and answers the
//! job adapter: delivered (2xx), retry with backoff (timeouts, connection errors, 408, 409, 429,
//! 5xx), or failed for good (any other status, or the last run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_shared::outbound::{self, Lookup, SystemLookup, UrlPolicy, check_url_with};
use herald_shared::webhooks::{self, Attempt, Outgoing, WebhookJob};
use serde_json::json;
use sqlx::PgPool;

use crate::job::{HeraldJob, InFlight, JobContext, Outcome, Runs};

/// What delivery jobs need.
#[derive(Debug)]
pub struct WebhookContext {
    /// Database pool.
    pub pool: PgPool,
    /// The guarded HTTP client deliveries POST with.
    pub outbound: Outbound,
    /// Metrics.
    pub metrics: Arc<herald_shared::metrics::Metrics>,
    /// Deliveries running in this process.
    pub in_flight: Arc<InFlight>,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl WebhookContext {
    /// The context from the worker's settings.
    pub fn new(
        config: &crate::config::WorkerConfig,
        pool: PgPool,
        metrics: Arc<herald_shared::metrics::Metrics>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            outbound: Outbound::new(
                config.webhook_timeout,
                config.webhook_urls,
                Arc::new(SystemLookup),
            )?,
            pool,
            metrics,
            in_flight: Arc::default(),
            backoff_base: config.webhook_backoff_base,
            backoff_max: config.webhook_backoff_max,
        })
    }
}

impl JobContext for WebhookContext {
    fn pool(&self) -> &PgPool {
        &self.pool
    }
    fn metrics(&self) -> &herald_shared::metrics::Metrics {
        &self.metrics
    }
    fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }
}

/// The webhook client behind the URL rule: every POST checks its URL again (a literal address
/// never reaches a resolver), and every name is resolved through [`PublicOnly`], so a name cannot
/// pass the check with a public address and then connect to a private one (DNS rebinding).
#[derive(Debug, Clone)]
pub struct Outbound {
    http: reqwest::Client,
    policy: UrlPolicy,
    lookup: Arc<dyn Lookup>,
}

impl Outbound {
    /// A client with `timeout` per request, no redirects (a receiver answers where it was
    /// registered) and the guard of `policy`.
    pub fn new(
        timeout: Duration,
        policy: UrlPolicy,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, reqwest::Error> {
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Herald-Webhooks/1");
        if !policy.allow_private {
            http = http.dns_resolver(Arc::new(PublicOnly(lookup.clone())));
        }
        Ok(Self {
            http: http.build()?,
            policy,
            lookup,
        })
    }

    /// POSTs `body` to `url` with `headers` after checking the URL; the answer's status and at
    /// most [`EXCERPT_CHARS`] characters of its body (never more than [`EXCERPT_BYTES`] read).
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        check_url_with(url, self.policy, self.lookup.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let mut req = self.http.post(url).body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let res = req
            .send()
            .await
            .map_err(|e| format!("no answer: {}", herald_shared::telemetry::error_chain(&e)))?;
        let code = res.status().as_u16();
        Ok((code, read_excerpt(res).await))
    }
}

/// Characters of a receiver's answer kept with an attempt.
pub const EXCERPT_CHARS: usize = 512;
/// Bytes of a receiver's answer read at most (512 characters of up to 4 bytes); the rest is never
/// read: the response is dropped, which closes the connection.
pub const EXCERPT_BYTES: usize = EXCERPT_CHARS * 4;

/// The first characters of an answer's body, reading no more than [`EXCERPT_BYTES`].
async fn read_excerpt(mut res: reqwest::Response) -> String {
    let mut kept: Vec<u8> = Vec::new();
    while kept.len() < EXCERPT_BYTES {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // The end, or a body that broke off: keep what came.
            Ok(None) | Err(_) => break,
        }
    }
    drop(res);
    // A character cut at the byte limit is left out rather than shown as U+FFFD.
    let text = match std::str::from_utf8(&kept) {
        Ok(t) => t.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&kept[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(&kept).into_owned(),
    };
    text.chars().take(EXCERPT_CHARS).collect()
}

/// The resolver of the guarded client: a name with any internal address is refused when the
/// connection is made.
#[derive(Debug)]
struct PublicOnly(Arc<dyn Lookup>);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.0.clone();
        Box::pin(async move {
            let found = outbound::public_addresses(lookup.as_ref(), name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(found.into_iter().map(|ip| std::net::SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// What one POST came to.
enum Answer {
    Delivered(u16),
    Retryable(String),
    Refused(String),
}

/// Whether an answer's status means "try again later".
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

impl HeraldJob for WebhookJob {
    type Context = WebhookContext;

    fn span(&self, id: &str) -> tracing::Span {
        tracing::info_span!("webhook_delivery", job_id = %id, delivery = %self.delivery_id)
    }

    async fn run(self, _id: String, runs: Runs, ctx: Arc<WebhookContext>) -> Outcome {
        let loaded = async {
            let mut conn = ctx.pool.acquire().await?;
            webhooks::outgoing(&mut conn, self.delivery_id).await
        }
        .await;
        let out = match loaded {
            Ok(Some(out)) => out,
            // The endpoint was deleted with its deliveries: nothing to send.
            Ok(None) => return Outcome::Done(json!({"outcome": "gone"})),
            Err(e) => {
                return Outcome::Retry {
                    after: Duration::from_secs(5),
                    error: format!("database: {e}"),
                };
            }
        };
        // A run rescued after its worker died may find the decision made and recorded already
        // (the job's own result was still in apalis's ack buffer).
        match out.status.as_str() {
            "delivered" => return Outcome::Done(json!({"outcome": "delivered already"})),
            "failed" => return Outcome::Fatal("failed already; POST /retry sends it again".into()),
            _ => {}
        }
        if !out.enabled {
            let _ = record(
                &ctx,
                &out,
                None,
                0,
                Some("endpoint disabled"),
                None,
                "failed",
            )
            .await;
            return Outcome::Fatal("endpoint disabled".into());
        }
        let started = Instant::now();
        let answer = post(&ctx, &out).await;
        let latency = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        // What to record, the delivery's status after it, and the adapter's outcome.
        let (code, error, excerpt, status, outcome) = match answer {
            Ok((Answer::Delivered(code), excerpt)) => {
                tracing::info!(delivery = %out.delivery_id, status = code, latency_ms = latency, "webhook delivered");
                let done = Outcome::Done(json!({"outcome": "delivered", "status": code}));
                (Some(code), None, Some(excerpt), "delivered", done)
            }
            Ok((Answer::Refused(why), excerpt)) => {
                tracing::warn!(delivery = %out.delivery_id, error = %why, "webhook refused; not retried");
                (
                    excerpt_code(&why),
                    Some(why.clone()),
                    Some(excerpt),
                    "failed",
                    Outcome::Fatal(why),
                )
            }
            Ok((Answer::Retryable(why), excerpt)) => {
                let status = if runs.is_last() { "failed" } else { "pending" };
                let next = retry_or_fail(&ctx, runs, why.clone());
                (excerpt_code(&why), Some(why), Some(excerpt), status, next)
            }
            Err(why) => {
                let status = if runs.is_last() { "failed" } else { "pending" };
                let next = retry_or_fail(&ctx, runs, why.clone());
                (None, Some(why), None, status, next)
            }
        };
        let counted = if status == "pending" {
            "retried"
        } else {
            status
        };
        ctx.metrics
            .webhook_deliveries
            .get_or_create(&herald_shared::metrics::Outcome {
                outcome: counted.into(),
            })
            .inc();
        let _ = record(
            &ctx,
            &out,
            code,
            latency,
            error.as_deref(),
            excerpt.as_deref(),
            status,
        )
        .await;
        outcome
    }
}

/// The status code an error text starts with (`HTTP 503: …`).
fn excerpt_code(why: &str) -> Option<u16> {
    why.strip_prefix("HTTP ")
        .and_then(|r| r.split(':').next())
        .and_then(|c| c.parse().ok())
}

fn retry_or_fail(ctx: &WebhookContext, runs: Runs, why: String) -> Outcome {
    if runs.is_last() {
        tracing::warn!(error = %why, "webhook delivery failed for good after its last attempt");
        return Outcome::Fatal(why);
    }
    let after = crate::email_job::failure::backoff(ctx.backoff_base, ctx.backoff_max, runs.this);
    tracing::info!(error = %why, retry_in_ms = after.as_millis() as u64, "webhook delivery failed; retrying");
    Outcome::Retry { after, error: why }
}

async fn record(
    ctx: &WebhookContext,
    out: &Outgoing,
    status_code: Option<u16>,
    latency_ms: u32,
    error: Option<&str>,
    excerpt: Option<&str>,
    status: &str,
) -> Result<(), sqlx::Error> {
    let mut conn = ctx.pool.acquire().await?;
    let disabled = webhooks::record_attempt(
        &mut conn,
        out,
        &Attempt {
            status_code,
            latency_ms,
            error,
            excerpt,
            status,
        },
    )
    .await?;
    if disabled {
        tracing::warn!(endpoint = %out.endpoint_id, "webhook endpoint disabled: every delivery failed for a day");
    }
    Ok(())
}

/// POSTs the event signed; the answer and the first characters of its body, or why no answer came.
async fn post(ctx: &WebhookContext, out: &Outgoing) -> Result<(Answer, String), String> {
    let body = out.body();
    let id = out.message_id();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = out.secrets.signature(&id, timestamp, &body);
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let (code, excerpt) = ctx.outbound.post(&out.url, &headers, body).await?;
    let answer = if (200..300).contains(&code) {
        Answer::Delivered(code)
    } else if retryable(code) {
        Answer::Retryable(format!("HTTP {code}: will retry"))
    } else {
        Answer::Refused(format!("HTTP {code}: refused, not retried"))
    };
    Ok((answer, excerpt))
}

/// Events fanned out per relay statement.
pub const RELAY_BATCH: i32 = 500;

/// Fans out the events the triggers record into deliveries and their jobs until `token` is
/// cancelled: batch after batch while there is a backlog, then every `interval`. After each batch
/// that made work it wakes this process's delivery worker through `wake` (the webhook queue holds
/// no LISTEN connection). Relays of several processes take different events.
pub async fn relay(
    pool: PgPool,
    interval: Duration,
    wake: Arc<tokio::sync::Notify>,
    token: tokio_util::sync::CancellationToken,
) {
    loop {
        let taken = async {
            let mut conn = pool.acquire().await?;
            webhooks::fan_out(&mut conn, RELAY_BATCH).await
        }
        .await;
        let pause = match taken {
            Ok(n) if n > 0 => {
                tracing::debug!(events = n, "webhook events fanned out");
                wake.notify_one();
                if n == RELAY_BATCH {
                    Duration::ZERO
                } else {
                    interval
                }
            }
            Ok(_) => interval,
            Err(e) => {
                tracing::warn!(error = %e, "webhook relay cannot reach the database; trying again");
                interval.max(Duration::from_secs(1))
            }
        };
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use herald_shared::outbound::{
        Lookup, LookupFuture, REFUSED_EXAMPLES, SystemLookup, UrlPolicy, example_lookup,
    };
    use reqwest::dns::Resolve as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::{EXCERPT_CHARS, Outbound, PublicOnly};

    fn guarded(lookup: Arc<dyn Lookup>) -> Outbound {
        let policy = UrlPolicy {
            allow_private: false,
            require_https: false,
        };
        Outbound::new(Duration::from_secs(5), policy, lookup).expect("client")
    }

    #[tokio::test]
    async fn the_guarded_resolver_refuses_a_name_for_an_internal_address() {
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let err = match PublicOnly(Arc::new(SystemLookup)).resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("internal address"), "{err}");
    }

    #[tokio::test]
    async fn every_refused_destination_is_refused_again_at_connect_time() {
        let out = guarded(Arc::new(example_lookup()));
        for url in REFUSED_EXAMPLES {
            let err = out.post(url, &[], b"{}".to_vec()).await.expect_err(url);
            assert!(err.contains("internal address"), "{url}: {err}");
        }
    }

    /// Answers a public address to the URL check and loopback to the connection after it.
    #[derive(Debug, Default)]
    struct Rebinding(AtomicUsize);

    impl Lookup for Rebinding {
        fn lookup(&self, _host: String, _port: u16) -> LookupFuture {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            let ip = if n == 0 { "93.184.216.34" } else { "127.0.0.1" };
            Box::pin(async move { Ok(vec![ip.parse().expect("ip")]) })
        }
    }

    #[tokio::test]
    async fn a_name_that_rebinds_to_loopback_after_the_check_is_not_connected_to() {
        // A receiver on loopback that would answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        let out = guarded(Arc::new(Rebinding::default()));
        let err = out
            .post(&format!("http://rebind.test:{port}/hook"), &[], Vec::new())
            .await
            .expect_err("refused at connect time");
        assert!(err.contains("internal address"), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "never connected");
    }

    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        pages * 4096
    }

    #[tokio::test]
    async fn a_200_mb_answer_is_read_no_further_than_its_excerpt() {
        const BODY: usize = 200 * 1024 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let written = Arc::new(AtomicUsize::new(0));
        let count = written.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut request = [0_u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let head = format!(
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {BODY}\r\n\r\n"
                    );
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut mine = 0;
                    while mine < BODY {
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                        mine += chunk.len();
                        count.fetch_add(chunk.len(), Ordering::SeqCst);
                    }
                });
            }
        });
        let local = UrlPolicy {
            allow_private: true,
            require_https: false,
        };
        let out =
            Outbound::new(Duration::from_secs(30), local, Arc::new(SystemLookup)).expect("client");
        // Once, so that the client's own set-up is not counted.
        let _ = out.post(&url, &[], Vec::new()).await;
        let before = rss_bytes();
        for _ in 0..8 {
            let (code, excerpt) = out.post(&url, &[], Vec::new()).await.expect("answer");
            assert_eq!(code, 500);
            assert_eq!(excerpt.chars().count(), EXCERPT_CHARS);
        }
        let grown = rss_bytes().saturating_sub(before);
        assert!(grown < 10 * 1024 * 1024, "RSS grew by {grown} bytes");
        // Nine answers of 200 MB: what the server got to write is what socket buffers hold.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = written.load(Ordering::SeqCst);
        assert!(sent < 9 * 16 * 1024 * 1024, "the server wrote {sent} bytes");
    }
}
