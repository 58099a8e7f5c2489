//! The API's configuration, from environment variables.

use std::net::SocketAddr;

use herald_shared::DbConfig;
use herald_shared::config::{ConfigError, Env, ProcessEnv, parse_or, production_secret};

use crate::auth::{Scope, TokenError, Tokens};

/// Everything `herald-api` reads at start-up.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `APP_ENV` (default development): production refuses http webhook URLs and placeholder or
    /// short secrets.
    pub app_env: herald_shared::config::AppEnv,
    /// Which webhook URLs may be registered (`WEBHOOK_ALLOW_PRIVATE_URLS`; internal ones never by
    /// default).
    pub webhook_urls: herald_shared::outbound::UrlPolicy,
    /// `API_ADDR` (default 127.0.0.1:8080; port 0 picks a free port).
    pub addr: SocketAddr,
    /// `API_METRICS_ADDR` (default 127.0.0.1:9101; port 0 picks one): the only listener that
    /// serves `/metrics`; keep it off the public network.
    pub metrics_addr: SocketAddr,
    /// `API_TOKENS` (comma list of `TOKEN`, `send:TOKEN`, `admin:TOKEN`) merged with `API_TOKEN`
    /// (full access): the bearer tokens `/v1` accepts, each at least 32 characters; one at least.
    pub tokens: Tokens,
    /// `FRONTEND_URL`: base of the links in emails.
    pub frontend_url: String,
    /// `EMAIL_FROM`: the sender address (checked here so a typo fails at start-up).
    pub email_from: String,
    /// `EMAIL_FROM_ALLOWED` (default: just `EMAIL_FROM`): the senders a request's `from` may name,
    /// addresses and `@domain` entries (the identities verified in SES).
    pub email_from_allowed: herald_shared::email::message::AllowedSenders,
    /// `EMAIL_MAX_ATTEMPTS` (default 8): SES attempts per email job before it fails.
    pub email_max_attempts: u32,
    /// Database settings.
    pub db: DbConfig,
    /// The compliance guard's thresholds and windows (for `GET /v1/compliance` and metrics).
    pub compliance: herald_shared::compliance::Settings,
    /// `ADMIN_SESSION_SECRET` (at least 32 characters): signs dashboard sessions. Unset, a random
    /// one is made at start-up: sessions then end when the API restarts and are not shared by
    /// several API processes.
    pub admin_session_secret: herald_shared::Secret,
    /// `API_REQUEST_TIMEOUT_SECS` (default 30): a request still running after this is answered
    /// `503 request_timeout` (its work is dropped; a transaction in it rolls back).
    pub request_timeout: std::time::Duration,
    /// `API_MAX_CONCURRENT_REQUESTS` (default 512): requests served at once; more wait their turn
    /// (within the timeout).
    pub max_concurrent_requests: usize,
    /// `ADMIN_SESSION_HOURS` (default 12): how long a dashboard session lasts.
    pub admin_session_ttl: std::time::Duration,
    /// `PUBLIC_ADDR` (default 127.0.0.1:8081, or port 0 when `API_ADDR` asks for port 0): the
    /// public listener, serving only `/unsubscribe/{token}`; expose it through the site's proxy.
    pub public_addr: SocketAddr,
    /// `PUBLIC_RATE_LIMIT_PER_MINUTE` (default 30): requests one client may make to the public
    /// listener per minute.
    pub public_rate_limit: u32,
    /// `PUBLIC_TRUST_PROXY` (default false): take the client's address for the rate limit from
    /// the last `X-Forwarded-For` entry (set it only behind a proxy that appends one).
    pub public_trust_proxy: bool,
    /// Marketing mail (`MARKETING_EMAIL_ENABLED`, default true) and its unsubscribe links
    /// (`UNSUBSCRIBE_SECRETS`, `PUBLIC_URL`, `UNSUBSCRIBE_MAILTO`); `None` when disabled.
    pub marketing: Option<std::sync::Arc<herald_shared::unsubscribe::Marketing>>,
    /// How `POST /v1/emails` groups concurrent requests into statements
    /// (`API_ENQUEUE_STATEMENTS` in flight, `API_ENQUEUE_GROUP_MAX` emails each).
    pub enqueue_groups: herald_shared::email::group::GroupLimits,
}

