//! Grouped ledger writes: the common claim and the `sent` record, one statement for every email
//! that arrived while the previous one ran, bounded so that one stuck row cannot stall the rest.

use std::sync::Arc;
use std::time::Duration;

use herald_shared::email::ledger;
use sqlx::PgPool;

use crate::backend::AckedJobs;
use herald_shared::group::Group;

/// A claim request: job id, recipient, category.
type ClaimRequest = (String, String, String);

/// A `sent` record: job id, SES message id, the run's number.
type SentRequest = (String, Option<String>, i32);

/// The grouped ledger writes of one worker process.
#[derive(Debug)]
pub struct LedgerGroups {
    /// Moves rows to `sending` (the common case) for many emails at once.
    pub(super) claims: Group<ClaimRequest, ledger::Claim>,
    /// Writes `sent` for many emails at once, and records their jobs' successful runs with it.
    pub(super) sent: Group<SentRequest, ()>,
    /// The jobs the `sent` writes recorded, for the email backend to leave out of its acks.
    pub acked: Arc<AckedJobs>,
}

/// How long a grouped ledger statement may take before its emails fall back to the per-email path
/// (a row lock held elsewhere, a half-open connection): one stuck row must not stall the group.
pub const GROUP_STATEMENT_BOUND: Duration = Duration::from_secs(2);

impl LedgerGroups {
    /// Starts the two writer tasks.
    pub fn start(pool: &PgPool) -> Self {
        Self::start_with_bound(pool, GROUP_STATEMENT_BOUND)
    }

    /// Starts the two writer tasks, giving up on a grouped statement after `bound`.
    pub fn start_with_bound(pool: &PgPool, bound: Duration) -> Self {
        // PostgreSQL gives up on a row lock held elsewhere and releases the rows it locked, so the
        // per-email path is not left waiting behind an abandoned statement.
        let lock_wait = ledger::LockWait::AtMost(bound);
        let claim_pool = pool.clone();
        let claims = Group::start(256, move |items: Vec<ClaimRequest>| {
            let pool = claim_pool.clone();
            async move {
                let mut ids = Vec::with_capacity(items.len());
                let mut emails = Vec::with_capacity(items.len());
                let mut categories = Vec::with_capacity(items.len());
                for (id, to, category) in items {
                    ids.push(id);
                    emails.push(to);
                    categories.push(category);
                }
                let write = async |conn: &mut sqlx::PgConnection| {
                    ledger::claim_clear_many(conn, &ids, &emails, &categories, lock_wait).await
                };
                // On failure each email takes the step-by-step path.
                let Some(claimed) = grouped_write(&pool, "claim", ids.len(), bound, write).await
                else {
                    return Vec::new();
                };
                let mut claimed: std::collections::HashMap<_, _> = claimed.into_iter().collect();
                ids.iter().map(|id| claimed.remove(id)).collect()
            }
        });
        let sent_pool = pool.clone();
        let acked = Arc::new(AckedJobs::default());
        let recorded = Arc::clone(&acked);
        let sent = Group::start(256, move |items: Vec<SentRequest>| {
            let (pool, recorded) = (sent_pool.clone(), Arc::clone(&recorded));
            async move {
                let rows: Vec<ledger::Accepted> = items
                    .into_iter()
                    .map(|(job_id, ses_message_id, run)| ledger::Accepted {
                        job_id,
                        ses_message_id,
                        note: None,
                        run,
                    })
                    .collect();
                let write = async |conn: &mut sqlx::PgConnection| {
                    ledger::mark_sent_and_record_runs(conn, &rows, lock_wait).await
                };
                // On failure each email writes its own row, with retries and per-row errors, and
                // apalis records its job.
                match grouped_write(&pool, "'sent'", rows.len(), bound, write).await {
                    Some(done) => {
                        // Before the answers: a run's ack follows its answer.
                        recorded.insert(done);
                        vec![Some(()); rows.len()]
                    }
                    None => Vec::new(),
                }
            }
        });
        Self {
            claims,
            sent,
            acked,
        }
    }
}

/// Runs one grouped statement on a pooled connection within `bound`; a failure or a statement
/// that outlasts the bound is logged and answers `None` (its emails then go one by one).
async fn grouped_write<T>(
    pool: &PgPool,
    what: &str,
    emails: usize,
    bound: Duration,
    write: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
) -> Option<T> {
    let attempt = async {
        let mut conn = pool.acquire().await?;
        match tokio::time::timeout(bound + Duration::from_millis(500), write(&mut conn)).await {
            Ok(result) => result,
            Err(_) => {
                // No answer (a half-open connection): it must not be reused.
                conn.close_on_drop();
                Err(sqlx::Error::PoolTimedOut)
            }
        }
    };
    match tokio::time::timeout(bound.saturating_mul(2), attempt).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(error)) => {
            tracing::warn!(%error, emails, "grouped {what} write failed; one by one instead");
            None
        }
        Err(_) => {
            tracing::warn!(
                emails,
                bound_ms = bound.as_millis() as u64,
                "grouped {what} write took too long; one by one instead"
            );
            None
        }
    }
}
