//! Herald's worker: email jobs from apalis-postgres, sent through SES.
//!
//! Over 450 lines because this is where the parts are wired together (the email context, the
//! three queues with their backends, the relay, the metrics listener); each part lives in its own
//! module and this file only connects them, so reading it once shows the whole process.

pub mod app;
pub mod backend;
pub mod config;
pub mod email_job;
pub mod feedback;
pub mod job;
pub mod maintenance;
pub mod outbound;
pub mod ses;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PostgresStorage, Pubsub};
use herald_shared::email::{EMAIL_QUEUE, EmailJob};
use herald_shared::maintenance::{MAINTENANCE_QUEUE, MaintenanceJob};
use herald_shared::metrics::Metrics;
use sqlx::PgPool;

pub use app::{AppError, Application};
pub use config::WorkerConfig;
use email_job::EmailContext;
use ses::SesSender;

/// Builds the email context: the SES client and the sending rate every process shares.
pub async fn email_context(
    config: &WorkerConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> Arc<EmailContext> {
    let aws = ses::aws_config(config.ses_timeout).await;
    let sender = SesSender::new(
        aws_sdk_sesv2::Client::new(&aws),
        config.email_from.clone(),
        config.ses_configuration_sets.clone(),
    );
    let send_rate = match config.ses_max_send_rate {
        Some(rate) => rate,
        None => match sender.max_send_rate().await {
            Some(rate) => rate,
            None => {
                tracing::warn!(
                    rate = config.ses_default_send_rate,
                    "using SES_DEFAULT_SEND_RATE"
                );
                config.ses_default_send_rate
            }
        },
    };
    tracing::info!(emails_per_second = send_rate, "send rate limit");
    email_context_with(config, pool, Arc::new(sender), send_rate, metrics)
}

/// The email context from the configuration and a sender (the SES client in production; a fake
/// or a mocked SES in tests), sending at most `send_rate` emails per second. The one place an
/// [`EmailContext`] is built.
pub fn email_context_with(
    config: &WorkerConfig,
    pool: PgPool,
    sender: Arc<dyn ses::EmailSender>,
    send_rate: f64,
    metrics: Arc<Metrics>,
) -> Arc<EmailContext> {
    let ledger = email_job::LedgerGroups::start(&pool);
    Arc::new(EmailContext {
        pool,
        sender,
        frontend_url: config.frontend_url.clone(),
        marketing: config.marketing.clone(),
        templates: Arc::default(),
        send_rate,
        backoff_base: config.backoff_base,
        backoff_max: config.backoff_max,
        pause: config.pause,
        slots: Default::default(),
        metrics,
        compliance_recheck: config.compliance_recheck,
        ledger,
        in_flight: Default::default(),
    })
}

/// The feedback consumer, if `SQS_FEEDBACK_QUEUE_URL` is set.
pub async fn feedback_consumer(
    config: &WorkerConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> Option<feedback::FeedbackConsumer> {
    let queue_url = config.sqs_feedback_queue_url.clone()?;
    let verifier = if config.sns_verify_signatures {
        match feedback::SnsVerifier::new(&config.sns_signing_cert_url_pattern) {
            Ok(v) => Some(v),
            Err(e) => {
                // The pattern was validated with the configuration; only the HTTP client remains.
                tracing::error!(error = %e, "feedback consumer not started");
                return None;
            }
        }
    } else {
        tracing::warn!(
            "SNS_VERIFY_SIGNATURES=false: feedback is applied without checking SNS signatures (for the local emulator only)"
        );
        None
    };
    let trust = feedback::Trust {
        formats: config.feedback_formats.clone(),
        allowed_topics: config.sns_allowed_topic_arns.clone(),
        verifier,
        confirm_subscriptions: config.sns_confirm_subscriptions,
    };
    for reason in feedback::Reason::ALL {
        // Every reason starts at zero, so an alert on a rise works from the first refusal.
        metrics
            .feedback_rejected
            .get_or_create(&herald_shared::metrics::ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc_by(0);
    }
    let wait_seconds = 20;
    // A long poll lasts 20 s, longer than an SES call's deadline.
    let aws = ses::aws_config(Duration::from_secs(wait_seconds as u64 + 10)).await;
    Some(feedback::FeedbackConsumer {
        sqs: aws_sdk_sqs::Client::new(&aws),
        queue_url,
        pool,
        policy: Arc::new(feedback::Policy {
            soft_bounce_threshold: config.soft_bounce_threshold,
            soft_bounce_window: chrono::Duration::days(config.soft_bounce_window_days),
            require_known_message: config.feedback_require_known_message,
        }),
        trust: Arc::new(trust),
        concurrency: config.feedback_concurrency,
        wait_seconds,
        stats: Arc::default(),
        metrics,
        dead_letter: Arc::default(),
    })
}

/// The queue config of Herald's email workers: batch size and heartbeats from `config`. No
/// `Running` write per job: a fetched job is already `Queued` under this worker's lock, which Herald
/// reports, holds and rescues alike; with acks flushed apart from the loop, a job's lock and its
/// ack no longer share a flush, and the write would cost a row update per job.
pub fn email_queue_config(config: &WorkerConfig) -> QueueConfig {
    QueueConfig::default()
        .queue(EMAIL_QUEUE)
        .batch_size(config.batch_size)
        .heartbeat_interval(config.heartbeat)
        .missed_heartbeats(config.missed_heartbeats)
        .lock_tasks(false)
}

/// The backend every Herald worker polls: LISTEN/NOTIFY wakes it at once, the interval picks up
/// delayed and retried jobs (NOTIFY fires on insert only).
pub fn queue_backend<T>(
    pool: &PgPool,
    queue: &str,
    queue_config: QueueConfig,
    poll_interval: Duration,
) -> PollWith<PostgresStorage<T>, Strategy> {
    PostgresStorage::<T>::new(pool)
        .with_config(queue_config)
        .poll_with_strategy(
            Strategy::new()
                .stream(Driven::spawn(Pubsub::new(pool.clone(), queue.to_owned())))
                .interval(poll_interval),
        )
}

/// The email queue's backend: [`backend::PipelinedStorage`] (acks flushed and the next batch
/// fetched off the worker's loop; no ack for the jobs `acked` holds, recorded with their `sent`
/// write), woken like [`queue_backend`].
pub fn email_backend<T>(
    pool: &PgPool,
    queue: &str,
    queue_config: QueueConfig,
    poll_interval: Duration,
    acked: Arc<backend::AckedJobs>,
) -> PollWith<backend::PipelinedStorage<T>, Strategy> {
    backend::PipelinedStorage::<T>::new(pool, queue_config, acked).poll_with_strategy(
        Strategy::new()
            .stream(Driven::spawn(Pubsub::new(pool.clone(), queue.to_owned())))
            .interval(poll_interval),
    )
}

/// A backend woken by `wake` (this process's webhook relay, after it queued deliveries) and polled
/// at `poll_interval` for retries, holding no LISTEN connection, so each process keeps its pool
/// for email.
pub fn woken_backend<T>(
    pool: &PgPool,
    queue_config: QueueConfig,
    poll_interval: Duration,
    wake: Arc<tokio::sync::Notify>,
) -> PollWith<PostgresStorage<T>, Strategy> {
    let woken = futures::stream::unfold(wake, |wake| async move {
        wake.notified().await;
        Some(((), wake))
    });
    PostgresStorage::<T>::new(pool)
        .with_config(queue_config)
        .poll_with_strategy(
            Strategy::new()
                .stream(Driven::spawn(woken))
                .interval(poll_interval),
        )
}

/// A stream polled by a task of its own, its items handed over through a small buffer (extra
/// items are dropped: they are wake-ups, and the interval poll covers a lost one).
///
/// apalis polls its wake-up streams only between fetches. After PostgreSQL cut the LISTEN
/// connection, `Pubsub` reconnects on its next poll; a fetch then waiting for the database left
/// that connection opened but never sent its startup packet, PostgreSQL's fast shutdown waited for
/// it (up to its `authentication_timeout`), and the fetch waited for PostgreSQL: a circular wait
/// that only the 30 s `DB_ACQUIRE_TIMEOUT` broke (seen in 5 of 20 restart runs). Driven, the
/// reconnect always completes or fails at once.
#[derive(Debug)]
pub struct Driven<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
}

impl<T: Send + 'static> Driven<T> {
    /// Spawns the task driving `stream`; it ends with the stream or when this is dropped.
    pub fn spawn(stream: impl futures::Stream<Item = T> + Send + 'static) -> Self {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    item = stream.next() => match item {
                        Some(item) => {
                            let _ = tx.try_send(item);
                        }
                        None => break,
                    },
                }
            }
        });
        Self { rx }
    }
}

