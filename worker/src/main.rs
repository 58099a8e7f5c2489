//! Herald's worker: `herald-worker [run]` drains the queues; `herald-worker migrate` applies migrations.

use std::process::ExitCode;

use anyhow::{Context, bail};
use herald_shared::{DbConfig, db, telemetry};

const HELP: &str = "\
herald-worker: Herald's background worker

USAGE:
    herald-worker [run]     check the schema is current, then run until SIGINT/SIGTERM
    herald-worker migrate   create the database if missing and apply pending migrations";

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
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
    let config = DbConfig::from_env()?;
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
    let config = DbConfig::from_env()?;
    let pool = db::connect(&config)
        .await
        .context("connecting to the database")?;
    db::ensure_current(&pool).await?;
    // The job queues, the feedback consumer and the schedules are registered here by later work.
    tracing::info!("worker started; no job queues are registered yet");
    telemetry::shutdown_signal().await;
    tracing::info!("shutdown signal received; stopping");
    pool.close().await;
    Ok(())
}
