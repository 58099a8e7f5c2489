//! Webhook delivery: one job per (event, endpoint) on `herald.webhooks`, queued by the outbox
//! trigger. A run POSTs the event signed (Standard Webhooks), records the attempt, and answers the
//! job adapter: delivered (2xx), retry with backoff (timeouts, connection errors, 408, 409, 429,
//! 5xx), or failed for good (any other status, or the last run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_shared::config::AppEnv;
use herald_shared::webhooks::{self, Attempt, Outgoing, WebhookJob};
use serde_json::json;
use sqlx::PgPool;

use crate::job::{HeraldJob, InFlight, JobContext, Outcome, Runs};

/// What delivery jobs need.
#[derive(Debug)]
pub struct WebhookContext {
    /// Database pool.
    pub pool: PgPool,
    /// The HTTP client (no redirects: a receiver answers where it was registered).
    pub http: reqwest::Client,
    /// Metrics.
    pub metrics: Arc<herald_shared::metrics::Metrics>,
    /// Deliveries running in this process.
    pub in_flight: Arc<InFlight>,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Production re-checks the URL's addresses before every POST.
    pub app_env: AppEnv,
}

impl WebhookContext {
    /// The context from the worker's settings.
    pub fn new(
        config: &crate::config::WorkerConfig,
        pool: PgPool,
        metrics: Arc<herald_shared::metrics::Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let mut http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .connect_timeout(config.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Herald-Webhooks/1");
        if config.app_env == AppEnv::Production {
            http = http.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            http: http.build()?,
            pool,
            metrics,
            in_flight: Arc::default(),
            backoff_base: config.webhook_backoff_base,
            backoff_max: config.webhook_backoff_max,
            app_env: config.app_env,
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

/// The resolver of production's webhook client: a name with any internal address is refused when
/// the connection is made, so a name cannot pass the URL check with a public address and then be
/// connected to a private one (DNS rebinding). IP literals never reach it; the URL check refuses
/// internal ones.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = found.iter().find(|a| webhooks::is_internal(a.ip())) {
                return Err(
                    format!("{host} resolves to an internal address ({})", bad.ip()).into(),
                );
            }
            if found.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
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

/// POSTs the event; the answer and the first 512 bytes of its body, or why no answer came.
async fn post(ctx: &WebhookContext, out: &Outgoing) -> Result<(Answer, String), String> {
    if ctx.app_env == AppEnv::Production {
        // Checked again at each POST: the name may resolve elsewhere than at registration.
        webhooks::check_url(&out.url, ctx.app_env)
            .await
            .map_err(|e| e.to_string())?;
    }
    let body = out.body();
    let id = out.message_id();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = out.secrets.signature(&id, timestamp, &body);
    let res = ctx
        .http
        .post(&out.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("no answer: {}", herald_shared::telemetry::error_chain(&e)))?;
    let code = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(512).collect();
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
    use reqwest::dns::Resolve as _;

    #[tokio::test]
    async fn production_resolver_refuses_a_name_for_an_internal_address() {
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let err = match super::PublicOnly.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("internal address"), "{err}");
    }

    #[tokio::test]
    async fn production_client_will_not_connect_to_a_name_for_loopback() {
        // A receiver on loopback that would answer, reached by name through the production client.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(super::PublicOnly))
            .build()
            .expect("client");
        let err = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .expect_err("refused before connecting");
        let chain = herald_shared::telemetry::error_chain(&err);
        assert!(chain.contains("internal address"), "{chain}");
    }
}
