//! Prometheus metrics: counters and histograms the processes update, and gauges read from the
//! database at each scrape (so every process reports the same queue and suppression figures).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::email::EMAIL_QUEUE;
use crate::jobs::JobStatus;
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
    queue_depth: Family<QueueState, Gauge>,
    oldest_waiting: Family<QueueLabel, Gauge<f64, AtomicU64>>,
    suppressions: Family<TypeLabel, Gauge>,
    schedule_last_success: Family<ScheduleLabel, Gauge<f64, AtomicU64>>,
    bounce_rate: Family<WindowCategory, Gauge<f64, AtomicU64>>,
    complaint_rate: Family<WindowCategory, Gauge<f64, AtomicU64>>,
    rate_sends: Family<WindowCategory, Gauge>,
    paused: Family<CategoryLabel, Gauge>,
    compliance: crate::compliance::Settings,
}

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
            queue_depth: Family::default(),
            oldest_waiting: Family::default(),
            suppressions: Family::default(),
            schedule_last_success: Family::default(),
            bounce_rate: Family::default(),
            complaint_rate: Family::default(),
            rate_sends: Family::default(),
            paused: Family::default(),
            compliance: crate::compliance::Settings::default(),
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
        // Known label sets start at zero so that every family is visible from the first scrape.
        for outcome in ["sent", "suppressed", "failed"] {
            let _ = m.emails.get_or_create(&Outcome {
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
        self.refresh(pool).await?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        Ok(out)
    }

    async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let depth = sqlx::query!(
            r#"SELECT job_type AS "queue!", status AS "status!", (attempts < max_attempts) AS "retrying!", count(*) AS "n!"
               FROM apalis.jobs GROUP BY 1, 2, 3"#
        )
        .fetch_all(pool)
        .await?;
        self.queue_depth.clear();
        for queue in [EMAIL_QUEUE, MAINTENANCE_QUEUE] {
            for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
                let _ = self.queue_depth.get_or_create(&QueueState {
                    queue: queue.into(),
                    state: state.into(),
                });
            }
        }
        for row in depth {
            let state = JobStatus::from_apalis(&row.status, if row.retrying { 0 } else { 1 }, 1);
            let label = serde_json::to_value(state)
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

        let oldest = sqlx::query!(
            r#"SELECT job_type AS "queue!", EXTRACT(EPOCH FROM now() - min(run_at))::float8 AS "age!"
               FROM apalis.jobs
               WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)) AND run_at <= now()
               GROUP BY 1"#
        )
        .fetch_all(pool)
        .await?;
        self.oldest_waiting.clear();
        for queue in [EMAIL_QUEUE, MAINTENANCE_QUEUE] {
            self.oldest_waiting
                .get_or_create(&QueueLabel {
                    queue: queue.into(),
                })
                .set(0.0);
        }
        for row in oldest {
            self.oldest_waiting
                .get_or_create(&QueueLabel { queue: row.queue })
                .set(row.age);
        }

        let suppressed = sqlx::query!(
            r#"SELECT suppression_type AS "kind!", count(*) AS "n!" FROM email_suppressions GROUP BY 1"#
        )
        .fetch_all(pool)
        .await?;
        for kind in ["bounce", "complaint", "unsubscribe", "manual"] {
            let n = suppressed
                .iter()
                .find(|r| r.kind == kind)
                .map_or(0, |r| r.n);
            self.suppressions
                .get_or_create(&TypeLabel {
                    r#type: kind.into(),
                })
                .set(n);
        }

        let last = sqlx::query!(
            r#"SELECT split_part(idempotency_key, '@', 1) AS "schedule!",
                      EXTRACT(EPOCH FROM max(done_at))::float8 AS "at!"
               FROM apalis.jobs WHERE job_type = $1 AND status = 'Done' AND done_at IS NOT NULL
               GROUP BY 1"#,
            MAINTENANCE_QUEUE
        )
        .fetch_all(pool)
        .await?;
        for task in Task::ALL {
            let at = last
                .iter()
                .find(|r| r.schedule == task.name())
                .map_or(0.0, |r| r.at);
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
                    category: pause.category,
                })
                .set(i64::from(pause.paused));
        }
        Ok(())
    }
}
