//! The maintenance jobs. Each works in batches so that no statement holds its locks for long, and
//! reports what it did, including its longest statement.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;

use super::Settings;

/// Timing shared by the reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// Statements run.
    pub statements: u64,
    /// The longest single statement, milliseconds.
    pub longest_statement_ms: f64,
    /// The whole job, milliseconds.
    pub total_ms: f64,
}

impl Timing {
    fn note(&mut self, took: Duration) {
        self.statements += 1;
        self.longest_statement_ms = self.longest_statement_ms.max(took.as_secs_f64() * 1000.0);
    }
}

/// Runs one batch statement until it affects fewer rows than `batch`; returns the rows affected.
async fn in_batches<F, Fut>(
    timing: &mut Timing,
    batch: i64,
    mut statement: F,
) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let started = Instant::now();
        let n = statement().await?;
        timing.note(started.elapsed());
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

/// What `expire_tokens` deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpiryReport {
    /// Expired refresh tokens.
    pub refresh_tokens: u64,
    /// Expired verification tokens.
    pub verification_tokens: u64,
    /// Expired reset tokens, and used ones past their retention.
    pub password_reset_tokens: u64,
    /// Batch size used.
    pub batch_size: i64,
    /// Timing.
    pub timing: Timing,
}

/// Deletes expired refresh, verification and reset tokens (and reset tokens used long ago).
#[tracing::instrument(skip_all)]
pub async fn expire_tokens(pool: &PgPool, s: &Settings) -> Result<ExpiryReport, sqlx::Error> {
    let started = Instant::now();
    let now = Utc::now();
    let used_before = now - s.used_reset_token_retention;
    let b = s.expiry_batch_size;
    let mut r = ExpiryReport {
        batch_size: b,
        ..Default::default()
    };
    use crate::tokens::{Expired, delete_expired};
    r.refresh_tokens = in_batches(&mut r.timing, b, || {
        delete_expired(pool, Expired::Refresh, now, b)
    })
    .await?;
    r.verification_tokens = in_batches(&mut r.timing, b, || {
        delete_expired(pool, Expired::Verification, now, b)
    })
    .await?;
    let expired = in_batches(&mut r.timing, b, || {
        delete_expired(pool, Expired::Reset, now, b)
    })
    .await?;
    let used = in_batches(&mut r.timing, b, || {
        delete_expired(pool, Expired::UsedReset, used_before, b)
    })
    .await?;
    r.password_reset_tokens = expired + used;
    r.timing.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(r)
}

/// What `refresh_search_index` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchReport {
    /// Users whose vector was missing or stale, now recomputed.
    pub users_fixed: u64,
    /// Phrases whose vector was missing or stale, now recomputed.
    pub phrases_fixed: u64,
    /// Both tables were analysed.
    pub analyzed: bool,
    /// Search indexes rebuilt concurrently (only with `REINDEX_SEARCH_CONCURRENTLY`).
    pub reindexed: Vec<String>,
    /// Timing.
    pub timing: Timing,
}

const SEARCH_INDEXES: [&str; 6] = [
    "idx_users_search_vector",
    "idx_phrases_search_vector",
    "idx_users_display_name_trgm",
    "idx_users_email_trgm",
    "idx_users_slug_trgm",
    "idx_phrases_phrase_text_trgm",
];

