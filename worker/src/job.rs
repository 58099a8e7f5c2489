//! The one job adapter over apalis. Every Herald job implements [`HeraldJob`]: its queue, its
//! context and a `run` that answers an [`Outcome`]. [`handle`] is the only apalis handler: it keeps
//! one run per job per process, lets a run finish even when apalis drops the handler, applies the outcome to the queue
//! (through `herald_shared::jobs`, the only code that reads or writes apalis's tables) and records
//! the job metrics.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data, FromRequest, Task, TaskId};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use herald_shared::jobs::{self, QueueJob};
use herald_shared::metrics::{Metrics, QueueOutcome};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::Instrument;

pub use crate::email_job::{InFlight, InFlightGuard};

/// What one run decided; [`handle`] applies it to the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished; apalis stores the value as the job's result.
    Done(Value),
    /// Failed this time: a failed run (it uses an attempt); the next one starts `after` from now.
    Retry {
        /// Delay before the next run.
        after: Duration,
        /// What went wrong, recorded as the run's result.
        error: String,
    },
    /// Not now (a sending pause, a compliance hold): the job waits until `until` without using an
    /// attempt and without a failed run on its record.
    Hold {
        /// When to look again.
        until: DateTime<Utc>,
        /// Why it waits.
        reason: String,
    },
    /// Failed for good: no more runs.
    Fatal(String),
}

/// This run's place in the job's budget, as apalis counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runs {
    /// This run's number, from 1.
    pub this: u32,
    /// Runs allowed in all.
    pub allowed: u32,
}

impl Runs {
    /// Whether a failure now ends the job.
    pub fn is_last(self) -> bool {
        self.this >= self.allowed
    }
}

impl<Args: Sync> FromRequest<Task<Args>> for Runs {
    type Error = Infallible;
    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        // apalis counts the run before the handler starts.
        let this = u32::try_from(task.attempt()).unwrap_or(u32::MAX).max(1);
        let allowed = task
            .max_attempts()
            .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(Self { this, allowed })
    }
}

/// What the adapter needs from a job's context.
pub trait JobContext: Send + Sync + std::fmt::Debug + 'static {
    /// The pool the adapter steers the queue through.
    fn pool(&self) -> &PgPool;
    /// Where the job metrics go.
    fn metrics(&self) -> &Metrics;
    /// The jobs running in this process.
    fn in_flight(&self) -> &Arc<InFlight>;
}

/// Implements [`JobContext`] for a context with `pool`, `metrics` and `in_flight` fields: every
/// job type's context answers the adapter the same way.
macro_rules! job_context {
    ($context:ty) => {
        impl $crate::job::JobContext for $context {
            fn pool(&self) -> &sqlx::PgPool {
                &self.pool
            }
            fn metrics(&self) -> &herald_shared::metrics::Metrics {
                &self.metrics
            }
            fn in_flight(&self) -> &std::sync::Arc<$crate::job::InFlight> {
                &self.in_flight
            }
        }
    };
}
pub(crate) use job_context;

/// A Herald job: a typed payload on one queue (its [`QueueJob::QUEUE`], which
/// `herald_shared::jobs::enqueue` pushes onto), and how to run it once.
pub trait HeraldJob: QueueJob + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// What every run of this job needs.
    type Context: JobContext;
    /// The tracing span of a run.
    fn span(&self, id: &str) -> tracing::Span;
    /// Runs the job once.
    fn run(
        self,
        id: String,
        runs: Runs,
        ctx: Arc<Self::Context>,
    ) -> impl Future<Output = Outcome> + Send;
}

/// A run's failure as apalis records it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(String);

/// The apalis handler of every Herald job. Boxed: apalis moves the handler's future through its
/// layers several times per job, and a pointer is cheaper to move than the run's state.
pub fn handle<J: HeraldJob>(
    job: J,
    task_id: TaskId,
    runs: Runs,
    ctx: Data<Arc<J::Context>>,
) -> futures::future::BoxFuture<'static, Result<Value, BoxDynError>> {
    let ctx: Arc<J::Context> = Arc::clone(&ctx);
    Box::pin(run_once(job, task_id, runs, ctx))
}

