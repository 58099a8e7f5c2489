//! Herald's HTTP API binary. This first version only checks its database and waits for shutdown;
//! the routes arrive with the email pipeline.

use std::process::ExitCode;

use anyhow::Context;
use herald_shared::{DbConfig, db, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald-api: {}", telemetry::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = DbConfig::from_env()?;
    let pool = db::connect(&config)
        .await
        .context("connecting to the database")?;
    db::ensure_current(&pool).await?;
    tracing::info!("api started; no HTTP routes are served yet");
    telemetry::shutdown_signal().await;
    pool.close().await;
    Ok(())
}
