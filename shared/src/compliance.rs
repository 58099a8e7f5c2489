//! The compliance guard: rolling bounce and complaint rates from the send ledger, and the pause of
//! marketing (then transactional) sending that every worker honours, before AWS pauses the account.
//! The only code that writes `compliance_pauses`; its trigger `webhook_compliance_events` records
//! `compliance.paused` and `compliance.resumed` webhook events ([`crate::webhooks::outbox`]). The
//! rates are the ledger's ([`crate::email::ledger::sent_cohorts`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::config::{ConfigError, Env, parse_or};
use crate::email::Category;

/// Thresholds and windows.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `COMPLIANCE_BOUNCE_THRESHOLD` (0.04): pauses marketing.
    pub bounce_threshold: f64,
    /// `COMPLIANCE_COMPLAINT_THRESHOLD` (0.0008): pauses marketing.
    pub complaint_threshold: f64,
    /// `COMPLIANCE_BOUNCE_HARD_THRESHOLD` (0.045): pauses transactional too.
    pub bounce_hard_threshold: f64,
    /// `COMPLIANCE_COMPLAINT_HARD_THRESHOLD` (0.0009): pauses transactional too.
    pub complaint_hard_threshold: f64,
    /// `COMPLIANCE_MIN_SENDS` (200): a rate over fewer sends does not count.
    pub min_sends: i64,
    /// `COMPLIANCE_SHORT_WINDOW_HOURS` (24).
    pub short_window_hours: i64,
    /// `COMPLIANCE_LONG_WINDOW_DAYS` (7).
    pub long_window_days: i64,
    /// `COMPLIANCE_AUTO_RESUME` (false): resume by itself once every counted rate is back under.
    pub auto_resume: bool,
    /// `COMPLIANCE_RESUME_GRACE_MINUTES` (60): after a resume by API call, no automatic re-pause
    /// for this long (the rates need time to come down).
    pub resume_grace_minutes: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bounce_threshold: 0.04,
            complaint_threshold: 0.0008,
            bounce_hard_threshold: 0.045,
            complaint_hard_threshold: 0.0009,
            min_sends: 200,
            short_window_hours: 24,
            long_window_days: 7,
            auto_resume: false,
            resume_grace_minutes: 60,
        }
    }
}

impl Settings {
    /// Reads the settings; a hard threshold below its soft one is refused.
    pub fn from_source(env: &impl Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let s = Self {
            bounce_threshold: parse_or(env, "COMPLIANCE_BOUNCE_THRESHOLD", d.bounce_threshold)?,
            complaint_threshold: parse_or(
                env,
                "COMPLIANCE_COMPLAINT_THRESHOLD",
                d.complaint_threshold,
            )?,
            bounce_hard_threshold: parse_or(
                env,
                "COMPLIANCE_BOUNCE_HARD_THRESHOLD",
                d.bounce_hard_threshold,
            )?,
            complaint_hard_threshold: parse_or(
                env,
                "COMPLIANCE_COMPLAINT_HARD_THRESHOLD",
                d.complaint_hard_threshold,
            )?,
            min_sends: parse_or(env, "COMPLIANCE_MIN_SENDS", d.min_sends)?,
            short_window_hours: parse_or(
                env,
                "COMPLIANCE_SHORT_WINDOW_HOURS",
                d.short_window_hours,
            )?,
            long_window_days: parse_or(env, "COMPLIANCE_LONG_WINDOW_DAYS", d.long_window_days)?,
            auto_resume: parse_or(env, "COMPLIANCE_AUTO_RESUME", d.auto_resume)?,
            resume_grace_minutes: parse_or(
                env,
                "COMPLIANCE_RESUME_GRACE_MINUTES",
                d.resume_grace_minutes,
            )?,
        };
        for (var, soft, hard) in [
            (
                "COMPLIANCE_BOUNCE_HARD_THRESHOLD",
                s.bounce_threshold,
                s.bounce_hard_threshold,
            ),
            (
                "COMPLIANCE_COMPLAINT_HARD_THRESHOLD",
                s.complaint_threshold,
                s.complaint_hard_threshold,
            ),
        ] {
            if !(soft > 0.0 && hard >= soft && hard < 1.0) {
                return Err(ConfigError::Invalid {
                    var,
                    reason: "thresholds must satisfy 0 < soft <= hard < 1".into(),
                });
            }
        }
        if s.min_sends < 1 || s.short_window_hours < 1 || s.long_window_days < 1 {
            return Err(ConfigError::Invalid {
                var: "COMPLIANCE_MIN_SENDS",
                reason: "COMPLIANCE_MIN_SENDS and the windows must be at least 1".into(),
            });
        }
        Ok(s)
    }

