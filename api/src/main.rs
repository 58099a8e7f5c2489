//! `herald-api`: loads its configuration, connects, serves until SIGINT/SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use herald_api::{ApiConfig, Application};
use herald_shared::{db, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(err) = telemetry::init() {
        eprintln!("herald-api: {err}");
        return ExitCode::FAILURE;
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald-api: {}", telemetry::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = ApiConfig::from_env()?;
    let pool = db::connect(&config.db)
        .await
        .context("connecting to the database")?;
    db::ensure_current(&mut *pool.acquire().await?).await?;
    let app = Application::build(config, pool.clone())
        .await
        .context("binding API_ADDR or API_METRICS_ADDR")?;
    let addr = app.local_addr()?;
    // Scripts and tests read this line to learn the port when API_ADDR asks for port 0.
    println!("herald-api listening on http://{addr}");
    let metrics_addr = app.metrics_addr()?;
    println!("herald-api metrics on http://{metrics_addr}/metrics");
    let public_addr = app.public_addr()?;
    println!("herald-api public on http://{public_addr}");
    tracing::info!(%addr, %metrics_addr, %public_addr, "api listening");
    app.serve(telemetry::shutdown_signal()).await?;
    pool.close().await;
    tracing::info!("api stopped");
    Ok(())
}
