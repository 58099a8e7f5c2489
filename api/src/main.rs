//! Herald's HTTP API binary. This first version only checks its database and waits for shutdown;
//! the routes arrive with the email pipeline.

use anyhow::Context;
use herald_shared::{DbConfig, db, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
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
