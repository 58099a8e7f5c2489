//! Logging set-up and the shutdown signal shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber: `LOG_FORMAT` `pretty` (default, for people) or `json`
/// (one object per line, for log pipelines); `RUST_LOG` filters (default `info,sqlx=warn`).
pub fn init() -> Result<(), crate::ConfigError> {
    use crate::config::{Env, ProcessEnv};
    // sqlx logs server notices such as "relation already exists, skipping" at info.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second call (tests) keeps the first subscriber.
    match ProcessEnv.get("LOG_FORMAT").as_deref().map(str::trim) {
        None | Some("pretty") => {
            let _ = builder.try_init();
        }
        Some("json") => {
            let _ = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .try_init();
        }
        Some(_) => {
            let _ = builder.try_init();
            return Err(crate::ConfigError::Invalid {
                var: "LOG_FORMAT",
                reason: "must be json or pretty".into(),
            });
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// An error and its causes on one line, leaving out causes whose text the previous message
/// already contains (sqlx and thiserror wrappers often repeat their source).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("context")]
    struct Context(#[source] Inner);

    #[test]
    fn repeated_causes_are_printed_once_and_new_ones_are_kept() {
        assert_eq!(error_chain(&Repeats(Inner)), "outer: inner detail");
        assert_eq!(error_chain(&Context(Inner)), "context: inner detail");
    }
}
