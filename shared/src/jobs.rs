//! The queue door: jobs in apalis-postgres's queue. Enqueue inside the caller's transaction, read
//! and steer jobs, the test driver's take/record. The only module that writes apalis's tables
//! (`apalis.jobs`, `apalis.workers`); [`crate::job_search`] is the read model that joins them with
//! the ledger. Knows no job type: [`Queue`] names the queues, each job type says which is its own.
//!
//! Longer than 450 lines on purpose: every statement that writes apalis's tables is here, so the
//! rules apalis's own state machine relies on (states, attempts, locks) are read in one place.

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use ulid::Ulid;

/// A job's id: a ULID (apalis-postgres needs them), parsed once where an id comes in (a path, a
/// cursor, a stored row) and printed in its canonical 26-character form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Ulid);

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a job id (a ULID)")]
pub struct NotAJobId;

impl JobId {
    /// A fresh id, ordered by time.
    pub fn generate() -> Self {
        Self(Ulid::generate())
    }

    /// The smallest id of the millisecond `at` (a bound for ranges by time).
    pub fn floor(at: DateTime<Utc>) -> Self {
        Self(Ulid::from_parts(
            u64::try_from(at.timestamp_millis()).unwrap_or(0),
            0,
        ))
    }

    /// The ULID.
    pub fn ulid(self) -> Ulid {
        self.0
    }

    /// When the job was enqueued: the time in its ULID.
    pub fn enqueued_at(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(i64::try_from(self.0.timestamp_ms()).ok()?)
    }
}

impl std::str::FromStr for JobId {
    type Err = NotAJobId;
    fn from_str(s: &str) -> Result<Self, NotAJobId> {
        s.parse::<Ulid>().map(Self).map_err(|_| NotAJobId)
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

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
    /// As a database error, for callers whose own error is sqlx's.
    pub fn into_sqlx(self) -> sqlx::Error {
        match self {
            Self::Db(err) | Self::Push(apalis_postgres::Error::Database(err)) => err,
            other => sqlx::Error::Protocol(other.to_string()),
        }
    }

    /// The database error underneath, if there is one.
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Db(err) | Self::Push(apalis_postgres::Error::Database(err)) => Some(err),
            _ => None,
        }
    }
}

/// Herald's queues, written once: the worker, metrics, the console, retention and the jobs API
/// list them from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Email sends (`herald.email`).
    Email,
    /// Scheduled maintenance (`herald.maintenance`).
    Maintenance,
    /// Webhook deliveries (`herald.webhooks`).
    Webhooks,
}

impl Queue {
    /// Every queue.
    pub const ALL: [Self; 3] = [Self::Email, Self::Maintenance, Self::Webhooks];

    /// apalis's `job_type`. Never rename one: queued jobs would be orphaned.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Email => "herald.email",
            Self::Maintenance => "herald.maintenance",
            Self::Webhooks => "herald.webhooks",
        }
    }

    /// The queue named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A job payload and the queue it runs on. The worker's job adapter (`HeraldJob`) builds on it.
pub trait QueueJob: Serialize {
    /// The apalis queue (`job_type`). Never rename one: queued jobs would be orphaned.
    const QUEUE: &'static str;
}

/// How a job is enqueued.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Total runs allowed, the first included (apalis counts attempts, not retries).
    pub max_attempts: u32,
    /// Earliest start; `None` means now. apalis stores whole seconds.
    pub run_at: Option<DateTime<Utc>>,
    /// At most one job with this key ever exists (a schedule's tick, say): a second enqueue
    /// answers [`Enqueued::Duplicate`].
    pub idempotency_key: Option<String>,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job with this id.
    New(JobId),
    /// A job with the same idempotency key exists already; nothing was added.
    Duplicate,
}

