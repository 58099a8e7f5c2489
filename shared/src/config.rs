//! Typed configuration read from environment variables, validated once at start-up.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::secret::Secret;

/// A configuration problem, always naming the environment variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set (or is empty).
    #[error("{var} is required but not set")]
    Missing {
        /// The variable's name.
        var: &'static str,
    },
    /// A variable is set to a value that cannot be used.
    #[error("{var} is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// Why the value was rejected (never the value itself when it may be secret).
        reason: String,
    },
}

/// Reads variables from some source: the process environment in production, a map in tests.
pub trait Env {
    /// The value of `name`, if set and not empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    /// `NAME`, else the contents of the file `NAME_FILE` names (Docker and compose secrets are
    /// files under /run/secrets), without its trailing newline.
    fn get(&self, name: &str) -> Option<String> {
        let set = |v: &String| !v.trim().is_empty();
        if let Some(v) = std::env::var(name).ok().filter(set) {
            return Some(v);
        }
        let path = std::env::var(format!("{name}_FILE")).ok().filter(set)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_owned()).filter(set),
            Err(error) => {
                // Start-up then reports the variable as missing; this says why.
                eprintln!("{name}_FILE: cannot read {path}: {error}");
                None
            }
        }
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .filter(|v| !v.trim().is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

/// Reads a required variable.
pub fn required(env: &impl Env, var: &'static str) -> Result<String, ConfigError> {
    env.get(var).ok_or(ConfigError::Missing { var })
}

/// Parses an optional variable, falling back to `default` when it is unset.
pub fn parse_or<T>(env: &impl Env, var: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match env.get(var) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e| ConfigError::Invalid {
            var,
            reason: format!("{e} (got {raw:?})"),
        }),
    }
}

/// `FRONTEND_URL`: the http(s) base of the links in emails, without a trailing slash. The one rule
/// both binaries apply.
pub fn frontend_url(env: &impl Env) -> Result<String, ConfigError> {
    let url = required(env, "FRONTEND_URL")?
        .trim_end_matches('/')
        .to_owned();
    if !(url.starts_with("https://") || url.starts_with("http://"))
        || url.contains(char::is_whitespace)
    {
        return Err(ConfigError::Invalid {
            var: "FRONTEND_URL",
            reason: "must be an http:// or https:// URL".into(),
        });
    }
    Ok(url)
}

/// `APP_ENV`: where a binary runs; production refuses settings meant for local runs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppEnv {
    /// `development` (the default): local runs and tests.
    #[default]
    Development,
    /// `production`.
    Production,
}

impl AppEnv {
    /// Reads `APP_ENV` (`development` when unset).
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        match env.get("APP_ENV").as_deref().map(str::trim) {
            None | Some("development") => Ok(Self::Development),
            Some("production") => Ok(Self::Production),
            Some(other) => Err(ConfigError::Invalid {
                var: "APP_ENV",
                reason: format!("must be development or production (got {other:?})"),
            }),
        }
    }

    /// Whether this is `production`.
    pub fn is_production(self) -> bool {
        self == Self::Production
    }
}

/// Shortest production secret, in bytes.
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

/// The files the repository ships that show example values: a secret equal to a word of one of
/// them is public.
const SHIPPED_FILES: [&str; 7] = [
    include_str!("../../.env.example"),
    include_str!("../../docker-compose.yml"),
    include_str!("../../README.md"),
    include_str!("../../docs/operations.md"),
    include_str!("../../docs/security.md"),
    include_str!("../../docs/unsubscribe.md"),
    include_str!("../../docs/development.md"),
];

/// Whether `secret` is a value the repository ships (a whole word of an example file: `=`, `:`,
/// `,`, quotes and spaces separate words, so `API_TOKENS=send:x` ships `x`).
pub fn is_shipped_value(secret: &str) -> bool {
    let secret = secret.trim();
    !secret.is_empty()
        && SHIPPED_FILES.iter().any(|file| {
            file.split(|c: char| {
                !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '.'))
            })
            .any(|word| word == secret)
        })
}

/// In production, refuses a secret shorter than [`MIN_PRODUCTION_SECRET_BYTES`] or equal to a
/// value shipped in the repository, naming `var` (never the value).
pub fn production_secret(
    var: &'static str,
    secret: &str,
    app_env: AppEnv,
) -> Result<(), ConfigError> {
    if !app_env.is_production() {
        return Ok(());
    }
    if secret.trim().len() < MIN_PRODUCTION_SECRET_BYTES {
        return Err(ConfigError::Invalid {
            var,
            reason: format!(
                "is shorter than {MIN_PRODUCTION_SECRET_BYTES} bytes; refused when APP_ENV=production"
            ),
        });
    }
    if is_shipped_value(secret) {
        return Err(ConfigError::Invalid {
            var,
            reason: "is an example value shipped in the repository (.env.example or the docs); \
                     refused when APP_ENV=production: generate one, e.g. openssl rand -hex 32"
                .into(),
        });
    }
    Ok(())
}