/// Recomputes missing or stale search vectors (only those rows), then runs ANALYZE.
#[tracing::instrument(skip_all)]
pub async fn refresh_search_index(
    pool: &PgPool,
    s: &Settings,
) -> Result<SearchReport, sqlx::Error> {
    let started = Instant::now();
    let b = s.search_batch_size;
    let mut r = SearchReport::default();
    // Walk each table once in id order; every batch starts after the last row it fixed.
    let mut cursor = uuid::Uuid::nil();
    loop {
        let t = Instant::now();
        let ids = crate::users::refresh_search_vectors(pool, cursor, b).await?;
        r.timing.note(t.elapsed());
        r.users_fixed += ids.len() as u64;
        match ids.iter().max() {
            Some(max) if ids.len() as i64 == b => cursor = *max,
            _ => break,
        }
    }
    let mut cursor = uuid::Uuid::nil();
    loop {
        let t = Instant::now();
        let ids = crate::phrases::refresh_search_vectors(pool, cursor, b).await?;
        r.timing.note(t.elapsed());
        r.phrases_fixed += ids.len() as u64;
        match ids.iter().max() {
            Some(max) if ids.len() as i64 == b => cursor = *max,
            _ => break,
        }
    }
    for table in ["ANALYZE users", "ANALYZE phrases"] {
        let t = Instant::now();
        sqlx::query(table).execute(pool).await?;
        r.timing.note(t.elapsed());
    }
    r.analyzed = true;
    if s.reindex_concurrently {
        for index in SEARCH_INDEXES {
            let t = Instant::now();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "REINDEX INDEX CONCURRENTLY {index}"
            )))
            .execute(pool)
            .await?;
            r.timing.note(t.elapsed());
            r.reindexed.push(index.to_owned());
        }
    }
    r.timing.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(r)
}

/// What `prune` deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Succeeded and cancelled jobs past `JOB_RETENTION_DAYS`.
    pub finished_jobs: u64,
    /// Jobs failed for good past `FAILED_JOB_RETENTION_DAYS`.
    pub failed_jobs: u64,
    /// Feedback events past `EVENT_RETENTION_DAYS`.
    pub feedback_events: u64,
    /// Finished send-ledger rows past `EVENT_RETENTION_DAYS`.
    pub deliveries: u64,
    /// Idempotency keys past `JOB_RETENTION_DAYS`.
    pub idempotency_keys: u64,
    /// Webhook events (with their deliveries and attempts) past `EVENT_RETENTION_DAYS`.
    pub webhook_events: u64,
    /// Attachment bytes no email used for `EVENT_RETENTION_DAYS`.
    pub attachments: u64,
    /// Batch size used.
    pub batch_size: i64,
    /// Timing.
    pub timing: Timing,
}

/// Deletes finished jobs, old feedback events, ledger rows and idempotency keys, in batches.
#[tracing::instrument(skip_all)]
pub async fn prune(pool: &PgPool, s: &Settings) -> Result<PruneReport, sqlx::Error> {
    let started = Instant::now();
    let now = Utc::now();
    let (jobs_before, failed_before, events_before) = (
        now - s.job_retention,
        now - s.failed_job_retention,
        now - s.event_retention,
    );
    let b = s.prune_batch_size;
    let mut r = PruneReport {
        batch_size: b,
        ..Default::default()
    };
    r.finished_jobs = in_batches(&mut r.timing, b, || {
        crate::jobs::prune_finished(pool, jobs_before, b)
    })
    .await?;
    r.failed_jobs = in_batches(&mut r.timing, b, || {
        crate::jobs::prune_failed(pool, failed_before, b)
    })
    .await?;
    // The audit trail: the app role may not delete it, only this function may (old rows).
    r.feedback_events = in_batches(&mut r.timing, b, || {
        crate::feedback::prune(pool, events_before, b)
    })
    .await?;
    r.deliveries = in_batches(&mut r.timing, b, || {
        crate::email::ledger::prune(pool, events_before, b)
    })
    .await?;
    r.idempotency_keys = in_batches(&mut r.timing, b, || {
        crate::email::keys::prune(pool, jobs_before, b)
    })
    .await?;
    r.webhook_events = in_batches(&mut r.timing, b, || {
        crate::webhooks::prune(pool, events_before, b)
    })
    .await?;
    r.attachments = in_batches(&mut r.timing, b, || {
        crate::email::attachments::prune(pool, events_before, b)
    })
    .await?;
    r.timing.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(r)
}
