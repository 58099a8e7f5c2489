//! The worker's configuration, from environment variables.
//!
//! Longer than 450 lines on purpose: one typed struct for every variable the worker reads, each
//! checked where it is read, with the tests of those checks beside them.

use std::time::Duration;

use herald_shared::DbConfig;
use herald_shared::config::{ConfigError, Env, ProcessEnv, parse_or};
use herald_shared::maintenance::{self, Settings, TaskSchedule};

/// Everything `herald-worker` reads at start-up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Database settings.
    pub db: DbConfig,
    /// `EMAIL_FROM`: the verified SES sender.
    pub email_from: String,
    /// `FRONTEND_URL`: base of verification and reset links.
    pub frontend_url: String,
    /// Marketing mail (`MARKETING_EMAIL_ENABLED`, default true): the unsubscribe links' secrets
    /// and base (`UNSUBSCRIBE_SECRETS`, `PUBLIC_URL`, `UNSUBSCRIBE_MAILTO`); `None` when disabled.
    pub marketing: Option<std::sync::Arc<herald_shared::unsubscribe::Marketing>>,
    /// `SES_CONFIGURATION_SET`, `SES_CONFIGURATION_SET_TRANSACTIONAL`,
    /// `SES_CONFIGURATION_SET_MARKETING` (optional): where SES publishes each send's events.
    pub ses_configuration_sets: crate::ses::ConfigurationSets,
    /// `SES_MAX_SEND_RATE` (emails/s, optional): overrides the account's quota.
    pub ses_max_send_rate: Option<f64>,
    /// `SES_DEFAULT_SEND_RATE` (default 1): used when the quota cannot be read (moto answers 404).
    pub ses_default_send_rate: f64,
    /// `SES_TIMEOUT_SECS` (default 15): one SES call's deadline.
    pub ses_timeout: Duration,
    /// `EMAIL_BACKOFF_BASE_MS` (default 5000): first retry delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// `EMAIL_BACKOFF_MAX_SECS` (default 3600): the longest retry delay.
    pub backoff_max: Duration,
    /// `EMAIL_PAUSE_SECS` (default 900): how long every worker stops sending after SES pauses the account.
    pub pause: Duration,
    /// `WORKER_CONCURRENCY` (default 16): emails in flight per process.
    pub concurrency: usize,
    /// `WORKER_BATCH_SIZE` (default 20): jobs fetched per round trip.
    pub batch_size: usize,
    /// `WORKER_HEARTBEAT_SECS` (default 5).
    pub heartbeat: Duration,
    /// `WORKER_MISSED_HEARTBEATS` (default 3): a worker silent this many beats is dead and its
    /// jobs go back to the queue.
    pub missed_heartbeats: usize,
    /// `WORKER_POLL_INTERVAL_MS` (default 1000): polling beside LISTEN/NOTIFY, for delayed jobs.
    pub poll_interval: Duration,
    /// `SHUTDOWN_TIMEOUT` seconds (default 30): how long in-flight jobs may take after a signal.
    pub shutdown_timeout: Duration,
    /// `WEBHOOK_BACKOFF_BASE_MS` (default 5000): a failed webhook delivery's first retry delay;
    /// doubles per attempt, with jitter, up to `WEBHOOK_BACKOFF_MAX_SECS` (default 21600).
    pub webhook_backoff_base: Duration,
    /// See [`WorkerConfig::webhook_backoff_base`].
    pub webhook_backoff_max: Duration,
    /// `WEBHOOK_TIMEOUT_SECS` (default 10): one webhook POST's deadline.
    pub webhook_timeout: Duration,
    /// `WEBHOOK_CONCURRENCY` (default 8): webhook deliveries in flight per process; 0 makes a
    /// process that delivers none and runs no relay (others must).
    pub webhook_concurrency: usize,
    /// `WEBHOOK_RELAY_INTERVAL_MS` (default 200): how often the relay looks for recorded events
    /// when it has none left (it works through a backlog without pausing).
    pub webhook_relay_interval: Duration,
    /// `SQS_FEEDBACK_QUEUE_URL` (optional): the queue SES feedback arrives on; unset, no consumer runs.
    pub sqs_feedback_queue_url: Option<String>,
    /// `FEEDBACK_CONCURRENCY` (default 2): concurrent long polls of the feedback queue.
    pub feedback_concurrency: usize,
    /// `SNS_ALLOWED_TOPIC_ARNS` (comma-separated, optional): only these topics' messages are applied.
    pub sns_allowed_topic_arns: Vec<String>,
    /// `SNS_VERIFY_SIGNATURES` (default true): check SNS signatures; false only for the local
    /// emulator, which signs nothing (refused when `APP_ENV=production`).
    pub sns_verify_signatures: bool,
    /// `SNS_SIGNING_CERT_URL_PATTERN` (a regular expression over the whole URL; default https on
    /// `sns.<region>.amazonaws.com[.cn]`, `SimpleNotificationService-*.pem`).
    pub sns_signing_cert_url_pattern: String,
    /// `SNS_CONFIRM_SUBSCRIPTIONS` (default false): visit the `SubscribeURL` of a verified
    /// `SubscriptionConfirmation`.
    pub sns_confirm_subscriptions: bool,
    /// `FEEDBACK_FORMATS` (comma list of `sns`, `raw`, `eventbridge`; default `sns`).
    pub feedback_formats: std::collections::HashSet<crate::feedback::parse::Format>,
    /// `FEEDBACK_REQUIRE_KNOWN_MESSAGE` (default true): apply bounces and complaints only to the
    /// recipients of Herald's own sends.
    pub feedback_require_known_message: bool,
    /// `APP_ENV` (default development).
    pub app_env: herald_shared::config::AppEnv,
    /// Which webhook URLs deliveries may call (`WEBHOOK_ALLOW_PRIVATE_URLS`; internal ones never
    /// by default), checked again at every connection.
    pub webhook_urls: herald_shared::outbound::UrlPolicy,
    /// `SOFT_BOUNCE_THRESHOLD` (default 3): soft bounces that make a bounce suppression…
    pub soft_bounce_threshold: i64,
    /// `SOFT_BOUNCE_WINDOW_DAYS` (default 30): …within this many days.
    pub soft_bounce_window_days: i64,
    /// `EXPIRE_TOKENS_CRON`, `REFRESH_SEARCH_CRON`, `PRUNE_CRON` (UTC).
    pub schedules: Vec<TaskSchedule>,
    /// Batch sizes and retention of the maintenance jobs.
    pub maintenance: Settings,
    /// `METRICS_ADDR` (default 127.0.0.1:9100; port 0 picks one): where `/metrics` is served.
    pub metrics_addr: std::net::SocketAddr,
    /// The compliance guard's thresholds and windows.
    pub compliance: herald_shared::compliance::Settings,
    /// `COMPLIANCE_PAUSE_RECHECK_SECS` (default 60): how often a job held by a compliance pause looks again.
    pub compliance_recheck: Duration,
}

