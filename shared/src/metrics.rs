//! Prometheus metrics: counters and histograms the processes update, and gauges read from the
//! database at each scrape (so every process reports the same queue and suppression figures).
//!
//! One file of about 520 lines on purpose: one registry, whose metric names and labels must be
//! unique and documented together (docs/operations.md lists them from here).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::maintenance::{MAINTENANCE_QUEUE, Task};

/// `queue`, `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueState {
    /// Queue name.
    pub queue: String,
    /// Herald job state.
    pub state: String,
}

/// `queue`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueOutcome {
    /// Queue name.
    pub queue: String,
    /// `succeeded` or `failed` (a failed run may be retried).
    pub outcome: String,
}

/// One label: `queue`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// Queue name.
    pub queue: String,
}

/// One label: `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `sent`, `suppressed` or `failed`.
    pub outcome: String,
}

/// One label: `type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// Event or suppression type.
    pub r#type: String,
}

/// One label: `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why it was refused.
    pub reason: String,
}

/// `window`, `category`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowCategory {
    /// `24h`, `7d`, …
    pub window: String,
    /// `all`, `transactional` or `marketing`.
    pub category: String,
}

/// One label: `category`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// `transactional` or `marketing`.
    pub category: String,
}

/// One label: `schedule`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabel {
    /// Schedule name.
    pub schedule: String,
}