/// Pushes `job` onto its queue on the caller's connection or transaction, with a fresh ULID id
/// (apalis-postgres needs ULIDs: any other id poisons the queue). A rollback drops the job. The
/// one way Herald enqueues: the API, the schedules and the tests call it.
#[tracing::instrument(skip_all, fields(queue = J::QUEUE))]
pub async fn enqueue<J: QueueJob>(
    conn: &mut PgConnection,
    job: &J,
    options: EnqueueOptions,
) -> Result<Enqueued, JobError> {
    let id = JobId::generate();
    let bytes = serde_json::to_vec(job)?;
    let mut builder = TaskBuilder::new(bytes)
        .task_id(TaskId::from_ulid(id.ulid()))
        .max_attempts(options.max_attempts.max(1) as usize);
    if let Some(at) = options.run_at {
        builder = builder.run_at_timestamp(at.timestamp().max(0) as u64);
    }
    if let Some(key) = options.idempotency_key {
        builder = builder.idempotency_key(key);
    }
    match apalis_postgres::queries::push_tasks(conn, J::QUEUE, vec![builder.build()]).await {
        Ok(()) => Ok(Enqueued::New(id)),
        Err(apalis_postgres::Error::Database(sqlx::Error::Database(db)))
            if db.code().as_deref() == Some("23505") =>
        {
            Ok(Enqueued::Duplicate)
        }
        Err(err) => Err(err.into()),
    }
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
    /// When its last run ended.
    pub done_at: Option<DateTime<Utc>>,
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
                  done_at, last_result
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

/// Moves the start of a job that has not started (waiting, or waiting for a retry) to `run_at`
/// (whole seconds, as apalis keeps them). Returns false otherwise.
pub async fn set_run_at(
    conn: &mut PgConnection,
    id: &str,
    run_at: DateTime<Utc>,
) -> Result<bool, JobError> {
    let done = sqlx::query!(
        "UPDATE apalis.jobs SET run_at = to_timestamp(floor(extract(epoch FROM $2::timestamptz)))
         WHERE id = $1
           AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))",
        id,
        run_at
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Schedules the next run of a job that is running now: apalis re-fetches failed jobs at once, so
/// a backoff is a later `run_at`. The run itself is still recorded as failed by apalis.
pub async fn reschedule_running(
    conn: &mut PgConnection,
    id: &str,
    run_at: DateTime<Utc>,
) -> Result<(), JobError> {
    sqlx::query!(
        "UPDATE apalis.jobs SET run_at = $2 WHERE id = $1",
        id,
        run_at
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a running job back to waiting until `until`, as if this run had not happened: no attempt
/// used, no failed run recorded. apalis records a run's end only on a job still locked by its
/// worker (`handle_result.sql`), and this clears the lock, so apalis changes nothing afterwards.
/// Fails when the job is not running (cancelled meanwhile, say).
pub async fn hold_running(
    conn: &mut PgConnection,
    id: &str,
    until: DateTime<Utc>,
) -> Result<(), JobError> {
    let done = sqlx::query!(
        "UPDATE apalis.jobs SET status = 'Pending', run_at = $2, lock_by = NULL, lock_at = NULL
         WHERE id = $1 AND lock_by IS NOT NULL AND status IN ('Queued', 'Running')",
        id,
        until
    )
    .execute(conn)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(JobError::Db(sqlx::Error::RowNotFound))
    }
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

/// How many jobs a queue holds in one Herald state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    /// Queue name.
    pub queue: String,
    /// Herald's state.
    pub state: JobStatus,
    /// Jobs.
    pub n: i64,
}

/// Jobs by queue and Herald state (a failed job with runs left counts as queued).
pub async fn count_by_state<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<StateCount>, JobError> {
    let rows = sqlx::query!(
        r#"SELECT job_type AS "queue!", status AS "status!", (attempts < max_attempts) AS "retrying!", count(*) AS "n!"
           FROM apalis.jobs GROUP BY 1, 2, 3 ORDER BY 1"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StateCount {
            state: JobStatus::from_apalis(&r.status, if r.retrying { 0 } else { 1 }, 1),
            queue: r.queue,
            n: r.n,
        })
        .collect())
}