impl<T> futures::Stream for Driven<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

/// Why the queue workers could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The queue workers stopped with an error.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The webhook HTTP client could not be built (its TLS set-up).
    #[error("webhook HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Runs the email workers until `shutdown` resolves, then lets in-flight jobs finish within
/// `SHUTDOWN_TIMEOUT`. A worker that fails (a backend error) is restarted under a new name.
pub async fn run(
    config: WorkerConfig,
    pool: PgPool,
    ctx: Arc<EmailContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let queue_config = email_queue_config(&config);
    let concurrency = config.concurrency;
    let poll_interval = config.poll_interval;
    let maintenance_ctx = Arc::new(maintenance::MaintenanceContext {
        pool: pool.clone(),
        settings: config.maintenance.clone(),
        metrics: ctx.metrics.clone(),
        compliance: config.compliance.clone(),
        in_flight: Default::default(),
    });
    let maintenance_config = queue_config.clone().queue(MAINTENANCE_QUEUE).batch_size(1);
    let maintenance_pool = pool.clone();
    // Built once at start-up: only a broken TLS set-up makes it fail.
    let webhook_ctx = Arc::new(webhooks::WebhookContext::new(
        &config,
        pool.clone(),
        ctx.metrics.clone(),
    )?);
    let webhook_config = queue_config
        .clone()
        .queue(herald_shared::webhooks::WEBHOOK_QUEUE);
    let webhook_concurrency = config.webhook_concurrency;
    let webhook_pool = pool.clone();
    // The relay fans the outbox's events out into delivery jobs and wakes this process's delivery
    // worker; a process that delivers no webhooks runs none.
    let wake = Arc::new(tokio::sync::Notify::new());
    let relay_token = tokio_util::sync::CancellationToken::new();
    let _relay_stops = relay_token.clone().drop_guard();
    if webhook_concurrency > 0 {
        tokio::spawn(webhooks::relay(
            pool.clone(),
            config.webhook_relay_interval,
            wake.clone(),
            relay_token.clone(),
        ));
    }
    let monitor = Monitor::new()
        .should_restart(|worker, error| {
            tracing::error!(worker = worker.name(), error = %error, "worker stopped with an error; restarting");
            pause_before_restart();
            true
        })
        .shutdown_timeout(config.shutdown_timeout)
        .register(move |_restarts| {
            let backend = email_backend::<EmailJob>(
                &pool,
                EMAIL_QUEUE,
                queue_config.clone(),
                poll_interval,
                Arc::clone(&ctx.ledger.acked),
            );
            // A fresh name per start: a restarted worker under an old name would strand the
            // jobs its predecessor had locked.
            WorkerBuilder::new(format!("herald-email-{}", ulid::Ulid::generate()))
                .backend(backend)
                .concurrency(concurrency)
                .data(ctx.clone())
                .build(job::handle::<EmailJob>)
        })
        .register(move |_restarts| {
            let pool = &maintenance_pool;
            let backend =
                queue_backend::<MaintenanceJob>(
                pool,
                MAINTENANCE_QUEUE,
                maintenance_config.clone(),
                poll_interval,
            );
            // One maintenance job at a time per process: they are heavy, not urgent.
            WorkerBuilder::new(format!("herald-maintenance-{}", ulid::Ulid::generate()))
                .backend(backend)
                .concurrency(1)
                .data(maintenance_ctx.clone())
                .build(job::handle::<MaintenanceJob>)
        })
        ;
    let monitor = if webhook_concurrency > 0 {
        monitor.register(move |_restarts| {
            let backend = woken_backend::<herald_shared::webhooks::WebhookJob>(
                &webhook_pool,
                webhook_config.clone(),
                poll_interval,
                wake.clone(),
            );
            WorkerBuilder::new(format!("herald-webhooks-{}", ulid::Ulid::generate()))
                .backend(backend)
                .concurrency(webhook_concurrency)
                .data(webhook_ctx.clone())
                .build(job::handle::<herald_shared::webhooks::WebhookJob>)
        })
    } else {
        monitor
    };
    monitor
        .run_with_signal(async move {
            shutdown.await;
            relay_token.cancel();
            tracing::info!("shutdown signal: no new jobs; finishing those in flight");
            Ok(())
        })
        .await?;
    Ok(())
}

