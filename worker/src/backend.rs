//! The email queue's apalis backend: apalis-postgres's own SQL driven by apalis's own state
//! machine (`Persisted`), with the two waits taken off the worker's loop. apalis-postgres's
//! backend flushes acks inside `poll_ready`, during which the loop pulls nothing, and fetches the
//! next batch only once the last one is handed out; each batch paid both in series
//! (docs/performance-log.md). Here the acks go to a flusher task of their own (bounded: the loop waits
//! only when the flusher is that far behind), and the next batch is fetched while the current one
//! runs. A crash loses nothing either way: an unflushed ack leaves its job locked by a worker
//! whose heartbeat stops, and apalis hands it out again (the ledger makes the rerun send nothing).
//!
//! About 525 lines on purpose (with tests): the fetch-ahead, the flusher and the hand-back on
//! a stop share one state machine and must be read together to see that no job is lost.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_codec::json::JsonCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::worker::context::WorkerContext;
use apalis_postgres::{Config, Error, PgTask, queries};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use ulid::Ulid;

/// A backend like `apalis_postgres::PostgresStorage` whose acks and next fetch do not hold up the
/// worker's loop.
pub struct PipelinedStorage<Args> {
    persistence: Persisted<Pipelined>,
    codec: JsonCodec,
    closing: Option<BoxFuture<'static, Result<(), Error>>>,
    _marker: PhantomData<Args>,
}

impl<Args> std::fmt::Debug for PipelinedStorage<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelinedStorage")
            .field("queue", &self.persistence.config.queue)
            .finish_non_exhaustive()
    }
}

impl<Args> PipelinedStorage<Args> {
    /// A backend for `config`'s queue on `pool`; starts its ack flusher, which leaves out the jobs
    /// `acked` says were recorded already.
    pub fn new(pool: &PgPool, config: Config, acked: Arc<AckedJobs>) -> Self {
        Self {
            persistence: Persisted::new(Pipelined::new(pool.clone(), config, acked)),
            codec: JsonCodec::default(),
            closing: None,
            _marker: PhantomData,
        }
    }
}

impl<Args> Backend for PipelinedStorage<Args> {
    type Task = PgTask;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        let heartbeat = self.persistence.config.heartbeat_interval;
        self.persistence.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<PgTask, Error>>> {
        self.persistence.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        if self.closing.is_none() {
            // apalis's own close first: its buffer back to the queue, its last events handed over.
            match self.persistence.poll_close(cx, worker) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let inner = Pipelined::clone(&self.persistence);
            let worker = worker.clone();
            self.closing = Some(async move { inner.close(&worker).await }.boxed());
        }
        match self.closing.as_mut().map(|f| f.poll_unpin(cx)) {
            Some(Poll::Ready(result)) => {
                self.closing = None;
                Poll::Ready(result)
            }
            Some(Poll::Pending) | None => Poll::Pending,
        }
    }
}

impl<Args> BackendConfig for PipelinedStorage<Args> {
    type Args = Args;
    type Kind = Durable;
    type Id = Ulid;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        &self.persistence.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let (batch, persist, lock) = {
            let c = &self.persistence.config;
            (c.batch_size, c.persist_results, c.lock_tasks)
        };
        self.persistence
            .layer(JsonCodec::<Value>::default(), batch)
            .persist_results(persist)
            .lock_tasks(lock)
    }
}

impl<Args> WireFormatBackend for PipelinedStorage<Args> {
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonCodec {
        &self.codec
    }
}

/// The next batch, being fetched.
type Prefetch = tokio::task::JoinHandle<Result<Vec<PgTask>, Error>>;

/// The persistence `Persisted` drives: apalis-postgres's queries, the fetch one batch ahead and
/// the acks through [`Acks`]. Clones share the prefetch and the flusher.
#[derive(Debug, Clone)]
pub struct Pipelined {
    pool: PgPool,
    config: Config,
    prefetch: Arc<Mutex<Option<Prefetch>>>,
    acks: Acks,
}

impl Pipelined {
    fn new(pool: PgPool, config: Config, acked: Arc<AckedJobs>) -> Self {
        let acks = Acks::start(pool.clone(), config.batch_size, acked);
        Self {
            pool,
            config,
            prefetch: Arc::default(),
            acks,
        }
    }

    async fn fetch(
        pool: &PgPool,
        config: &Config,
        worker: &WorkerContext,
    ) -> Result<Vec<PgTask>, Error> {
        let mut tx = pool.begin().await?;
        let tasks = queries::fetch_next(&mut *tx, config, worker).await?;
        tx.commit().await?;
        Ok(tasks)
    }