/// `EMAIL_FROM`: the sender address, validated. The one rule both binaries apply.
pub fn email_from(env: &impl Env) -> Result<String, ConfigError> {
    crate::address::validate(&required(env, "EMAIL_FROM")?)
        .map(crate::address::EmailAddress::into_string)
        .map_err(|e| ConfigError::Invalid {
            var: "EMAIL_FROM",
            reason: e.to_string(),
        })
}

/// Database connection settings shared by every binary.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `DATABASE_URL`: a `postgres://` URL; it may hold a password, hence the wrapper.
    pub url: Secret,
    /// `DB_MAX_CONNECTIONS` (default 10).
    pub max_connections: u32,
    /// `DB_MIN_CONNECTIONS` (default 2).
    pub min_connections: u32,
    /// `DB_ACQUIRE_TIMEOUT` in seconds (default 30).
    pub acquire_timeout: Duration,
    /// `DB_STATEMENT_TIMEOUT_SECS` (default 60; 0 turns it off): the server cancels a statement
    /// that runs longer. Migrations run without it.
    pub statement_timeout: Duration,
    /// `DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS` (default 60; 0 turns it off): the server ends a
    /// session that sits idle inside a transaction, releasing its locks.
    pub idle_in_transaction_timeout: Duration,
    /// `DB_TCP_KEEPALIVE_SECS` (default 30; 0 leaves the server's setting): the server probes an
    /// idle connection after this long, every third of it, and drops it after three misses, so a
    /// half-open connection does not hold locks for hours.
    pub tcp_keepalive: Duration,
}

impl DbConfig {
    /// Loads and validates the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    /// Loads and validates the settings from any variable source.
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        let url = Secret::new(required(env, "DATABASE_URL")?);
        let scheme_ok = ["postgres://", "postgresql://"]
            .iter()
            .any(|s| url.expose().starts_with(s));
        if !scheme_ok {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: "must start with postgres:// or postgresql://".into(),
            });
        }
        // Parse now so that a malformed URL fails at start-up, not at the first query.
        url.expose()
            .parse::<PgConnectOptions>()
            .map_err(|e| ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: format!("not a usable postgres:// URL ({})", redact_url_error(&e)),
            })?;
        let max_connections: u32 = parse_or(env, "DB_MAX_CONNECTIONS", 10)?;
        let min_connections: u32 = parse_or(env, "DB_MIN_CONNECTIONS", 2)?;
        let acquire_secs: u64 = parse_or(env, "DB_ACQUIRE_TIMEOUT", 30)?;
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                var: "DB_MAX_CONNECTIONS",
                reason: "must be at least 1".into(),
            });
        }
        if min_connections > max_connections {
            return Err(ConfigError::Invalid {
                var: "DB_MIN_CONNECTIONS",
                reason: format!(
                    "{min_connections} is more than DB_MAX_CONNECTIONS ({max_connections})"
                ),
            });
        }
        if acquire_secs == 0 {
            return Err(ConfigError::Invalid {
                var: "DB_ACQUIRE_TIMEOUT",
                reason: "must be at least 1 second".into(),
            });
        }
        Ok(Self {
            url,
            max_connections,
            min_connections,
            acquire_timeout: Duration::from_secs(acquire_secs),
            statement_timeout: Duration::from_secs(parse_or(env, "DB_STATEMENT_TIMEOUT_SECS", 60)?),
            idle_in_transaction_timeout: Duration::from_secs(parse_or(
                env,
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS",
                60,
            )?),
            tcp_keepalive: Duration::from_secs(parse_or(env, "DB_TCP_KEEPALIVE_SECS", 30)?),
        })
    }

    /// Connection options for the configured database.
    pub fn pg_connect_options(&self) -> PgConnectOptions {
        // Validated in `from_source`; a failure here would be a bug, so fall back loudly.
        let options: PgConnectOptions = self
            .url
            .expose()
            .parse()
            .unwrap_or_else(|_| PgConnectOptions::new());
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut settings = vec![
            ("statement_timeout", ms(self.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction_timeout),
            ),
        ];
        let keepalive = self.tcp_keepalive.as_secs();
        if keepalive > 0 {
            settings.push(("tcp_keepalives_idle", keepalive.to_string()));
            settings.push((
                "tcp_keepalives_interval",
                (keepalive / 3).max(1).to_string(),
            ));
            settings.push(("tcp_keepalives_count", "3".into()));
        }
        options.options(settings)
    }
}