    fn windows(&self) -> [(String, chrono::Duration); 2] {
        [
            (
                format!("{}h", self.short_window_hours),
                chrono::Duration::hours(self.short_window_hours),
            ),
            (
                format!("{}d", self.long_window_days),
                chrono::Duration::days(self.long_window_days),
            ),
        ]
    }
}

/// One rate: a window and a category (or `all`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rate {
    /// `24h`, `7d`, …
    pub window: String,
    /// `all`, `transactional` or `marketing`.
    pub category: String,
    /// Emails SES accepted in the window.
    pub sends: i64,
    /// Of those, how many bounced permanently (once per message).
    pub bounces: i64,
    /// Of those, how many drew a complaint (once per message).
    pub complaints: i64,
    /// bounces / sends.
    pub bounce_rate: f64,
    /// complaints / sends.
    pub complaint_rate: f64,
    /// Whether `sends` reaches the minimum sample, so that the rate counts.
    pub counts: bool,
}

/// The rates of every window and category. A rate is over the messages sent in the window (a
/// cohort): each message counts once as a bounce and once as a complaint, however often SES reports it.
pub async fn rates(conn: &mut PgConnection, s: &Settings) -> Result<Vec<Rate>, sqlx::Error> {
    let [(short_label, short), (long_label, long)] = s.windows();
    let now = Utc::now();
    // One scan for both windows: the short one is counted with FILTERs inside the long one's rows.
    let rows = crate::email::ledger::sent_cohorts(&mut *conn, now - short, now - long).await?;
    let mut out = Vec::new();
    for (label, long_window) in [(short_label, false), (long_label, true)] {
        let mut all = (0, 0, 0);
        let mut push = |category: &str, (sends, bounces, complaints): (i64, i64, i64)| {
            let ratio = |n: i64| {
                if sends > 0 {
                    n as f64 / sends as f64
                } else {
                    0.0
                }
            };
            out.push(Rate {
                window: label.clone(),
                category: category.to_owned(),
                sends,
                bounces,
                complaints,
                bounce_rate: ratio(bounces),
                complaint_rate: ratio(complaints),
                counts: sends >= s.min_sends,
            });
        };
        for category in [Category::Transactional, Category::Marketing] {
            let row = rows.iter().find(|r| r.category == category);
            let counts = row.map_or((0, 0, 0), |r| {
                if long_window {
                    (r.long_sends, r.long_bounces, r.long_complaints)
                } else {
                    (r.short_sends, r.short_bounces, r.short_complaints)
                }
            });
            all = (all.0 + counts.0, all.1 + counts.1, all.2 + counts.2);
            push(category.as_str(), counts);
        }
        push("all", all);
    }
    Ok(out)
}

/// A category's pause.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PauseState {
    /// The category.
    pub category: Category,
    /// Sending of this category waits.
    pub paused: bool,
    /// Why, in words.
    pub reason: Option<String>,
    /// Since when.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub paused_at: Option<DateTime<Utc>>,
    /// Last resume.
    #[serde(serialize_with = "crate::time::ms_opt")]
    pub resumed_at: Option<DateTime<Utc>>,
}

/// Both categories' pause state.
pub async fn pauses(conn: &mut PgConnection) -> Result<Vec<PauseState>, sqlx::Error> {
    sqlx::query_as!(
        PauseState,
        r#"SELECT category AS "category: Category", paused, reason, paused_at, resumed_at
           FROM compliance_pauses ORDER BY category"#
    )
    .fetch_all(conn)
    .await
}

/// Pauses a category now with `reason`, as the guard does when a rate is over its threshold (but
/// without its grace period after a resume); false if it was paused already. For operators and
/// for tests that need a paused category.
pub async fn pause(
    conn: &mut PgConnection,
    category: Category,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let paused = sqlx::query_scalar!(
        "UPDATE compliance_pauses SET paused = true, reason = $2, paused_at = now()
         WHERE category = $1 AND NOT paused RETURNING category",
        category.as_str(),
        reason
    )
    .fetch_optional(conn)
    .await?;
    Ok(paused.is_some())
}