    /// Everything this backend holds goes back or out: the prefetched batch to the queue, the
    /// acks to the database.
    async fn close(&self, worker: &WorkerContext) -> Result<(), Error> {
        let pending = self.prefetch.lock().await.take();
        if let Some(handle) = pending {
            let tasks = joined(handle.await)?;
            if !tasks.is_empty() {
                self.clone().reenqueue_abandoned(tasks, worker).await?;
            }
        }
        self.acks.flushed().await;
        Ok(())
    }
}

fn joined(
    result: Result<Result<Vec<PgTask>, Error>, tokio::task::JoinError>,
) -> Result<Vec<PgTask>, Error> {
    result
        .map_err(|e| Error::Database(sqlx::Error::Protocol(format!("the prefetch stopped: {e}"))))?
}

impl Persistence for Pipelined {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = Error;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.to_string();
        let dead_for = self.config.orphaned_duration().as_secs();
        let mut tx = self.pool.begin().await?;
        queries::reenqueue_orphaned(&mut *tx, &queue, dead_for).await?;
        herald_shared::jobs::register_worker(&mut tx, worker.name(), &queue)
            .await
            .map_err(|e| Error::Database(e.into_sqlx()))?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.to_string();
        let dead_for = self.config.orphaned_duration().as_secs();
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, &queue, worker).await?;
        queries::reenqueue_orphaned(&mut *tx, &queue, dead_for).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The batch fetched ahead if there is one (a fresh fetch if it came back empty: the queue
    /// may have filled since), and, after a full batch, the next one started while this one runs.
    /// A short batch emptied the queue: fetching ahead then would only find nothing, and a
    /// notification arriving meanwhile would wait for the interval poll.
    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<PgTask>, Error> {
        // Held across the wait: if apalis drops this future (closing), the batch stays here for
        // `close` to put back.
        let mut slot = self.prefetch.lock().await;
        let ahead = match slot.as_mut() {
            Some(handle) => {
                let tasks = joined(handle.await);
                *slot = None;
                Some(tasks?)
            }
            None => None,
        };
        let tasks = match ahead {
            Some(tasks) if !tasks.is_empty() => tasks,
            _ => Self::fetch(&self.pool, &self.config, worker).await?,
        };
        if tasks.len() >= self.config.batch_size {
            let (pool, config, worker) = (self.pool.clone(), self.config.clone(), worker.clone());
            *slot = Some(tokio::spawn(async move {
                Self::fetch(&pool, &config, &worker).await
            }));
        }
        Ok(tasks)
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<PgTask>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.task_id().map(ToString::to_string))
            .collect();
        let queue = self.config.queue.to_string();
        let mut tx = self.pool.begin().await?;
        let count = queries::reenqueue_abandoned(&mut *tx, &queue, worker.name(), &ids).await?;
        tx.commit().await?;
        Ok(count)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        self.acks.send(events, worker.name()).await;
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<PgTask>) -> Result<(), Error> {
        let queue = self.config.queue.to_string();
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, &queue, tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Jobs whose successful run was recorded together with their email's `sent` write
/// (`ledger::mark_sent_and_record_runs`): their acks are left out of the flusher's writes. An id is taken
/// out when its ack arrives; one whose ack never comes (its run was dropped) is forgotten when the
/// set is full, which costs at most a redundant ack, never a lost one.
#[derive(Debug, Default)]
pub struct AckedJobs(std::sync::Mutex<HashSet<String>>);

/// How many recorded jobs [`AckedJobs`] remembers before it starts over.
const ACKED_CAPACITY: usize = 65_536;

impl AckedJobs {
    /// Notes jobs whose successful run is recorded.
    pub fn insert(&self, ids: impl IntoIterator<Item = String>) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.len() >= ACKED_CAPACITY {
            set.clear();
        }
        set.extend(ids);
    }

    /// Drops the completions of recorded jobs from `events` (and forgets those jobs).
    fn remove_recorded(&self, events: &mut Vec<TaskEvent<Value>>) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.is_empty() {
            return;
        }
        events.retain(|event| match event {
            TaskEvent::Complete(result) => !set.remove(&result.task_id().to_string()),
            _ => true,
        });
    }

    /// How many recorded jobs still wait for their ack.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no recorded job waits for its ack.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the flusher receives.
enum Message {
    Events {
        events: Vec<TaskEvent<Value>>,
        worker: String,
        room: OwnedSemaphorePermit,
    },
    Flushed(oneshot::Sender<()>),
}

/// The ack flusher's handle: events in, written in one transaction per round, in arrival order.
#[derive(Debug, Clone)]
struct Acks {
    tx: mpsc::UnboundedSender<Message>,
    room: Arc<Semaphore>,
    capacity: u32,
}