impl JobStatus {
    /// Every state, in the order pages show them.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The state's name, as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// When a job was enqueued: the time in its ULID.
pub fn enqueued_at(id: &str) -> Option<DateTime<Utc>> {
    id.parse::<JobId>().ok()?.enqueued_at()
}

/// A job's payload as enqueued (JSON bytes); `None` for an unknown id.
pub async fn payload(conn: &mut PgConnection, id: &str) -> Result<Option<Vec<u8>>, JobError> {
    Ok(
        sqlx::query_scalar!("SELECT job FROM apalis.jobs WHERE id = $1", id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Jobs of `queue` a worker holds now: fetched (locked by it) and not yet recorded. What a worker
/// killed now would strand until its lock expires and another worker rescues them.
pub async fn count_held<'e>(db: impl sqlx::PgExecutor<'e>, queue: &str) -> Result<i64, JobError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM apalis.jobs
           WHERE job_type = $1 AND status IN ('Queued', 'Running') AND lock_by IS NOT NULL"#,
        queue
    )
    .fetch_one(db)
    .await?)
}

/// Per queue, the age in seconds of the oldest job that is due and waiting.
pub async fn oldest_waiting<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<(String, f64)>, JobError> {
    let rows = sqlx::query!(
        r#"SELECT job_type AS "queue!", EXTRACT(EPOCH FROM now() - min(run_at))::float8 AS "age!"
           FROM apalis.jobs
           WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)) AND run_at <= now()
           GROUP BY 1"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.queue, r.age)).collect())
}

/// On `queue`, per idempotency-key prefix (the part before `@`: a schedule's name), the Unix time
/// its newest job succeeded.
pub async fn last_success_by_key_prefix<'e>(
    db: impl sqlx::PgExecutor<'e>,
    queue: &str,
) -> Result<Vec<(String, f64)>, JobError> {
    let rows = sqlx::query!(
        r#"SELECT split_part(idempotency_key, '@', 1) AS "prefix!",
                  EXTRACT(EPOCH FROM max(done_at))::float8 AS "at!"
           FROM apalis.jobs WHERE job_type = $1 AND status = 'Done' AND done_at IS NOT NULL
           GROUP BY 1"#,
        queue
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.prefix, r.at)).collect())
}

/// The newest job on `queue` whose idempotency key starts with `prefix@`.
pub async fn latest_by_key_prefix<'e>(
    db: impl sqlx::PgExecutor<'e>,
    queue: &str,
    prefix: &str,
) -> Result<Option<JobRow>, JobError> {
    Ok(runs_by_key_prefix(db, queue, prefix, 1).await?.pop())
}

/// The newest `limit` jobs on `queue` whose idempotency key starts with `prefix@` (a schedule's
/// runs), newest first.
pub async fn runs_by_key_prefix<'e>(
    db: impl sqlx::PgExecutor<'e>,
    queue: &str,
    prefix: &str,
    limit: i64,
) -> Result<Vec<JobRow>, JobError> {
    Ok(sqlx::query_as!(
        JobRow,
        r#"SELECT id, job_type AS queue, status AS raw_status, attempts, max_attempts, run_at,
                  done_at, last_result
           FROM apalis.jobs
           WHERE job_type = $1 AND idempotency_key LIKE $2 || '@%'
           ORDER BY run_at DESC, id DESC LIMIT $3"#,
        queue,
        prefix,
        limit
    )
    .fetch_all(db)
    .await?)
}
/// Deletes up to `limit` jobs that succeeded or were cancelled before `before`; returns how many.
pub async fn prune_finished(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM apalis.jobs
                         WHERE status IN ('Done', 'Killed') AND done_at < $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED)
         DELETE FROM apalis.jobs j USING doomed WHERE j.id = doomed.id",
        before,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Deletes up to `limit` jobs that failed for good before `before`; returns how many.