impl ApiConfig {
    /// Loads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    /// Loads and validates the configuration from any variable source.
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        let addr = parse_or(env, "API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let mut tokens = Tokens::default();
        if let Some(token) = env.get("API_TOKEN") {
            if token.trim().chars().count() < crate::auth::MIN_TOKEN_CHARS {
                return Err(ConfigError::Invalid {
                    var: "API_TOKEN",
                    reason: "must be at least 32 characters".into(),
                });
            }
            tokens.push(token.trim(), Scope::Admin);
        }
        if let Some(list) = env.get("API_TOKENS") {
            tokens
                .parse_list(&list)
                .map_err(|TokenError::TooShort(n)| ConfigError::Invalid {
                    var: "API_TOKENS",
                    reason: format!("entry {n} is shorter than 32 characters"),
                })?;
        }
        if tokens.is_empty() {
            return Err(ConfigError::Missing { var: "API_TOKEN" });
        }
        let app_env = herald_shared::config::AppEnv::from_source(env)?;
        if let Some(token) = env.get("API_TOKEN") {
            production_secret("API_TOKEN", &token, app_env)?;
        }
        for (_, token) in crate::auth::list_entries(&env.get("API_TOKENS").unwrap_or_default()) {
            production_secret("API_TOKENS", token, app_env)?;
        }
        let frontend_url = herald_shared::config::frontend_url(env)?;
        let email_from = herald_shared::config::email_from(env)?;
        let email_from_allowed =
            match env.get("EMAIL_FROM_ALLOWED") {
                None => herald_shared::email::message::AllowedSenders::only(&email_from),
                Some(list) => herald_shared::email::message::AllowedSenders::parse(&list).map_err(
                    |reason| ConfigError::Invalid {
                        var: "EMAIL_FROM_ALLOWED",
                        reason,
                    },
                )?,
            };
        let email_max_attempts: u32 = parse_or(env, "EMAIL_MAX_ATTEMPTS", 8)?;
        if email_max_attempts == 0 {
            return Err(ConfigError::Invalid {
                var: "EMAIL_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        let admin_session_secret = match env.get("ADMIN_SESSION_SECRET") {
            Some(secret) if secret.chars().count() >= 32 => {
                production_secret("ADMIN_SESSION_SECRET", &secret, app_env)?;
                secret
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    var: "ADMIN_SESSION_SECRET",
                    reason: "must be at least 32 characters".into(),
                });
            }
            None => random_secret()?,
        };
        let hours: u64 = parse_or(env, "ADMIN_SESSION_HOURS", 12)?;
        if hours == 0 || hours > 24 * 30 {
            return Err(ConfigError::Invalid {
                var: "ADMIN_SESSION_HOURS",
                reason: "must be between 1 and 720".into(),
            });
        }
        let metrics_addr = parse_or(
            env,
            "API_METRICS_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 9101)),
        )?;
        if metrics_addr.port() != 0 && metrics_addr == addr {
            return Err(ConfigError::Invalid {
                var: "API_METRICS_ADDR",
                reason: "must differ from API_ADDR: /metrics is served only on its own listener"
                    .into(),
            });
        }
        let request_timeout: u64 = parse_or(env, "API_REQUEST_TIMEOUT_SECS", 30)?;
        if request_timeout == 0 {
            return Err(ConfigError::Invalid {
                var: "API_REQUEST_TIMEOUT_SECS",
                reason: "must be at least 1".into(),
            });
        }
        let max_concurrent_requests: usize = parse_or(env, "API_MAX_CONCURRENT_REQUESTS", 512)?;
        if max_concurrent_requests == 0 {
            return Err(ConfigError::Invalid {
                var: "API_MAX_CONCURRENT_REQUESTS",
                reason: "must be at least 1".into(),
            });
        }
        // Unset, it follows an API_ADDR that asks for port 0 (tests running many APIs at once).
        let public_default = if addr.port() == 0 {
            SocketAddr::new(addr.ip(), 0)
        } else {
            SocketAddr::from(([127, 0, 0, 1], 8081))
        };
        let public_addr = parse_or(env, "PUBLIC_ADDR", public_default)?;
        let public_rate_limit: u32 = parse_or(env, "PUBLIC_RATE_LIMIT_PER_MINUTE", 30)?;
        if public_rate_limit == 0 {
            return Err(ConfigError::Invalid {
                var: "PUBLIC_RATE_LIMIT_PER_MINUTE",
                reason: "must be at least 1".into(),
            });
        }
        let enqueue_statements: usize = parse_or(env, "API_ENQUEUE_STATEMENTS", 4)?;
        if !(1..=64).contains(&enqueue_statements) {
            return Err(ConfigError::Invalid {
                var: "API_ENQUEUE_STATEMENTS",
                reason: "must be 1 to 64".into(),
            });
        }
        let enqueue_group_max: usize = parse_or(env, "API_ENQUEUE_GROUP_MAX", 100)?;
        if !(1..=1000).contains(&enqueue_group_max) {
            return Err(ConfigError::Invalid {
                var: "API_ENQUEUE_GROUP_MAX",
                reason: "must be 1 to 1000".into(),
            });
        }
        Ok(Self {
            webhook_urls: herald_shared::outbound::UrlPolicy::from_source(env, app_env)?,
            app_env,
            enqueue_groups: herald_shared::email::group::GroupLimits {
                statements: enqueue_statements,
                max_group: enqueue_group_max,
            },
            public_addr,
            public_rate_limit,
            public_trust_proxy: parse_or(env, "PUBLIC_TRUST_PROXY", false)?,
            marketing: herald_shared::unsubscribe::Marketing::from_source(env, app_env)?
                .map(std::sync::Arc::new),
            request_timeout: std::time::Duration::from_secs(request_timeout),
            max_concurrent_requests,
            metrics_addr,
            admin_session_secret: herald_shared::Secret::new(admin_session_secret),
            admin_session_ttl: std::time::Duration::from_secs(hours * 3600),
            addr,
            tokens,
            frontend_url,
            email_from,
            email_from_allowed,
            email_max_attempts,
            db: DbConfig::from_source(env)?,
            compliance: herald_shared::compliance::Settings::from_source(env)?,
        })
    }
}