/// An optional configuration set name, checked as SES checks it.
fn configuration_set(env: &impl Env, var: &'static str) -> Result<Option<String>, ConfigError> {
    match env.get(var).map(|v| v.trim().to_owned()) {
        Some(name) if !crate::ses::ConfigurationSets::valid_name(&name) => {
            Err(ConfigError::Invalid {
                var,
                reason: "a configuration set name is 1 to 64 letters, digits, '_' or '-'".into(),
            })
        }
        other => Ok(other),
    }
}

fn positive<T: PartialOrd + Default + Copy>(var: &'static str, v: T) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            var,
            reason: "must be greater than 0".into(),
        })
    }
}

impl WorkerConfig {
    /// Loads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    /// Loads and validates the configuration from any variable source.
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        let email_from = herald_shared::config::email_from(env)?;
        let frontend_url = herald_shared::config::frontend_url(env)?;
        let ses_max_send_rate = match env.get("SES_MAX_SEND_RATE") {
            None => None,
            Some(_) => Some(positive(
                "SES_MAX_SEND_RATE",
                parse_or(env, "SES_MAX_SEND_RATE", 0.0_f64)?,
            )?),
        };
        let ms = |var, default| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(positive(
                var,
                parse_or(env, var, default)?,
            )?))
        };
        let secs = |var, default| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(positive(
                var,
                parse_or(env, var, default)?,
            )?))
        };
        let app_env = herald_shared::config::AppEnv::from_source(env)?;
        let sns_verify_signatures = parse_or(env, "SNS_VERIFY_SIGNATURES", true)?;
        if !sns_verify_signatures && app_env.is_production() {
            return Err(ConfigError::Invalid {
                var: "SNS_VERIFY_SIGNATURES",
                reason: "false is for the local emulator only; refused when APP_ENV=production"
                    .into(),
            });
        }
        let sns_signing_cert_url_pattern = env
            .get("SNS_SIGNING_CERT_URL_PATTERN")
            .unwrap_or_else(|| crate::feedback::sns::DEFAULT_CERT_URL_PATTERN.to_owned());
        if let Err(e) = regex_lite::Regex::new(&sns_signing_cert_url_pattern) {
            return Err(ConfigError::Invalid {
                var: "SNS_SIGNING_CERT_URL_PATTERN",
                reason: format!("not a valid regular expression: {e}"),
            });
        }
        if app_env.is_production() && !sns_signing_cert_url_pattern.starts_with("^https://") {
            return Err(ConfigError::Invalid {
                var: "SNS_SIGNING_CERT_URL_PATTERN",
                reason: "must start with ^https:// when APP_ENV=production".into(),
            });
        }
        let feedback_formats = feedback_formats(env)?;
        let topics_listed = env
            .get("SNS_ALLOWED_TOPIC_ARNS")
            .is_some_and(|v| v.split(',').any(|t| !t.trim().is_empty()));
        if app_env.is_production()
            && env.get("SQS_FEEDBACK_QUEUE_URL").is_some()
            && feedback_formats.contains(&crate::feedback::parse::Format::Sns)
            && !topics_listed
        {
            // Any AWS account can have SNS sign messages for a topic of its own.
            return Err(ConfigError::Invalid {
                var: "SNS_ALLOWED_TOPIC_ARNS",
                reason: "required when APP_ENV=production and SQS_FEEDBACK_QUEUE_URL is set: \
                         a signature only proves that some SNS topic sent the message"
                    .into(),
            });
        }
        Ok(Self {
            webhook_urls: herald_shared::outbound::UrlPolicy::from_source(env, app_env)?,
            marketing: herald_shared::unsubscribe::Marketing::from_source(env, app_env)?
                .map(std::sync::Arc::new),
            app_env,
            sns_verify_signatures,
            sns_signing_cert_url_pattern,
            sns_confirm_subscriptions: parse_or(env, "SNS_CONFIRM_SUBSCRIPTIONS", false)?,
            feedback_formats,
            feedback_require_known_message: parse_or(env, "FEEDBACK_REQUIRE_KNOWN_MESSAGE", true)?,
            db: DbConfig::from_source(env)?,
            email_from,
            frontend_url,
            ses_configuration_sets: crate::ses::ConfigurationSets {
                default: configuration_set(env, "SES_CONFIGURATION_SET")?,
                transactional: configuration_set(env, "SES_CONFIGURATION_SET_TRANSACTIONAL")?,
                marketing: configuration_set(env, "SES_CONFIGURATION_SET_MARKETING")?,
            },
            ses_max_send_rate,
            ses_default_send_rate: positive(
                "SES_DEFAULT_SEND_RATE",
                parse_or(env, "SES_DEFAULT_SEND_RATE", 1.0_f64)?,
            )?,
            ses_timeout: secs("SES_TIMEOUT_SECS", 15)?,
            backoff_base: ms("EMAIL_BACKOFF_BASE_MS", 5000)?,
            backoff_max: secs("EMAIL_BACKOFF_MAX_SECS", 3600)?,
            pause: secs("EMAIL_PAUSE_SECS", 900)?,
            concurrency: positive(
                "WORKER_CONCURRENCY",
                parse_or(env, "WORKER_CONCURRENCY", 16_usize)?,
            )?,
            batch_size: positive(
                "WORKER_BATCH_SIZE",
                parse_or(env, "WORKER_BATCH_SIZE", 20_usize)?,
            )?,
            heartbeat: secs("WORKER_HEARTBEAT_SECS", 5)?,
            missed_heartbeats: positive(
                "WORKER_MISSED_HEARTBEATS",
                parse_or(env, "WORKER_MISSED_HEARTBEATS", 3_usize)?,
            )?,
            poll_interval: ms("WORKER_POLL_INTERVAL_MS", 1000)?,
            shutdown_timeout: secs("SHUTDOWN_TIMEOUT", 30)?,
            sqs_feedback_queue_url: env.get("SQS_FEEDBACK_QUEUE_URL"),
            feedback_concurrency: positive(
                "FEEDBACK_CONCURRENCY",
                parse_or(env, "FEEDBACK_CONCURRENCY", 2_usize)?,
            )?,
            sns_allowed_topic_arns: env
                .get("SNS_ALLOWED_TOPIC_ARNS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            soft_bounce_threshold: positive(
                "SOFT_BOUNCE_THRESHOLD",
                parse_or(env, "SOFT_BOUNCE_THRESHOLD", 3_i64)?,
            )?,
            soft_bounce_window_days: positive(
                "SOFT_BOUNCE_WINDOW_DAYS",
                parse_or(env, "SOFT_BOUNCE_WINDOW_DAYS", 30_i64)?,
            )?,
            schedules: maintenance::schedules_from(env)?,
            maintenance: Settings::from_source(env)?,
            metrics_addr: parse_or(
                env,
                "METRICS_ADDR",
                std::net::SocketAddr::from(([127, 0, 0, 1], 9100)),
            )?,
            compliance: herald_shared::compliance::Settings::from_source(env)?,
            compliance_recheck: secs("COMPLIANCE_PAUSE_RECHECK_SECS", 60)?,
            webhook_backoff_base: ms("WEBHOOK_BACKOFF_BASE_MS", 5000)?,
            webhook_backoff_max: secs("WEBHOOK_BACKOFF_MAX_SECS", 21_600)?,
            webhook_timeout: secs("WEBHOOK_TIMEOUT_SECS", 10)?,
            webhook_concurrency: parse_or(env, "WEBHOOK_CONCURRENCY", 8_usize)?,
            webhook_relay_interval: ms("WEBHOOK_RELAY_INTERVAL_MS", 200)?,
        })
    }
}