/// An exposition format a scraper can ask for with its `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (what `promtool check metrics` and older scrapers read).
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it (as Prometheus itself does), else text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|p| p.replace(' ', "") == "q=0");
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics output as Prometheus text 0.0.4: a counter's HELP and
/// TYPE name its `_total` samples (OpenMetrics names the family without the suffix), and the
/// OpenMetrics-only lines (`# UNIT`, `# EOF`, `_created` samples) go.
fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(prefix);
            out.push_str(name);
            if counters.contains(name) {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(tail);
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let is_created = name
                .strip_suffix("_created")
                .is_some_and(|family| counters.contains(family));
            if is_created {
                continue;
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

type HistogramFamily = Family<QueueOutcome, Histogram, fn() -> Histogram>;

fn job_histogram() -> Histogram {
    // 5 ms to about 80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric Herald exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Run time of jobs, by queue and outcome.
    pub job_duration: HistogramFamily,
    /// Emails by final outcome.
    pub emails: Family<Outcome, Counter>,
    /// SES throttling answers.
    pub ses_throttles: Counter,
    /// Sends that waited for the rate limiter.
    pub rate_limiter_waits: Counter,
    /// Total seconds spent waiting for the rate limiter.
    pub rate_limiter_wait_seconds: Counter<f64, AtomicU64>,
    /// Feedback events applied, by type.
    pub feedback_events: Family<TypeLabel, Counter>,
    /// Feedback messages that could not be parsed.
    pub poison_messages: Counter,
    /// Feedback messages refused by the trust checks (signature, format, topic), by reason.
    pub feedback_rejected: Family<ReasonLabel, Counter>,
    queue_depth: Family<QueueState, Gauge>,
    oldest_waiting: Family<QueueLabel, Gauge<f64, AtomicU64>>,
    suppressions: Family<TypeLabel, Gauge>,
    schedule_last_success: Family<ScheduleLabel, Gauge<f64, AtomicU64>>,
    bounce_rate: Family<WindowCategory, Gauge<f64, AtomicU64>>,
    complaint_rate: Family<WindowCategory, Gauge<f64, AtomicU64>>,
    rate_sends: Family<WindowCategory, Gauge>,
    paused: Family<CategoryLabel, Gauge>,
    /// Webhook delivery attempts, by outcome (delivered, retried, failed).
    pub webhook_deliveries: Family<Outcome, Counter>,
    webhook_endpoints_disabled: Gauge,
    compliance: crate::compliance::Settings,
    /// When the database-backed gauges were last read; the lock keeps one refresh in flight.
    refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// How long database-backed gauges are reused: scrapes in between cost no query, so scraping
/// (however often, by however many scrapers) cannot exhaust the pool.
pub const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Self {
            job_duration: Family::new_with_constructor(job_histogram as fn() -> Histogram),
            emails: Family::default(),
            ses_throttles: Counter::default(),
            rate_limiter_waits: Counter::default(),
            rate_limiter_wait_seconds: Counter::default(),
            feedback_events: Family::default(),
            poison_messages: Counter::default(),
            feedback_rejected: Family::default(),
            queue_depth: Family::default(),
            oldest_waiting: Family::default(),
            suppressions: Family::default(),
            schedule_last_success: Family::default(),
            bounce_rate: Family::default(),
            complaint_rate: Family::default(),
            rate_sends: Family::default(),
            paused: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_endpoints_disabled: Gauge::default(),
            compliance: crate::compliance::Settings::default(),
            refreshed: tokio::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register(
            "job_duration_seconds",
            "Job run time by queue and outcome",
            m.job_duration.clone(),
        );
        registry.register(
            "emails",
            "Emails by outcome (sent, suppressed, failed)",
            m.emails.clone(),
        );
        registry.register(
            "ses_throttles",
            "SES throttling answers",
            m.ses_throttles.clone(),
        );
        registry.register(
            "rate_limiter_waits",
            "Sends that waited for the shared rate limiter",
            m.rate_limiter_waits.clone(),
        );
        registry.register(
            "rate_limiter_wait_seconds",
            "Seconds spent waiting for the shared rate limiter",
            m.rate_limiter_wait_seconds.clone(),
        );
        registry.register(
            "feedback_events",
            "SES feedback events applied, by type",
            m.feedback_events.clone(),
        );
        registry.register(
            "feedback_poison_messages",
            "Feedback messages that could not be parsed",
            m.poison_messages.clone(),
        );
        registry.register(
            "feedback_rejected",
            "Feedback messages refused by the trust checks (not applied, left for the dead-letter queue), by reason",
            m.feedback_rejected.clone(),
        );
        registry.register(
            "queue_jobs",
            "Jobs by queue and state",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_oldest_waiting_seconds",
            "Age of the oldest job that is due and waiting, by queue",
            m.oldest_waiting.clone(),
        );
        registry.register(
            "suppressions",
            "Suppressed addresses by type",
            m.suppressions.clone(),
        );
        registry.register(
            "schedule_last_success_timestamp_seconds",
            "Unix time the schedule's job last succeeded",
            m.schedule_last_success.clone(),
        );
        registry.register(
            "compliance_bounce_rate",
            "Permanent bounces over sends, by window and category",
            m.bounce_rate.clone(),
        );
        registry.register(
            "compliance_complaint_rate",
            "Complaints over sends, by window and category",
            m.complaint_rate.clone(),
        );
        registry.register(
            "compliance_sends",
            "Sends the compliance rates are computed over",
            m.rate_sends.clone(),
        );
        registry.register(
            "compliance_paused",
            "1 while the compliance guard pauses the category",
            m.paused.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retried, failed)",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_endpoints_disabled",
            "Webhook endpoints the worker disabled after a day in which every delivery failed",
            m.webhook_endpoints_disabled.clone(),
        );
        // Known label sets start at zero so that every family is visible from the first scrape.
        for outcome in ["sent", "suppressed", "failed"] {
            let _ = m.emails.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        for outcome in ["delivered", "retried", "failed"] {
            let _ = m.webhook_deliveries.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Metrics whose compliance rates use these windows and minimum sample.
    pub fn with_compliance(compliance: crate::compliance::Settings) -> Self {
        Self {
            compliance,
            ..Self::default()
        }
    }

    /// Reads the database-backed gauges, then renders everything in the Prometheus text format.
    pub async fn render(&self, pool: &PgPool) -> Result<String, sqlx::Error> {
        self.render_as(pool, Format::Prometheus).await
    }

    /// Reads the database-backed gauges, then renders everything in `format`.
    pub async fn render_as(&self, pool: &PgPool, format: Format) -> Result<String, sqlx::Error> {
        {
            // Scrapers that arrive during a refresh wait for it and reuse its figures.
            let mut last = self.refreshed.lock().await;
            if !last.is_some_and(|t| t.elapsed() < GAUGE_REFRESH) {
                self.refresh(pool).await?;
                *last = Some(std::time::Instant::now());
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        Ok(match format {
            Format::OpenMetrics => out,
            Format::Prometheus => openmetrics_to_prometheus(&out),
        })
    }

    async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let depth = crate::jobs::count_by_state(pool)
            .await
            .map_err(crate::jobs::JobError::into_sqlx)?;
        self.queue_depth.clear();
        for queue in crate::jobs::Queue::ALL.map(crate::jobs::Queue::name) {
            for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
                let _ = self.queue_depth.get_or_create(&QueueState {
                    queue: queue.into(),
                    state: state.into(),
                });
            }
        }
        for row in depth {
            let label = serde_json::to_value(row.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            self.queue_depth
                .get_or_create(&QueueState {
                    queue: row.queue,
                    state: label,
                })
                .inc_by(row.n);
        }

        let oldest = crate::jobs::oldest_waiting(pool)
            .await
            .map_err(crate::jobs::JobError::into_sqlx)?;
        self.oldest_waiting.clear();
        for queue in crate::jobs::Queue::ALL.map(crate::jobs::Queue::name) {
            self.oldest_waiting
                .get_or_create(&QueueLabel {
                    queue: queue.into(),
                })
                .set(0.0);
        }
        for (queue, age) in oldest {
            self.oldest_waiting
                .get_or_create(&QueueLabel { queue })
                .set(age);
        }

        let suppressed = crate::suppressions::count_by_type(pool).await?;
        for kind in crate::suppressions::SuppressionType::ALL {
            let n = suppressed
                .iter()
                .find(|(k, _)| *k == kind.as_str())
                .map_or(0, |(_, n)| *n);
            self.suppressions
                .get_or_create(&TypeLabel {
                    r#type: kind.as_str().into(),
                })
                .set(n);
        }

        let last = crate::jobs::last_success_by_key_prefix(pool, MAINTENANCE_QUEUE)
            .await
            .map_err(crate::jobs::JobError::into_sqlx)?;
        for task in Task::ALL {
            let at = last
                .iter()
                .find(|(schedule, _)| schedule == task.name())
                .map_or(0.0, |(_, at)| *at);
            self.schedule_last_success
                .get_or_create(&ScheduleLabel {
                    schedule: task.name().into(),
                })
                .set(at);
        }

        let mut conn = pool.acquire().await?;
        for rate in crate::compliance::rates(&mut conn, &self.compliance).await? {
            let label = WindowCategory {
                window: rate.window,
                category: rate.category,
            };
            self.bounce_rate.get_or_create(&label).set(rate.bounce_rate);
            self.complaint_rate
                .get_or_create(&label)
                .set(rate.complaint_rate);
            self.rate_sends.get_or_create(&label).set(rate.sends);
        }
        for pause in crate::compliance::pauses(&mut conn).await? {
            self.paused
                .get_or_create(&CategoryLabel {
                    category: pause.category.as_str().into(),
                })
                .set(i64::from(pause.paused));
        }
        self.webhook_endpoints_disabled
            .set(crate::webhooks::auto_disabled(&mut conn).await?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_asked_for_by_media_type_and_refused_by_q_zero() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        let prometheus_scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::negotiate(Some(prometheus_scraper)),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Prometheus
        );
    }

    #[test]
    fn counters_are_named_by_their_total_samples_in_prometheus_text() {
        let om = "# HELP herald_emails Emails.\n# TYPE herald_emails counter\nherald_emails_total{outcome=\"sent\"} 3\nherald_emails_created 1.0\n# HELP herald_queue_jobs Jobs.\n# TYPE herald_queue_jobs gauge\n# UNIT herald_queue_jobs jobs\nherald_queue_jobs 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP herald_emails_total Emails.\n# TYPE herald_emails_total counter\nherald_emails_total{outcome=\"sent\"} 3\n# HELP herald_queue_jobs Jobs.\n# TYPE herald_queue_jobs gauge\nherald_queue_jobs 2\n"
        );
    }

    #[test]
    fn every_family_keeps_its_help_in_both_formats() {
        let metrics = Metrics::default();
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &metrics.registry).expect("encode");
        assert!(om.ends_with("# EOF\n"));
        let text = openmetrics_to_prometheus(&om);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} has no help text in:\n{text}"
            );
        }
    }
}