async fn run_once<J: HeraldJob>(
    job: J,
    task_id: TaskId,
    runs: Runs,
    ctx: Arc<J::Context>,
) -> Result<Value, BoxDynError> {
    let id = task_id.to_string();
    let span = job.span(&id);
    let started = std::time::Instant::now();
    // One run per job in this process at a time, and a run finishes even if apalis drops this
    // future (a worker restarted after a database outage, whose jobs the next instance rescues):
    // the rescue then waits for it and finds the work done instead of doing it again.
    let guard = ctx.in_flight().enter(&id).await;
    // Boxed where it is made, and instrumented inside: each move of a run's future copies all of
    // it (~11 KB for an email), so it is moved once.
    let run = {
        let (ctx, id, span) = (Arc::clone(&ctx), id.clone(), span.clone());
        FinishOnDrop::from_box(Box::pin(async move {
            let _guard = guard;
            job.run(id, runs, ctx).instrument(span).await
        }))
    };
    let outcome = run.await.unwrap_or_else(|panic| Outcome::Retry {
        after: Duration::from_secs(1),
        error: format!("the run panicked: {}", panic_text(&panic)),
    });
    let label = match &outcome {
        Outcome::Done(_) => "succeeded",
        Outcome::Hold { .. } => "held",
        Outcome::Retry { .. } | Outcome::Fatal(_) => "failed",
    };
    ctx.metrics()
        .job_duration
        .get_or_create(&QueueOutcome {
            queue: J::QUEUE.into(),
            outcome: label.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    apply(ctx.pool(), &id, outcome)
        .instrument(span)
        .await
        .map_err(|e| Box::new(e) as BoxDynError)
}

/// Runs a future in the task that polls it, and, if that task drops it before it finishes (apalis
/// dropping a handler when its worker restarts), lets it finish as a task of its own. A
/// `tokio::spawn` per run gave the same guarantee at about 5 % of the email path's rate (measured,
/// docs/performance-log.md); this costs one box and no scheduling until it is needed.
struct FinishOnDrop<T: Send + 'static> {
    run: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    #[cfg(test)]
    fn new(run: impl Future<Output = T> + Send + 'static) -> Self {
        Self::from_box(Box::pin(run))
    }

    fn from_box(run: Pin<Box<dyn Future<Output = T> + Send>>) -> Self {
        Self { run: Some(run) }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    /// The run's output, or its panic.
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Taken out while polled: a run that panics is dropped by the unwinding, never detached.
        let Some(mut run) = self.run.take() else {
            return Poll::Pending;
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => {
                self.run = Some(run);
                Poll::Pending
            }
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            // No runtime (the process is ending): nothing can finish it.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = AssertUnwindSafe(run).catch_unwind().await;
                });
            }
        }
    }
}

/// A panic's message, where it has one.
fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// How long the adapter's own queue update may take before the run's answer goes to apalis anyway.
const STEER_BOUND: Duration = Duration::from_secs(2);

/// Applies an outcome: the queue's next step for the job, then the answer apalis records.
async fn apply(pool: &PgPool, id: &str, outcome: Outcome) -> Result<Value, RunFailed> {
    match outcome {
        Outcome::Done(value) => Ok(value),
        Outcome::Retry { after, error } => {
            let next = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            // If this fails, apalis fetches the job again at once: a retry sooner, never a loss.
            steer(pool, id, "reschedule", async |conn| {
                jobs::reschedule_running(conn, id, next).await
            })
            .await;
            Err(RunFailed(error))
        }
        Outcome::Hold { until, reason } => {
            let held = steer(pool, id, "hold", async |conn| {
                jobs::hold_running(conn, id, until).await
            })
            .await;
            if held {
                // apalis's own record of this run finds the job no longer locked by its worker and
                // changes nothing: no attempt used, no failed run.
                Ok(json!({"held_until": until, "reason": reason}))
            } else {
                // Could not hold: a failed run, retried at once; the next run holds again.
                Err(RunFailed(reason))
            }
        }
        Outcome::Fatal(error) => {
            steer(pool, id, "end", async |conn| {
                jobs::finish_after_this_run(conn, id).await
            })
            .await;
            Err(RunFailed(error))
        }
    }
}