/// sqlx echoes the URL in some parse errors; keep only the kind of failure.
fn redact_url_error(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::Configuration(_) => "malformed URL or unknown option",
        _ => "unreadable URL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgres://herald:pw@127.0.0.1:5433/herald";

    #[test]
    fn defaults_apply_when_only_the_url_is_set() {
        let config = DbConfig::from_source(&[("DATABASE_URL", URL)]).expect("valid");
        assert_eq!(config.max_connections, 10);
        assert_eq!(config.min_connections, 2);
        assert_eq!(config.acquire_timeout, Duration::from_secs(30));
        assert_eq!(config.pg_connect_options().get_port(), 5433);
    }

    #[test]
    fn sslmode_and_the_root_certificate_come_from_the_url() {
        use sqlx::postgres::PgSslMode;
        let url = "postgres://herald@db.example.com:5432/herald?sslmode=verify-full&sslrootcert=/etc/herald/db-ca.pem";
        let config = DbConfig::from_source(&[("DATABASE_URL", url)]).expect("valid");
        let options = config.pg_connect_options();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
        assert_eq!(options.get_host(), "db.example.com");
        // Herald's session settings are added, not put in place of the URL's.
        let plain = DbConfig::from_source(&[("DATABASE_URL", URL)]).expect("valid");
        assert!(
            matches!(plain.pg_connect_options().get_ssl_mode(), PgSslMode::Prefer),
            "sqlx's default when the URL says nothing"
        );
    }

    #[test]
    fn a_missing_url_names_the_variable() {
        let err = DbConfig::from_source(&[("DB_MAX_CONNECTIONS", "5")]).expect_err("missing");
        assert_eq!(err.to_string(), "DATABASE_URL is required but not set");
    }

    #[test]
    fn a_bad_number_names_the_variable_and_the_value() {
        let err = DbConfig::from_source(&[("DATABASE_URL", URL), ("DB_MAX_CONNECTIONS", "ten")])
            .expect_err("bad number");
        let text = err.to_string();
        assert!(text.starts_with("DB_MAX_CONNECTIONS is invalid"), "{text}");
        assert!(text.contains("\"ten\""), "{text}");
    }

    #[test]
    fn min_above_max_is_rejected() {
        let err = DbConfig::from_source(&[
            ("DATABASE_URL", URL),
            ("DB_MAX_CONNECTIONS", "3"),
            ("DB_MIN_CONNECTIONS", "4"),
        ])
        .expect_err("min > max");
        assert!(err.to_string().starts_with("DB_MIN_CONNECTIONS is invalid"));
    }

    #[test]
    fn a_zero_acquire_timeout_is_rejected() {
        let err = DbConfig::from_source(&[("DATABASE_URL", URL), ("DB_ACQUIRE_TIMEOUT", "0")])
            .expect_err("zero timeout");
        assert!(err.to_string().starts_with("DB_ACQUIRE_TIMEOUT is invalid"));
    }

    #[test]
    fn a_malformed_url_is_rejected_without_echoing_it() {
        let err = DbConfig::from_source(&[("DATABASE_URL", "mysql://u:secretpw@h/db")])
            .expect_err("wrong scheme");
        let text = err.to_string();
        assert!(text.starts_with("DATABASE_URL is invalid"), "{text}");
        assert!(!text.contains("secretpw"), "{text}");
    }

    #[test]
    fn production_refuses_shipped_and_short_secrets_and_names_the_variable() {
        let prod = AppEnv::Production;
        for shipped in [
            "change-me-to-a-long-random-string-of-32-or-more",
            "change-me-a-local-unsubscribe-secret-of-32-bytes-or-more",
            "an-application-server-token-of-32-chars",
            "an-operator-token-of-32-characters",
        ] {
            assert!(is_shipped_value(shipped), "{shipped}");
            let err = production_secret("API_TOKEN", shipped, prod).expect_err(shipped);
            assert!(err.to_string().starts_with("API_TOKEN is invalid"), "{err}");
            assert!(!err.to_string().contains(shipped), "never the value: {err}");
            assert!(production_secret("API_TOKEN", shipped, AppEnv::Development).is_ok());
        }
        let short = production_secret(
            "UNSUBSCRIBE_SECRETS",
            "0123456789abcdef0123456789abcde",
            prod,
        )
        .expect_err("31 bytes");
        assert!(
            short.to_string().starts_with("UNSUBSCRIBE_SECRETS"),
            "{short}"
        );
        assert!(
            production_secret(
                "API_TOKEN",
                "9f2c1e7a5b3d48c6a0e1f2d3c4b5a6978e1d2c3b4a5f6e7d",
                prod
            )
            .is_ok()
        );
        assert!(
            !is_shipped_value("change-me-to-a-long"),
            "a part of a word is not the word"
        );
    }
}