/// `FEEDBACK_FORMATS`: a comma list of `sns`, `raw`, `eventbridge`; default `sns`.
fn feedback_formats(
    env: &impl Env,
) -> Result<std::collections::HashSet<crate::feedback::parse::Format>, ConfigError> {
    use crate::feedback::parse::Format;
    let Some(raw) = env.get("FEEDBACK_FORMATS") else {
        return Ok([Format::Sns].into_iter().collect());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            Format::ALL
                .into_iter()
                .find(|known| known.as_str() == f.to_ascii_lowercase())
                .ok_or_else(|| ConfigError::Invalid {
                    var: "FEEDBACK_FORMATS",
                    reason: format!("unknown format {f:?} (sns, raw, eventbridge)"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: [(&str, &str); 4] = [
        ("EMAIL_FROM", "noreply@example.com"),
        ("FRONTEND_URL", "https://app.example.com"),
        ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
        ("UNSUBSCRIBE_SECRETS", "0123456789abcdef0123456789abcdef"),
    ];

    #[test]
    fn marketing_mail_needs_the_unsubscribe_secrets_unless_disabled() {
        let without: Vec<_> = BASE[..3].to_vec();
        let without: [(&str, &str); 3] = without.try_into().expect("3");
        let err = WorkerConfig::from_source(&without).expect_err("no secrets");
        assert!(err.to_string().starts_with("UNSUBSCRIBE_SECRETS"), "{err}");
        let off = [
            without[0],
            without[1],
            without[2],
            ("MARKETING_EMAIL_ENABLED", "false"),
        ];
        assert!(
            WorkerConfig::from_source(&off)
                .expect("valid")
                .marketing
                .is_none()
        );
        let on = WorkerConfig::from_source(&BASE).expect("valid");
        assert!(on.marketing.is_some());
    }

    #[test]
    fn defaults_are_sane() {
        let c = WorkerConfig::from_source(&BASE).expect("valid");
        assert_eq!(c.ses_max_send_rate, None);
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        assert_eq!(c.missed_heartbeats, 3);
        assert_eq!(c.backoff_base, Duration::from_millis(5000));
    }

    #[test]
    fn configuration_sets_apply_per_category_and_bad_names_are_refused() {
        let c = WorkerConfig::from_source(&BASE).expect("valid");
        assert_eq!(
            c.ses_configuration_sets,
            crate::ses::ConfigurationSets::default()
        );
        let mut env: Vec<(&str, &str)> = BASE.to_vec();
        env.push(("SES_CONFIGURATION_SET", "herald"));
        env.push(("SES_CONFIGURATION_SET_MARKETING", "herald-marketing"));
        let env: [(&str, &str); 6] = env.try_into().expect("6");
        let sets = WorkerConfig::from_source(&env)
            .expect("valid")
            .ses_configuration_sets;
        use herald_shared::email::Category;
        assert_eq!(sets.for_category(Category::Transactional), Some("herald"));
        assert_eq!(
            sets.for_category(Category::Marketing),
            Some("herald-marketing")
        );
        for bad in ["has space", "x/y", &"a".repeat(65)] {
            let mut env: Vec<(&str, &str)> = BASE.to_vec();
            env.push(("SES_CONFIGURATION_SET_TRANSACTIONAL", bad));
            let env: [(&str, &str); 5] = env.try_into().expect("5");
            let err = WorkerConfig::from_source(&env).expect_err("bad name");
            assert!(
                err.to_string()
                    .starts_with("SES_CONFIGURATION_SET_TRANSACTIONAL"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let mut env: Vec<(&str, &str)> = BASE.to_vec();
        env.push(("WORKER_CONCURRENCY", "0"));
        let env: [(&str, &str); 5] = env.try_into().expect("5");
        let err = WorkerConfig::from_source(&env).expect_err("zero");
        assert!(err.to_string().starts_with("WORKER_CONCURRENCY"), "{err}");
        let err = WorkerConfig::from_source(&[("EMAIL_FROM", "x")]).expect_err("from");
        assert!(err.to_string().starts_with("EMAIL_FROM"), "{err}");
    }

    #[test]
    fn webhook_delivery_can_be_turned_off_but_the_relay_cannot_spin() {
        let c = WorkerConfig::from_source(&BASE).expect("valid");
        assert_eq!(c.webhook_concurrency, 8);
        assert_eq!(c.webhook_relay_interval, Duration::from_millis(200));
        let off = WorkerConfig::from_source(&with(&[("WEBHOOK_CONCURRENCY", "0")])).expect("0");
        assert_eq!(off.webhook_concurrency, 0);
        let err = WorkerConfig::from_source(&with(&[("WEBHOOK_RELAY_INTERVAL_MS", "0")]))
            .expect_err("zero interval");
        assert!(
            err.to_string().starts_with("WEBHOOK_RELAY_INTERVAL_MS"),
            "{err}"
        );
        let err = WorkerConfig::from_source(&with(&[("WEBHOOK_CONCURRENCY", "-1")]))
            .expect_err("negative");
        assert!(err.to_string().starts_with("WEBHOOK_CONCURRENCY"), "{err}");
    }

    fn with(extra: &[(&'static str, &'static str)]) -> std::collections::HashMap<String, String> {
        BASE.iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn feedback_is_trusted_only_when_signed_by_default() {
        use crate::feedback::parse::Format;
        let c = WorkerConfig::from_source(&BASE).expect("valid");
        assert!(c.sns_verify_signatures);
        assert!(c.feedback_require_known_message);
        assert!(!c.sns_confirm_subscriptions);
        assert_eq!(c.feedback_formats, [Format::Sns].into_iter().collect());
        let c = WorkerConfig::from_source(&with(&[("FEEDBACK_FORMATS", "sns, RAW,eventbridge")]))
            .expect("valid");
        assert_eq!(c.feedback_formats.len(), 3);
        for (var, value) in [
            ("FEEDBACK_FORMATS", "sns,smtp"),
            ("SNS_VERIFY_SIGNATURES", "maybe"),
            ("SNS_SIGNING_CERT_URL_PATTERN", "^https://(unclosed"),
            ("FEEDBACK_REQUIRE_KNOWN_MESSAGE", "2"),
            ("APP_ENV", "staging"),
        ] {
            let err = WorkerConfig::from_source(&with(&[(var, value)])).expect_err(var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn production_refuses_unsigned_feedback_and_plain_http_certificates() {
        let off = [
            ("APP_ENV", "production"),
            ("SNS_VERIFY_SIGNATURES", "false"),
        ];
        let err = WorkerConfig::from_source(&with(&off)).expect_err("refused");
        assert!(
            err.to_string().starts_with("SNS_VERIFY_SIGNATURES"),
            "{err}"
        );
        assert!(WorkerConfig::from_source(&with(&off[1..])).is_ok());
        let http = [
            ("APP_ENV", "production"),
            (
                "SNS_SIGNING_CERT_URL_PATTERN",
                "^http://127\\.0\\.0\\.1:\\d+/.*$",
            ),
        ];
        let err = WorkerConfig::from_source(&with(&http)).expect_err("refused");
        assert!(
            err.to_string().starts_with("SNS_SIGNING_CERT_URL_PATTERN"),
            "{err}"
        );
    }

    #[test]
    fn production_requires_allowed_topics_and_refuses_the_example_secret() {
        let queue = (
            "SQS_FEEDBACK_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/herald",
        );
        let prod = [("APP_ENV", "production"), queue];
        let err = WorkerConfig::from_source(&with(&prod)).expect_err("no topics");
        assert!(
            err.to_string().starts_with("SNS_ALLOWED_TOPIC_ARNS"),
            "{err}"
        );
        let listed = [
            ("APP_ENV", "production"),
            queue,
            ("SNS_ALLOWED_TOPIC_ARNS", "arn:aws:sns:us-east-1:1:herald"),
            ("PUBLIC_URL", "https://mail.example.com"),
        ];
        assert!(WorkerConfig::from_source(&with(&listed)).is_ok());
        assert!(
            WorkerConfig::from_source(&with(&[queue])).is_ok(),
            "development leaves it open"
        );
        let shipped = [
            ("APP_ENV", "production"),
            (
                "UNSUBSCRIBE_SECRETS",
                "change-me-a-local-unsubscribe-secret-of-32-bytes-or-more",
            ),
        ];
        let err = WorkerConfig::from_source(&with(&shipped)).expect_err("shipped secret");
        assert!(err.to_string().starts_with("UNSUBSCRIBE_SECRETS"), "{err}");
    }
}
