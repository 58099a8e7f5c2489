//! Shared set-up: queue schema, configuration, enqueueing, waiting for outcomes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_shared::email::{self, Category, EmailContent, EmailJob};
use herald_shared::jobs::{self, EnqueueOptions, JobStatus};
use herald_worker::WorkerConfig;
use herald_worker::app::Application;
use herald_worker::email_job::EmailContext;
use herald_worker::ses::SesSender;
use sqlx::{ConnectOptions, PgPool};
use tokio_util::sync::CancellationToken;

pub const FROM: &str = "noreply@herald.test";

/// The unsubscribe secret and public base the tests' workers and APIs share.
pub const UNSUBSCRIBE_SECRET: &str = "test-unsubscribe-secret-0123456789abcdef";
/// `PUBLIC_URL` in tests.
pub const PUBLIC_URL: &str = "https://mail.example.com";

/// Creates apalis's schema in a `#[sqlx::test]` database (which has only the app's migrations).
pub async fn setup_queue(pool: &PgPool) {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .expect("apalis schema");
}

/// A worker configuration for tests: fast polling and heartbeats, overridable.
pub fn worker_config(pool: &PgPool, extra: &[(&str, &str)]) -> WorkerConfig {
    let url = pool.connect_options().to_url_lossy().to_string();
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", url.as_str()),
        ("EMAIL_FROM", FROM),
        ("FRONTEND_URL", "https://app.example.com"),
        ("UNSUBSCRIBE_SECRETS", UNSUBSCRIBE_SECRET),
        ("PUBLIC_URL", PUBLIC_URL),
        ("WORKER_POLL_INTERVAL_MS", "100"),
        ("WORKER_HEARTBEAT_SECS", "1"),
        ("WORKER_MISSED_HEARTBEATS", "2"),
        ("SHUTDOWN_TIMEOUT", "5"),
        // Each test's worker serves /metrics on a port of its own.
        ("METRICS_ADDR", "127.0.0.1:0"),
        // Test receivers listen on loopback.
        ("WEBHOOK_ALLOW_PRIVATE_URLS", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut config = WorkerConfig::from_source(&env).expect("test worker config");
    // Tests of a pause see its end within half a second, not a minute.
    if !env.contains_key("COMPLIANCE_PAUSE_RECHECK_SECS") {
        config.compliance_recheck = Duration::from_millis(500);
    }
    config
}

/// The email context with a given SES client.
pub fn context(
    pool: &PgPool,
    client: aws_sdk_sesv2::Client,
    config: &WorkerConfig,
) -> Arc<EmailContext> {
    context_with_sender(
        pool,
        Arc::new(SesSender::new(client, FROM.to_owned(), Default::default())),
        config,
    )
}

/// The email context with any sender (an in-process fake, say), built as the worker builds it.
pub fn context_with_sender(
    pool: &PgPool,
    sender: Arc<dyn herald_worker::ses::EmailSender>,
    config: &WorkerConfig,
) -> Arc<EmailContext> {
    let metrics = Arc::new(herald_shared::metrics::Metrics::with_compliance(
        config.compliance.clone(),
    ));
    herald_worker::email_context_with(config, pool.clone(), sender, 1000.0, metrics)
}

/// A running in-process worker (the worker's own `Application`, without the schedule ticker and
/// the feedback consumer); dropping the handle does not stop it, `stop` does.
pub struct RunningWorker {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub async fn start(config: WorkerConfig, pool: &PgPool, ctx: Arc<EmailContext>) -> Self {
        let app = Application::with_context(config, pool.clone(), ctx)
            .await
            .expect("worker builds")
            .without_ticker()
            .without_feedback();
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            app.run_until_stopped(stop).await.expect("worker ran");
        });
        Self { token, task }
    }

    pub async fn stop(mut self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("worker stops within 15 s")
            .expect("worker task");
    }
}

/// Runs every due email job in this task (`job::drain`: deterministic, no worker, no polling),
/// checks that a second drain finds nothing due (no retry was scheduled), and answers each job's
/// status.
pub async fn drain_to_end(ctx: Arc<EmailContext>, pool: &PgPool, ids: &[String]) -> Vec<JobStatus> {
    use herald_worker::job::{Drained, drain};
    drain::<EmailJob>(ctx.clone()).await.expect("drain");
    assert_eq!(
        drain::<EmailJob>(ctx).await.expect("again"),
        Drained::default(),
        "nothing is left due: no retry was scheduled"
    );
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(status(pool, id).await);
    }
    out
}

/// Enqueues `n` raw emails to distinct recipients; returns their job ids.
pub async fn enqueue(pool: &PgPool, n: usize, tag: &str, category: Category) -> Vec<String> {
    enqueue_with(pool, n, tag, category, 8).await
}

/// Enqueues `n` raw emails to `<tag>-<i>@example.com` with `max_attempts`, 1,000 per transaction;
/// returns their job ids.
pub async fn enqueue_with(
    pool: &PgPool,
    n: usize,
    tag: &str,
    category: Category,
    max_attempts: u32,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = pool.begin().await.expect("tx");
        for &i in chunk {
            let job = EmailJob {
                envelope: Default::default(),
                to: format!("{tag}-{i}@example.com"),
                category,
                content: EmailContent::Raw {
                    subject: format!("Message {i}"),
                    text: Some("Hello".into()),
                    html: None,
                },
            };
            let options = EnqueueOptions {
                max_attempts,
                run_at: None,
                idempotency_key: None,
            };
            ids.push(
                email::enqueue(&mut tx, &job, options)
                    .await
                    .expect("enqueue")
                    .to_string(),
            );
        }
        tx.commit().await.expect("commit");
    }
    ids
}

/// Herald status of a job.
pub async fn status(pool: &PgPool, id: &str) -> JobStatus {
    let mut conn = pool.acquire().await.expect("conn");
    jobs::find(&mut conn, id)
        .await
        .expect("find")
        .expect("job exists")
        .status()
}

/// Waits until every job has one of the final statuses, or panics after `limit`.
pub async fn wait_until_final(pool: &PgPool, ids: &[String], limit: Duration) -> Vec<JobStatus> {
    let start = Instant::now();
    loop {
        let mut all = Vec::new();
        for id in ids {
            all.push(status(pool, id).await);
        }
        if all.iter().all(|s| {
            matches!(
                s,
                JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
            )
        }) {
            return all;
        }
        assert!(
            start.elapsed() < limit,
            "jobs not final after {limit:?}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ledger row of a job.
pub async fn delivery(pool: &PgPool, id: &str) -> email::ledger::Delivery {
    let mut conn = pool.acquire().await.expect("conn");
    email::ledger::find(&mut conn, id)
        .await
        .expect("query")
        .expect("ledger row")
}
