//! Why a run failed, and how long the next attempt waits.

use std::time::Duration;

use herald_shared::{jobs, tokens};
use rand::Rng;

use crate::ses::SendError;

/// Why a run could not decide: the database, the queue or the token store failed on the way
/// (retried with backoff), or the email cannot be built (final).
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    /// SES failed; the job may run again later (or has failed for good, see the ledger).
    #[error("{0}")]
    Send(#[from] SendError),
    /// The database failed; the job runs again (at once, as apalis does for failures).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Queue bookkeeping failed.
    #[error("{0}")]
    Job(#[from] jobs::JobError),
    /// Issuing a token failed.
    #[error("{0}")]
    Token(#[from] tokens::TokenError),
    /// The job cannot be rendered (unknown user, template error): final.
    #[error("cannot build the email: {0}")]
    Content(String),
}

/// The delay before attempt `attempt + 1`: base × 2^(attempt−1), capped, with equal jitter
/// (half fixed, half random) so that workers hit by one throttle do not retry in step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    let half = capped / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for attempt in 1..=8_u32 {
            let full = (base * 2_u32.pow(attempt - 1)).min(max);
            for _ in 0..50 {
                let d = backoff(base, max, attempt);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert!(backoff(base, max, 100) <= max);
    }
}
