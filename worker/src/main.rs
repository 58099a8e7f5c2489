//! `herald-worker [run]` drains the queues; `herald-worker migrate` applies migrations.

use std::process::ExitCode;

use anyhow::{Context, bail};
use herald_shared::{DbConfig, db, telemetry};
use std::sync::Arc;

use herald_shared::metrics::Metrics;
use herald_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

const HELP: &str = "\
herald-worker: Herald's background worker

USAGE:
    herald-worker [run]     check the schema is current, then send email jobs until SIGINT/SIGTERM
    herald-worker migrate   create the database if missing and apply pending migrations";

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(err) = telemetry::init() {
        eprintln!("herald-worker: {err}");
        return ExitCode::FAILURE;
    }
    match dispatch().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald-worker: {}", telemetry::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None | Some("run") => run().await,
        Some("migrate") => migrate().await,
        Some("-h" | "--help" | "help") => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

async fn migrate() -> anyhow::Result<()> {
    let mut config = DbConfig::from_env()?;
    // A migration may rightly run longer than a query should.
    config.statement_timeout = std::time::Duration::ZERO;
    if db::create_database_if_missing(&config).await? {
        tracing::info!("created the database");
    }
    let pool = db::connect(&config)
        .await
        .context("connecting to the database")?;
    db::migrate(&pool).await.context("applying migrations")?;
    tracing::info!("migrations are current");
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let config = WorkerConfig::from_env()?;
    let pool = db::connect(&config.db)
        .await
        .context("connecting to the database")?;
    db::ensure_current(&pool).await?;
    // The compliance gauges use the configured windows and minimum sample, as the guard does.
    let metrics = Arc::new(Metrics::with_compliance(config.compliance.clone()));
    let ctx = herald_worker::email_context(&config, pool.clone(), metrics.clone()).await;
    let token = CancellationToken::new();
    let (metrics_addr, metrics_server) = herald_worker::serve_metrics(
        config.metrics_addr,
        pool.clone(),
        metrics.clone(),
        token.clone().cancelled_owned(),
    )
    .await
    .context("binding METRICS_ADDR")?;
    // Scripts and tests read this line to learn the port when METRICS_ADDR asks for port 0.
    println!("herald-worker metrics on http://{metrics_addr}/metrics");
    let consumer =
        match herald_worker::feedback_consumer(&config, pool.clone(), metrics.clone()).await {
            Some(consumer) => Some(tokio::spawn(consumer.run(token.clone()))),
            None => {
                tracing::warn!(
                    "SQS_FEEDBACK_QUEUE_URL is not set: bounces and complaints are not read"
                );
                None
            }
        };
    tokio::spawn({
        let token = token.clone();
        async move {
            telemetry::shutdown_signal().await;
            token.cancel();
        }
    });
    let ticker = tokio::spawn(herald_worker::maintenance::run_ticker(
        pool.clone(),
        config.schedules.clone(),
        token.clone(),
    ));
    tracing::info!(queue = herald_shared::email::EMAIL_QUEUE, "worker started");
    herald_worker::run(config, pool.clone(), ctx, token.clone().cancelled_owned()).await?;
    token.cancel();
    if let Some(consumer) = consumer {
        let _ = consumer.await;
    }
    let _ = ticker.await;
    let _ = metrics_server.await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