pub async fn prune_failed(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM apalis.jobs
                         WHERE status = 'Failed' AND attempts >= max_attempts AND done_at < $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED)
         DELETE FROM apalis.jobs j USING doomed WHERE j.id = doomed.id",
        before,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// The versions of apalis-postgres's own migrations applied here, or `None` before its schema exists.
pub async fn queue_migrations_applied(
    conn: &mut sqlx::PgConnection,
) -> Result<Option<Vec<i64>>, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('apalis._sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !table_exists {
        return Ok(None);
    }
    Ok(Some(
        sqlx::query_scalar("SELECT version FROM apalis._sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await?,
    ))
}

/// The queue's bookkeeping table, which a data-only role may read but never change.
pub const QUEUE_MIGRATIONS_TABLE: &str = "apalis._sqlx_migrations";

/// A due job taken by [`take_due`], with its payload.
#[derive(Debug, Clone)]
pub struct DueJob {
    /// Job id.
    pub id: String,
    /// The payload as enqueued (JSON bytes).
    pub payload: Vec<u8>,
    /// Runs before this one.
    pub attempts: i32,
    /// Runs allowed.
    pub max_attempts: i32,
}

/// Registers `worker` for `queue` as apalis's own workers register (jobs it takes name it).
pub async fn register_worker(
    conn: &mut PgConnection,
    worker: &str,
    queue: &str,
) -> Result<(), JobError> {
    sqlx::query!(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ($1, $2, 'herald', '', now())
         ON CONFLICT (id) DO UPDATE SET last_seen = now()",
        worker,
        queue
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes up to `limit` due jobs of `queue` for `worker`, as apalis's own fetch does (the same
/// `apalis.get_jobs`, so locks, order and eligibility are apalis's).
pub async fn take_due(
    conn: &mut PgConnection,
    worker: &str,
    queue: &str,
    limit: i32,
) -> Result<Vec<DueJob>, JobError> {
    Ok(sqlx::query_as!(
        DueJob,
        r#"SELECT id AS "id!", job AS "payload!", attempts AS "attempts!", max_attempts AS "max_attempts!"
           FROM apalis.get_jobs($1, $2, $3)"#,
        worker,
        queue,
        limit
    )
    .fetch_all(conn)
    .await?)
}

/// Records the end of a run of a job `worker` holds, as apalis does: `Done` or `Failed`, the run
/// count, the result. Does nothing when the job is no longer held by `worker` (held back meanwhile).
pub async fn record_run(
    conn: &mut PgConnection,
    id: &str,
    worker: &str,
    attempt: i32,
    result: Result<&serde_json::Value, &str>,
) -> Result<(), JobError> {
    let (status, stored) = match result {
        Ok(value) => ("Done", serde_json::json!({"Ok": value})),
        Err(error) => ("Failed", serde_json::json!({"Err": error})),
    };
    sqlx::query!(
        "UPDATE apalis.jobs SET status = $3, attempts = $4, last_result = $5, done_at = now()
         WHERE id = $1 AND lock_by = $2",
        id,
        worker,
        status,
        attempt,
        stored
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The jobs of emails the ledger just marked `sent`, recorded as apalis records a successful run
/// (`Done`, the run's number, the answer `{"outcome": "sent", "ses_message_id": …}`) unless they
/// ended meanwhile: the tail of the ledger's grouped `sent` statement
/// ([`crate::email::ledger::mark_sent_and_record_runs`]), which names its moved rows `sent(job_id,
/// ses_message_id, run)`. Returns the ids it recorded, whose own acks are then redundant.
pub(crate) const RECORD_SENT_RUNS: &str = r#"UPDATE apalis.jobs AS j
     SET status = 'Done', attempts = sent.run, done_at = now(),
         last_result = jsonb_build_object('Ok', jsonb_build_object(
             'outcome', 'sent', 'ses_message_id', sent.ses_message_id))
     FROM sent
     WHERE j.id = sent.job_id AND j.status IN ('Pending', 'Queued', 'Running', 'Failed')
     RETURNING j.id"#;

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
