//! Jobs in apalis-postgres's queue: enqueue inside the caller's transaction, read and steer them.

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use ulid::Ulid;

/// Queue-layer failures.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The payload could not be serialised.
    #[error("cannot encode the job payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// apalis-postgres refused the push.
    #[error("cannot enqueue: {0}")]
    Push(#[from] apalis_postgres::Error),
    /// A query failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl JobError {
    /// The database error underneath, if there is one.
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Db(err) | Self::Push(apalis_postgres::Error::Database(err)) => Some(err),
            _ => None,
        }
    }
}

/// How a job is enqueued.
#[derive(Debug, Clone, Copy)]
pub struct EnqueueOptions {
    /// Total runs allowed, the first included (apalis counts attempts, not retries).
    pub max_attempts: u32,
    /// Earliest start; `None` means now. apalis stores whole seconds.
    pub run_at: Option<DateTime<Utc>>,
}

/// Pushes one job onto `queue` on the caller's connection or transaction, with a fresh ULID id
/// (apalis-postgres needs ULIDs: any other id poisons the queue). A rollback drops the job.
#[tracing::instrument(skip(conn, payload))]
pub async fn enqueue<T: Serialize>(
    conn: &mut PgConnection,
    queue: &str,
    payload: &T,
    options: EnqueueOptions,
) -> Result<Ulid, JobError> {
    let id = Ulid::generate();
    let bytes = serde_json::to_vec(payload)?;
    let mut builder = TaskBuilder::new(bytes)
        .task_id(TaskId::from_ulid(id))
        .max_attempts(options.max_attempts.max(1) as usize);
    if let Some(at) = options.run_at {
        builder = builder.run_at_timestamp(at.timestamp().max(0) as u64);
    }
    apalis_postgres::queries::push_tasks(conn, queue, vec![builder.build()]).await?;
    Ok(id)
}

/// Herald's view of a job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting to run (first run, or a retry after its backoff).
    Queued,
    /// Fetched by a worker.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed for good (attempts used up or a permanent error).
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

impl JobStatus {
    /// Maps apalis's raw status and attempt counters to Herald's.
    pub fn from_apalis(status: &str, attempts: i32, max_attempts: i32) -> Self {
        match status {
            "Done" => Self::Succeeded,
            "Killed" => Self::Cancelled,
            "Queued" | "Running" => Self::Running,
            "Failed" if attempts < max_attempts => Self::Queued,
            "Failed" => Self::Failed,
            _ => Self::Queued,
        }
    }
}

/// One row of `apalis.jobs`, the fields Herald reports.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// ULID.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// apalis's own status string.
    pub raw_status: String,
    /// Runs so far.
    pub attempts: i32,
    /// Runs allowed.
    pub max_attempts: i32,
    /// Next (or last) start time.
    pub run_at: DateTime<Utc>,
    /// apalis's stored result, `{"Ok": …}` or `{"Err": "…"}`.
    pub last_result: Option<serde_json::Value>,
}

impl JobRow {
    /// Herald's status for this row.
    pub fn status(&self) -> JobStatus {
        JobStatus::from_apalis(&self.raw_status, self.attempts, self.max_attempts)
    }

    /// The last error message, if the last run failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_result
            .as_ref()
            .and_then(|r| r.get("Err"))
            .map(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string())
            })
    }
}

/// Loads a job by id; `None` for an unknown id.
pub async fn find(conn: &mut PgConnection, id: &str) -> Result<Option<JobRow>, JobError> {
    let row = sqlx::query_as!(
        JobRow,
        r#"SELECT id, job_type AS queue, status AS raw_status, attempts, max_attempts, run_at,
                  last_result
           FROM apalis.jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Puts a failed job back in the queue with a fresh budget of attempts. Returns false unless
/// the job exists and has failed for good.
pub async fn retry(conn: &mut PgConnection, id: &str, max_attempts: i32) -> Result<bool, JobError> {
    let done = sqlx::query!(
        "UPDATE apalis.jobs
         SET status = 'Pending', attempts = 0, max_attempts = $2, run_at = now(),
             lock_by = NULL, lock_at = NULL, done_at = NULL
         WHERE id = $1 AND status = 'Failed' AND attempts >= max_attempts",
        id,
        max_attempts
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Cancels a job that has not started (waiting, or waiting for a retry). Returns false otherwise.
pub async fn cancel(conn: &mut PgConnection, id: &str) -> Result<bool, JobError> {
    let done = sqlx::query!(
        r#"UPDATE apalis.jobs
           SET status = 'Killed', done_at = now(), last_result = '{"Err": "cancelled"}'::jsonb
           WHERE id = $1
             AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))"#,
        id
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Schedules the next run of a job that is running now: apalis re-fetches failed jobs at once, so
/// a backoff is a later `run_at`. With `refund_attempt` the current run does not count.
pub async fn reschedule_running(
    conn: &mut PgConnection,
    id: &str,
    run_at: DateTime<Utc>,
    refund_attempt: bool,
) -> Result<(), JobError> {
    sqlx::query!(
        "UPDATE apalis.jobs
         SET run_at = $2, max_attempts = max_attempts + CASE WHEN $3 THEN 1 ELSE 0 END
         WHERE id = $1",
        id,
        run_at,
        refund_attempt
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Schedules the next run of a running job after a transient failure (a database error) with the
/// email path's backoff: base × 2^runs so far, capped at `max`, with equal jitter. apalis alone would
/// fetch it again at once and spend its attempts in a burst.
pub async fn back_off_running(
    conn: &mut PgConnection,
    id: &str,
    base: std::time::Duration,
    max: std::time::Duration,
) -> Result<(), JobError> {
    sqlx::query!(
        "UPDATE apalis.jobs
         SET run_at = now() + make_interval(secs => least($3::float8, $2::float8 * power(2, least(attempts, 30)))
                                                    * (0.5 + random() / 2))
         WHERE id = $1",
        id,
        base.as_secs_f64(),
        max.as_secs_f64()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes the current run of a running job its last: after it fails, apalis will not fetch it again.
pub async fn finish_after_this_run(conn: &mut PgConnection, id: &str) -> Result<(), JobError> {
    // apalis writes attempts + 1 when it records this run's result.
    sqlx::query!(
        "UPDATE apalis.jobs SET max_attempts = attempts + 1 WHERE id = $1",
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::JobStatus;

    #[test]
    fn apalis_states_map_to_herald_states() {
        assert_eq!(JobStatus::from_apalis("Pending", 0, 5), JobStatus::Queued);
        assert_eq!(JobStatus::from_apalis("Queued", 0, 5), JobStatus::Running);
        assert_eq!(JobStatus::from_apalis("Running", 1, 5), JobStatus::Running);
        assert_eq!(JobStatus::from_apalis("Failed", 2, 5), JobStatus::Queued);
        assert_eq!(JobStatus::from_apalis("Failed", 5, 5), JobStatus::Failed);
        assert_eq!(JobStatus::from_apalis("Done", 1, 5), JobStatus::Succeeded);
        assert_eq!(JobStatus::from_apalis("Killed", 0, 5), JobStatus::Cancelled);
    }
}
