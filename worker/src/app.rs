//! The worker as one value: [`Application::build`] connects, checks the schema, builds the email
//! context and binds the metrics listener; [`Application::run_until_stopped`] runs the queues, the
//! feedback consumer and the schedule ticker until the token is cancelled. `main` and the tests
//! share it; a test may leave parts out ([`Application::without_ticker`],
//! [`Application::without_feedback`]) or, for deterministic runs, use [`crate::job::drain`].

use std::net::SocketAddr;
use std::sync::Arc;

use herald_shared::db;
use herald_shared::metrics::Metrics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::email_job::EmailContext;
use crate::{WorkerConfig, email_context, feedback_consumer, maintenance, serve_metrics};

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database is unreachable or its schema is behind.
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    /// `METRICS_ADDR` could not be bound.
    #[error("binding METRICS_ADDR: {0}")]
    Bind(#[from] std::io::Error),
    /// The queue workers stopped with an error.
    #[error("job queue: {0}")]
    Queue(#[from] crate::RunError),
}

/// A built worker, ready to run.
#[derive(Debug)]
pub struct Application {
    config: WorkerConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    ctx: Arc<EmailContext>,
    metrics_listener: tokio::net::TcpListener,
    parts: Parts,
}

/// The parts [`Application::run_until_stopped`] runs besides the queues (all in production).
#[derive(Debug, Clone, Copy)]
struct Parts {
    /// The schedule ticker.
    ticker: bool,
    /// The SQS feedback consumer (when configured).
    feedback: bool,
    /// Whether the pool is the application's own, closed when it stops (not a test's).
    owns_pool: bool,
}

impl Application {
    /// Connects to the database (whose schema must be current), builds the SES client and binds
    /// `METRICS_ADDR` (port 0 picks a free one; see [`Self::metrics_addr`]).
    pub async fn build(config: WorkerConfig) -> Result<Self, AppError> {
        let pool = db::connect(&config.db).await?;
        db::ensure_current(&mut *pool.acquire().await.map_err(db::DbError::from)?).await?;
        // The compliance gauges use the configured windows and minimum sample, as the guard does.
        let metrics = Arc::new(Metrics::with_compliance(config.compliance.clone()));
        let ctx = email_context(&config, pool.clone(), metrics.clone()).await;
        let mut app = Self::with_context(config, pool, ctx).await?;
        app.parts.owns_pool = true;
        Ok(app)
    }

    /// A worker around an email context built elsewhere (a test's mocked SES, say).
    pub async fn with_context(
        config: WorkerConfig,
        pool: PgPool,
        ctx: Arc<EmailContext>,
    ) -> Result<Self, AppError> {
        let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
        Ok(Self {
            metrics: ctx.metrics.clone(),
            config,
            pool,
            ctx,
            metrics_listener,
            parts: Parts {
                ticker: true,
                feedback: true,
                owns_pool: false,
            },
        })
    }

    /// Leaves out the schedule ticker (a test that enqueues its own maintenance jobs, or none).
    #[must_use]
    pub fn without_ticker(mut self) -> Self {
        self.parts.ticker = false;
        self
    }

    /// Leaves out the SQS feedback consumer.
    #[must_use]
    pub fn without_feedback(mut self) -> Self {
        self.parts.feedback = false;
        self
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Runs everything until `token` is cancelled, then lets in-flight jobs finish within
    /// `SHUTDOWN_TIMEOUT` and stops the rest.
    pub async fn run_until_stopped(self, token: CancellationToken) -> Result<(), AppError> {
        let Self {
            config,
            pool,
            metrics,
            ctx,
            metrics_listener,
            parts,
        } = self;
        let metrics_server = serve_metrics(
            metrics_listener,
            pool.clone(),
            metrics.clone(),
            token.clone().cancelled_owned(),
        );
        let consumer = if parts.feedback {
            match feedback_consumer(&config, pool.clone(), metrics.clone()).await {
                Some(consumer) => Some(tokio::spawn(consumer.run(token.clone()))),
                None => {
                    tracing::warn!(
                        "SQS_FEEDBACK_QUEUE_URL is not set: bounces and complaints are not read"
                    );
                    None
                }
            }
        } else {
            None
        };
        let ticker = parts.ticker.then(|| {
            tokio::spawn(maintenance::run_ticker(
                pool.clone(),
                config.schedules.clone(),
                token.clone(),
            ))
        });
        tracing::info!(queue = herald_shared::email::EMAIL_QUEUE, "worker started");
        let result = crate::run(config, pool.clone(), ctx, token.clone().cancelled_owned()).await;
        token.cancel();
        if let Some(consumer) = consumer {
            let _ = consumer.await;
        }
        if let Some(ticker) = ticker {
            let _ = ticker.await;
        }
        let _ = metrics_server.await;
        if parts.owns_pool {
            pool.close().await;
        }
        tracing::info!("worker stopped");
        Ok(result?)
    }
}
