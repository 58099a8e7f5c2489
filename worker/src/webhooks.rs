//! Webhook delivery: one job per (event, endpoint) on `herald.webhooks`, queued by the outbox
//! trigger. A run POSTs the event signed (Standard Webhooks), records the attempt, and answers the
//! job adapter: delivered (2xx), retry with backoff (timeouts, connection errors, 408, 409, 429,
//! 5xx), or failed for good (any other status, or the last run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_shared::outbound::SystemLookup;
use herald_shared::webhooks::{self, Attempt, DeliveryStatus, Outgoing, WebhookJob};
use serde_json::json;
use sqlx::PgPool;

use crate::job::{HeraldJob, InFlight, Outcome, Runs};
use crate::outbound::{Outbound, PostError};

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

crate::job::job_context!(WebhookContext);

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
        match out.status {
            DeliveryStatus::Delivered => {
                return Outcome::Done(json!({"outcome": "delivered already"}));
            }
            DeliveryStatus::Failed => {
                return Outcome::Fatal("failed already; POST /retry sends it again".into());
            }
            DeliveryStatus::Pending => {}
        }
        if !out.enabled {
            let _ = record(
                &ctx,
                &out,
                None,
                0,
                Some("endpoint disabled"),
                None,
                DeliveryStatus::Failed,
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
                (
                    Some(code),
                    None,
                    Some(excerpt),
                    DeliveryStatus::Delivered,
                    done,
                )
            }
            Ok((Answer::Refused(why), excerpt)) => {
                tracing::warn!(delivery = %out.delivery_id, error = %why, "webhook refused; not retried");
                (
                    excerpt_code(&why),
                    Some(why.clone()),
                    Some(excerpt),
                    DeliveryStatus::Failed,
                    Outcome::Fatal(why),
                )
            }
            Ok((Answer::Retryable(why), excerpt)) => {
                let status = after_failure(runs);
                let next = retry_or_fail(&ctx, runs, why.clone());
                (excerpt_code(&why), Some(why), Some(excerpt), status, next)
            }
            Err(why) => {
                let status = after_failure(runs);
                let next = retry_or_fail(&ctx, runs, why.clone());
                (None, Some(why), None, status, next)
            }
        };
        let counted = match status {
            DeliveryStatus::Pending => "retried",
            other => other.as_str(),
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

/// A failed attempt's delivery status: another run comes unless this was the last.
fn after_failure(runs: Runs) -> DeliveryStatus {
    if runs.is_last() {
        DeliveryStatus::Failed
    } else {
        DeliveryStatus::Pending
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
    status: DeliveryStatus,
) -> Result<(), sqlx::Error> {
    let mut conn = ctx.pool.acquire().await?;
    let recorded = webhooks::record_attempt(
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
    if !recorded.moved {
        tracing::info!(delivery = %out.delivery_id, "delivery decided by another run meanwhile; attempt logged only");
    }
    if recorded.disabled {
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
    let (code, excerpt) = match ctx.outbound.post(&out.url, &headers, body).await {
        Ok(answer) => answer,
        // A URL stored before the rule was tightened, or a name now pointing inside: not retried.
        Err(refused @ PostError::Refused(_)) => {
            return Ok((Answer::Refused(refused.to_string()), String::new()));
        }
        Err(e) => return Err(e.to_string()),
    };
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