/// 32 random bytes, hex; the system's generator failing is a start-up error naming the variable.
fn random_secret() -> Result<String, ConfigError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0_u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ConfigError::Invalid {
            var: "ADMIN_SESSION_SECRET",
            reason: "unset, and no random one could be made (the system's generator failed)".into(),
        })?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_complete_environment_loads_with_defaults() {
        let env = [
            ("API_TOKEN", TOKEN),
            ("FRONTEND_URL", "https://app.example.com/"),
            ("EMAIL_FROM", "noreply@example.com"),
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            ("UNSUBSCRIBE_SECRETS", TOKEN),
        ];
        let config = ApiConfig::from_source(&env).expect("valid");
        assert_eq!(config.addr.port(), 8080);
        assert_eq!(config.public_addr.port(), 8081);
        let err = ApiConfig::from_source(&[env[0], env[1], env[2], env[3]])
            .expect_err("marketing on by default needs UNSUBSCRIBE_SECRETS");
        assert!(err.to_string().starts_with("UNSUBSCRIBE_SECRETS"), "{err}");
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

    #[test]
    fn api_tokens_merge_with_api_token_and_name_a_short_entry() {
        let base = [
            ("FRONTEND_URL", "https://x.y"),
            ("EMAIL_FROM", "noreply@example.com"),
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            ("UNSUBSCRIBE_SECRETS", TOKEN),
        ];
        let send = "send:ssssssssssssssssssssssssssssssss";
        let env =
            |extra: &[(&'static str, &'static str)]| -> std::collections::HashMap<String, String> {
                base.iter()
                    .chain(extra)
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            };
        let c = ApiConfig::from_source(&env(&[("API_TOKEN", TOKEN), ("API_TOKENS", send)]))
            .expect("valid");
        assert_eq!(c.tokens.scope_of(TOKEN), Some(Scope::Admin));
        assert_eq!(
            c.tokens.scope_of("ssssssssssssssssssssssssssssssss"),
            Some(Scope::Send)
        );
        let only_list = ApiConfig::from_source(&env(&[("API_TOKENS", send)])).expect("valid");
        assert_eq!(only_list.tokens.scope_of(TOKEN), None);
        let short =
            ApiConfig::from_source(&env(&[("API_TOKENS", "admin:short")])).expect_err("short");
        assert!(short.to_string().starts_with("API_TOKENS"), "{short}");
        assert!(!short.to_string().contains("short,"), "{short}");
        let none = ApiConfig::from_source(&env(&[])).expect_err("none");
        assert!(none.to_string().starts_with("API_TOKEN"), "{none}");
    }

    /// The variables `.env.example` sets, as a newcomer copying it would have them.
    fn example_env() -> std::collections::HashMap<String, String> {
        include_str!("../../.env.example")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect()
    }

    #[test]
    fn production_refuses_to_start_with_the_secrets_of_env_example() {
        let mut env = example_env();
        env.insert("APP_ENV".into(), "production".into());
        env.insert("PUBLIC_URL".into(), "https://mail.example.com".into());
        env.insert("WEBHOOK_ALLOW_PRIVATE_URLS".into(), "false".into());
        let err = ApiConfig::from_source(&env).expect_err("shipped API_TOKEN");
        assert!(err.to_string().starts_with("API_TOKEN is invalid"), "{err}");

        env.insert(
            "API_TOKEN".into(),
            "7d0f6a1c9e2b4d8f3a5c7e9b1d3f5a7c".into(),
        );
        let err = ApiConfig::from_source(&env).expect_err("shipped UNSUBSCRIBE_SECRETS");
        assert!(err.to_string().starts_with("UNSUBSCRIBE_SECRETS"), "{err}");

        env.insert(
            "UNSUBSCRIBE_SECRETS".into(),
            "0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b,an-operator-token-of-32-characters".into(),
        );
        let err = ApiConfig::from_source(&env).expect_err("a shipped secret kept for rotation");
        assert!(err.to_string().starts_with("UNSUBSCRIBE_SECRETS"), "{err}");

        env.insert(
            "UNSUBSCRIBE_SECRETS".into(),
            "0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b".into(),
        );
        env.insert(
            "API_TOKENS".into(),
            "send:an-application-server-token-of-32-chars".into(),
        );
        let err = ApiConfig::from_source(&env).expect_err("shipped API_TOKENS entry");
        assert!(err.to_string().starts_with("API_TOKENS"), "{err}");

        env.remove("API_TOKENS");
        env.insert(
            "ADMIN_SESSION_SECRET".into(),
            "change-me-to-a-long-random-string-of-32-or-more".into(),
        );
        let err = ApiConfig::from_source(&env).expect_err("shipped ADMIN_SESSION_SECRET");
        assert!(err.to_string().starts_with("ADMIN_SESSION_SECRET"), "{err}");

        env.remove("ADMIN_SESSION_SECRET");
        let config = ApiConfig::from_source(&env).expect("generated secrets start");
        assert!(config.app_env.is_production());
        // The same example secrets are fine for a local run.
        let mut dev = example_env();
        dev.insert("WEBHOOK_ALLOW_PRIVATE_URLS".into(), "true".into());
        assert!(ApiConfig::from_source(&dev).is_ok());
    }
}
