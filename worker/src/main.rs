//! `herald-worker [run]` drains the queues; `herald-worker migrate` applies migrations.

use std::process::ExitCode;

use anyhow::{Context, bail};
use herald_shared::{DbConfig, db, telemetry};
use herald_worker::{Application, WorkerConfig};
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
    let app = Application::build(config).await?;
    // Scripts and tests read this line to learn the port when METRICS_ADDR asks for port 0.
    println!(
        "herald-worker metrics on http://{}/metrics",
        app.metrics_addr()?
    );
    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            telemetry::shutdown_signal().await;
            token.cancel();
        }
    });
    app.run_until_stopped(token).await?;
    Ok(())
}