/// Keeps a database outage from turning into a busy restart loop. apalis asks whether to restart
/// from a synchronous callback inside its poll, so the pause cannot be awaited; `block_in_place`
/// first hands this thread's other tasks to the rest of the runtime, so nothing else stalls. On a
/// current-thread runtime (tests) there is no such hand-off: no pause rather than a stall.
fn pause_before_restart() {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
        tokio::task::block_in_place(|| std::thread::sleep(std::time::Duration::from_millis(500)));
    }
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub fn serve_metrics(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use axum::http::{StatusCode, header};
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let (pool, metrics) = (pool.clone(), metrics.clone());
            let format = herald_shared::metrics::Format::negotiate(
                headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
            );
            async move {
                match metrics.render_as(&pool, format).await {
                    Ok(body) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, format.content_type())],
                        body,
                    ),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot read the database for /metrics");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::CONTENT_TYPE, "text/plain")],
                            String::new(),
                        )
                    }
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %err, "metrics server stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::StreamExt;

    use super::Driven;

    #[tokio::test]
    async fn a_driven_stream_progresses_with_nobody_reading_and_stops_when_dropped() {
        let polled = Arc::new(AtomicUsize::new(0));
        let counter = polled.clone();
        let stream = futures::stream::unfold(0_u32, move |n| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((n, n + 1))
            }
        });
        let mut driven = Driven::spawn(stream);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            polled.load(Ordering::SeqCst) > 20,
            "the stream ran only while read"
        );
        assert_eq!(driven.next().await, Some(0), "buffered items come in order");
        drop(driven);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = polled.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            polled.load(Ordering::SeqCst) <= before + 1,
            "the task stops with its reader"
        );
    }
}
