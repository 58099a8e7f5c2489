//! The API's configuration, from environment variables.

use std::net::SocketAddr;

use herald_shared::config::{ConfigError, Env, ProcessEnv, parse_or, required};
use herald_shared::{DbConfig, Secret};

/// Everything `herald-api` reads at start-up.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `API_ADDR` (default 127.0.0.1:8080; port 0 picks a free port).
    pub addr: SocketAddr,
    /// `API_TOKEN`: the bearer token every `/v1` route requires (at least 32 characters).
    pub token: Secret,
    /// `FRONTEND_URL`: base of the links in emails.
    pub frontend_url: String,
    /// `EMAIL_FROM`: the sender address (checked here so a typo fails at start-up).
    pub email_from: String,
    /// `EMAIL_MAX_ATTEMPTS` (default 8): SES attempts per email job before it fails.
    pub email_max_attempts: u32,
    /// Database settings.
    pub db: DbConfig,
    /// The compliance guard's thresholds and windows (for `GET /v1/compliance` and metrics).
    pub compliance: herald_shared::compliance::Settings,
}

impl ApiConfig {
    /// Loads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    /// Loads and validates the configuration from any variable source.
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        let addr = parse_or(env, "API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let token = required(env, "API_TOKEN")?;
        if token.chars().count() < 32 {
            return Err(ConfigError::Invalid {
                var: "API_TOKEN",
                reason: "must be at least 32 characters".into(),
            });
        }
        let frontend_url = herald_shared::config::frontend_url(env)?;
        let email_from = herald_shared::config::email_from(env)?;
        let email_max_attempts: u32 = parse_or(env, "EMAIL_MAX_ATTEMPTS", 8)?;
        if email_max_attempts == 0 {
            return Err(ConfigError::Invalid {
                var: "EMAIL_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            addr,
            token: Secret::new(token),
            frontend_url,
            email_from,
            email_max_attempts,
            db: DbConfig::from_source(env)?,
            compliance: herald_shared::compliance::Settings::from_source(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_complete_environment_loads_with_defaults() {
        let config = ApiConfig::from_source(&[
            ("API_TOKEN", TOKEN),
            ("FRONTEND_URL", "https://app.example.com/"),
            ("EMAIL_FROM", "noreply@example.com"),
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
        ])
        .expect("valid");
        assert_eq!(config.addr.port(), 8080);
        assert_eq!(config.frontend_url, "https://app.example.com");
        assert_eq!(config.email_max_attempts, 8);
    }

    #[test]
    fn a_short_token_and_a_bad_url_name_their_variables() {
        let short = ApiConfig::from_source(&[("API_TOKEN", "short")]).expect_err("short");
        assert!(short.to_string().starts_with("API_TOKEN"), "{short}");
        let url = ApiConfig::from_source(&[("API_TOKEN", TOKEN), ("FRONTEND_URL", "ftp://x")])
            .expect_err("url");
        assert!(url.to_string().starts_with("FRONTEND_URL"), "{url}");
        let from = ApiConfig::from_source(&[
            ("API_TOKEN", TOKEN),
            ("FRONTEND_URL", "https://x.y"),
            ("EMAIL_FROM", "nobody"),
        ])
        .expect_err("from");
        assert!(from.to_string().starts_with("EMAIL_FROM"), "{from}");
    }
}