/// How long a flusher whose backend is gone keeps retrying before its jobs are left to the
/// orphan rescue (which reruns them; the ledger keeps a rerun from sending).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

impl Acks {
    fn start(pool: PgPool, batch_size: usize, acked: Arc<AckedJobs>) -> Self {
        let capacity = u32::try_from(batch_size.saturating_mul(8).max(256)).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flush_loop(pool, rx, acked));
        Self {
            tx,
            room: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Hands `events` over; waits only while the flusher is `capacity` events behind.
    async fn send(&self, events: Vec<TaskEvent<Value>>, worker: &str) {
        let wanted = u32::try_from(events.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let Ok(room) = Arc::clone(&self.room).acquire_many_owned(wanted).await else {
            return;
        };
        let _ = self.tx.send(Message::Events {
            events,
            worker: worker.to_owned(),
            room,
        });
    }

    /// Waits until everything handed over before this call is written (or given up).
    async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flushed(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn flush_loop(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Message>, acked: Arc<AckedJobs>) {
    while let Some(first) = rx.recv().await {
        let mut round = vec![first];
        while let Ok(more) = rx.try_recv() {
            round.push(more);
        }
        let mut by_worker: Vec<(String, Vec<TaskEvent<Value>>)> = Vec::new();
        let mut waiters = Vec::new();
        let mut rooms = Vec::new();
        for message in round {
            match message {
                Message::Events {
                    mut events,
                    worker,
                    room,
                } => {
                    rooms.push(room);
                    acked.remove_recorded(&mut events);
                    match by_worker.iter_mut().find(|(w, _)| *w == worker) {
                        Some((_, all)) => all.extend(events),
                        None => by_worker.push((worker, events)),
                    }
                }
                Message::Flushed(waiter) => waiters.push(waiter),
            }
        }
        for (worker, events) in &by_worker {
            write_retrying(&pool, events, worker, &rx).await;
        }
        drop(rooms);
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

/// Writes one round, retrying with a capped backoff: acks are not dropped because the database
/// blinked. A flusher whose backend is gone gives up after [`GIVE_UP_AFTER`].
async fn write_retrying(
    pool: &PgPool,
    events: &[TaskEvent<Value>],
    worker: &str,
    rx: &mpsc::UnboundedReceiver<Message>,
) {
    let mut delay = Duration::from_millis(50);
    let mut orphaned_since: Option<std::time::Instant> = None;
    loop {
        match write(pool, events, worker).await {
            Ok(()) => return,
            Err(error) => {
                if rx.is_closed() {
                    let since = *orphaned_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER {
                        tracing::error!(%error, events = events.len(), "acks not written; the orphan rescue will rerun their jobs");
                        return;
                    }
                }
                tracing::warn!(%error, events = events.len(), "cannot write acks; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// apalis-postgres's own event handling: results of finished runs, locks of the others.
async fn write(pool: &PgPool, events: &[TaskEvent<Value>], worker: &str) -> Result<(), Error> {
    let results: Vec<&queries::ResultPayload> = events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Complete(result) => Some(result),
            _ => None,
        })
        .collect();
    let done: HashSet<String> = results.iter().map(|r| r.task_id().to_string()).collect();
    let locks: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Lock { task_id } => Some(task_id.to_string()),
            _ => None,
        })
        .filter(|id| !done.contains(id))
        .collect();
    if results.is_empty() && locks.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    if !results.is_empty() {
        queries::handle_results(&mut *tx, &results, worker).await?;
    }
    if !locks.is_empty() {
        queries::lock_tasks(&mut *tx, &locks, worker).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{AckedJobs, TaskEvent};
    use apalis_core::backend::TaskResult;
    use apalis_core::task::status::Status;
    use apalis_core::task::task_id::TaskId;
    use ulid::Ulid;

    fn complete(id: Ulid) -> TaskEvent<serde_json::Value> {
        TaskEvent::Complete(TaskResult {
            task_id: TaskId::from(id),
            attempt: 1,
            status: Status::Done,
            result: Ok(serde_json::Value::Null),
        })
    }

    #[test]
    fn recorded_jobs_leave_the_acks_once_and_others_stay() {
        let (recorded, other) = (Ulid::generate(), Ulid::generate());
        let acked = AckedJobs::default();
        acked.insert([recorded.to_string()]);
        let mut events = vec![complete(recorded), complete(other)];
        acked.remove_recorded(&mut events);
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], TaskEvent::Complete(r) if r.task_id().to_string() == other.to_string())
        );
        assert!(acked.is_empty());
        // A second ack for the same job (a rerun) is written again.
        let mut again = vec![complete(recorded)];
        acked.remove_recorded(&mut again);
        assert_eq!(again.len(), 1);
    }
}