/// One bounded queue update; says whether it happened.
async fn steer(
    pool: &PgPool,
    id: &str,
    what: &str,
    update: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<(), jobs::JobError>,
) -> bool {
    let attempt = async {
        let mut conn = pool.acquire().await?;
        update(&mut conn).await
    };
    match tokio::time::timeout(STEER_BOUND, attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(job_id = id, %error, "cannot {what} the job");
            false
        }
        Err(_) => {
            tracing::warn!(job_id = id, "cannot {what} the job in time");
            false
        }
    }
}

/// What [`drain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Runs that ended the job (done, or failed for good).
    pub finished: usize,
    /// Runs that asked for another run later (retry or hold).
    pub deferred: usize,
}

/// Runs every due job of `J`'s queue in this task, one at a time, until none is due: the
/// deterministic way for tests to get work done, without apalis's polling and without sleeping.
/// Jobs scheduled for later (a backoff, a hold) are left for later. Each run goes through the
/// same [`apply`] as [`handle`].
pub async fn drain<J: HeraldJob>(ctx: Arc<J::Context>) -> Result<Drained, jobs::JobError> {
    let worker = format!("herald-drain-{}", ulid::Ulid::generate());
    let mut drained = Drained::default();
    {
        let mut conn = ctx.pool().acquire().await?;
        jobs::register_worker(&mut conn, &worker, J::QUEUE).await?;
    }
    loop {
        let due = {
            let mut conn = ctx.pool().acquire().await?;
            jobs::take_due(&mut conn, &worker, J::QUEUE, 1).await?
        };
        let Some(job) = due.into_iter().next() else {
            return Ok(drained);
        };
        let runs = Runs {
            this: u32::try_from(job.attempts + 1).unwrap_or(1),
            allowed: u32::try_from(job.max_attempts).unwrap_or(1),
        };
        let outcome = match serde_json::from_slice::<J>(&job.payload) {
            Ok(payload) => {
                let span = payload.span(&job.id);
                payload
                    .run(job.id.clone(), runs, Arc::clone(&ctx))
                    .instrument(span)
                    .await
            }
            Err(err) => Outcome::Fatal(format!("cannot decode the job: {err}")),
        };
        let ends = match &outcome {
            Outcome::Done(_) | Outcome::Fatal(_) => true,
            Outcome::Retry { .. } => runs.is_last(),
            Outcome::Hold { .. } => false,
        };
        let answer = apply(ctx.pool(), &job.id, outcome).await;
        let mut conn = ctx.pool().acquire().await?;
        let attempt = i32::try_from(runs.this).unwrap_or(i32::MAX);
        match &answer {
            Ok(value) => jobs::record_run(&mut conn, &job.id, &worker, attempt, Ok(value)).await?,
            Err(error) => {
                let text = error.to_string();
                jobs::record_run(&mut conn, &job.id, &worker, attempt, Err(&text)).await?;
            }
        }
        if ends {
            drained.finished += 1;
        } else {
            drained.deferred += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FinishOnDrop, Runs};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_run_dropped_by_its_handler_still_finishes() {
        let finished = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let run = FinishOnDrop::new({
            let finished = Arc::clone(&finished);
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(50)).await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        let handler = tokio::spawn(run);
        started.await.expect("the run started");
        handler.abort();
        assert!(handler.await.is_err_and(|e| e.is_cancelled()));
        assert!(!finished.load(Ordering::SeqCst), "finished before the drop");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the dropped run did not finish"
        );
    }

    #[tokio::test]
    async fn a_run_that_panics_answers_the_panic_and_is_not_run_again() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let run = FinishOnDrop::new({
            let polls = Arc::clone(&polls);
            async move {
                polls.fetch_add(1, Ordering::SeqCst);
                panic!("boom");
            }
        });
        let answer = run.await;
        let panic = answer.expect_err("the panic was not caught");
        assert_eq!(super::panic_text(&*panic), "boom");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_last_run_is_the_one_that_reaches_the_budget() {
        assert!(
            !Runs {
                this: 1,
                allowed: 8
            }
            .is_last()
        );
        assert!(
            Runs {
                this: 8,
                allowed: 8
            }
            .is_last()
        );
        assert!(
            Runs {
                this: 1,
                allowed: 1
            }
            .is_last()
        );
    }
}