/// Resumes the given categories; returns those that were paused.
pub async fn resume(
    conn: &mut PgConnection,
    categories: &[Category],
) -> Result<Vec<String>, sqlx::Error> {
    let names: Vec<String> = categories.iter().map(|c| c.as_str().to_owned()).collect();
    sqlx::query_scalar!(
        "UPDATE compliance_pauses SET paused = false, resumed_at = now()
         WHERE category = ANY($1) AND paused RETURNING category",
        &names
    )
    .fetch_all(conn)
    .await
}

/// What a check found and did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CheckReport {
    /// Categories paused by this check.
    pub paused: Vec<String>,
    /// Categories resumed by this check (auto-resume).
    pub resumed: Vec<String>,
    /// The rates over their thresholds (counted rates only).
    pub over: Vec<String>,
}

/// Computes the rates and pauses (or, with auto-resume, resumes) sending accordingly.
pub async fn check(conn: &mut PgConnection, s: &Settings) -> Result<CheckReport, sqlx::Error> {
    let rates = rates(&mut *conn, s).await?;
    let mut soft = Vec::new();
    let mut hard = Vec::new();
    for r in rates.iter().filter(|r| r.counts) {
        let describe = |what: &str, rate: f64, limit: f64| {
            format!(
                "{what} rate {:.3}% over {} {} sends ({}) exceeds {:.3}%",
                rate * 100.0,
                r.sends,
                r.category,
                r.window,
                limit * 100.0
            )
        };
        // Marketing's own rates only ever pause marketing: a bad list must not stop password
        // resets unless the account's overall (or transactional) rate is in danger.
        let may_stop_transactional = r.category != Category::Marketing.as_str();
        if r.bounce_rate > s.bounce_hard_threshold && may_stop_transactional {
            hard.push(describe("bounce", r.bounce_rate, s.bounce_hard_threshold));
        } else if r.bounce_rate > s.bounce_threshold {
            soft.push(describe("bounce", r.bounce_rate, s.bounce_threshold));
        }
        if r.complaint_rate > s.complaint_hard_threshold && may_stop_transactional {
            hard.push(describe(
                "complaint",
                r.complaint_rate,
                s.complaint_hard_threshold,
            ));
        } else if r.complaint_rate > s.complaint_threshold {
            soft.push(describe(
                "complaint",
                r.complaint_rate,
                s.complaint_threshold,
            ));
        }
    }
    let mut report = CheckReport {
        over: hard.iter().chain(&soft).cloned().collect(),
        ..Default::default()
    };
    let pause = |category: Category, reasons: Vec<String>| (category, reasons.join("; "));
    let mut to_pause = Vec::new();
    if !hard.is_empty() {
        to_pause.push(pause(Category::Transactional, hard.clone()));
        to_pause.push(pause(
            Category::Marketing,
            hard.iter().chain(&soft).cloned().collect(),
        ));
    } else if !soft.is_empty() {
        to_pause.push(pause(Category::Marketing, soft.clone()));
    }
    for (category, reason) in to_pause {
        let paused = sqlx::query_scalar!(
            "UPDATE compliance_pauses SET paused = true, reason = $2, paused_at = now()
             WHERE category = $1 AND NOT paused
               AND (resumed_at IS NULL OR resumed_at < now() - make_interval(mins => $3::int))
             RETURNING category",
            category.as_str(),
            reason,
            i32::try_from(s.resume_grace_minutes).unwrap_or(i32::MAX)
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(c) = paused {
            tracing::warn!(category = %c, reason = %reason, "compliance threshold crossed: sending paused");
            report.paused.push(c);
        }
    }
    if s.auto_resume && report.over.is_empty() {
        let resumed = sqlx::query_scalar!(
            "UPDATE compliance_pauses SET paused = false, resumed_at = now() WHERE paused RETURNING category"
        )
        .fetch_all(&mut *conn)
        .await?;
        for c in &resumed {
            tracing::info!(category = %c, "rates are back under the thresholds: sending resumed");
        }
        report.resumed = resumed;
    }
    Ok(report)
}
