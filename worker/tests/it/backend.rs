//! The email queue's backend (`herald_worker::backend::PipelinedStorage`): what it holds ahead of
//! the worker (a fetched batch, unwritten acks) is back in the queue or written when it stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::task::builder::TaskBuilder;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::helpers::setup_queue;

const QUEUE: &str = "herald-backend-test";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe(u64);

async fn slow(_job: Probe, ran: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
    tokio::time::sleep(Duration::from_millis(15)).await;
    ran.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn push(pool: &PgPool, n: u64) {
    let tasks = (0..n)
        .map(|i| {
            TaskBuilder::new(serde_json::to_vec(&Probe(i)).expect("json"))
                .max_attempts(3)
                .build()
        })
        .collect();
    let mut conn = pool.acquire().await.expect("conn");
    apalis_postgres::queries::push_tasks(&mut *conn, QUEUE, tasks)
        .await
        .expect("push");
}

async fn count(pool: &PgPool, statuses: &[&str]) -> i64 {
    let statuses: Vec<String> = statuses.iter().map(|s| (*s).to_owned()).collect();
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = ANY($2)")
        .bind(QUEUE)
        .bind(&statuses)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A worker on `email_backend` over [`QUEUE`] running [`slow`]; the sender stops it.
fn start(
    pool: &PgPool,
    batch: usize,
    concurrency: usize,
    ran: &Arc<AtomicUsize>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), MonitorError>>,
) {
    let config = apalis_postgres::Config::default()
        .queue(QUEUE)
        .batch_size(batch)
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(60);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (pool, ran) = (pool.clone(), ran.clone());
    let monitor = tokio::spawn(
        Monitor::new()
            .shutdown_timeout(Duration::from_secs(10))
            .register(move |_| {
                WorkerBuilder::new(format!("backend-test-{}", ulid::Ulid::generate()))
                    .backend(herald_worker::email_backend::<Probe>(
                        &pool,
                        QUEUE,
                        config.clone(),
                        Duration::from_millis(100),
                        Default::default(),
                    ))
                    .concurrency(concurrency)
                    .data(ran.clone())
                    .build(slow)
            })
            .run_with_signal(async move {
                let _ = stopped.await;
                Ok(())
            }),
    );
    (stop, monitor)
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_stopped_worker_puts_back_the_batch_it_fetched_ahead_and_writes_every_ack(pool: PgPool) {
    setup_queue(&pool).await;
    let total = 120;
    push(&pool, total).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let (stop, monitor) = start(&pool, 10, 4, &ran);
    let limit = Instant::now() + Duration::from_secs(30);
    while ran.load(Ordering::SeqCst) < 30 {
        assert!(Instant::now() < limit, "the worker ran nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), monitor)
        .await
        .expect("the worker stops")
        .expect("monitor task")
        .expect("monitor ran");

    let ran = ran.load(Ordering::SeqCst) as i64;
    assert!(
        ran < total as i64,
        "stopped too late to test anything: all {ran} ran"
    );
    // A worker whose heartbeat outlives the test (60 missed beats): nothing here is rescued as an
    // orphan, so every job is where this backend left it.
    assert_eq!(
        count(&pool, &["Queued", "Running"]).await,
        0,
        "jobs left locked by the stopped worker"
    );
    assert_eq!(
        count(&pool, &["Done"]).await,
        ran,
        "a finished run without its ack"
    );
    assert_eq!(count(&pool, &["Pending"]).await, total as i64 - ran);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn every_job_runs_once_through_the_pipelined_backend(pool: PgPool) {
    setup_queue(&pool).await;
    let total = 300;
    push(&pool, total).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let (stop, monitor) = start(&pool, 7, 16, &ran);
    let limit = Instant::now() + Duration::from_secs(60);
    while count(&pool, &["Done"]).await < total as i64 {
        assert!(Instant::now() < limit, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), monitor).await;
    assert_eq!(
        ran.load(Ordering::SeqCst),
        total as usize,
        "a job ran twice"
    );
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND attempts <> 1",
    )
    .bind(QUEUE)
    .fetch_one(&pool)
    .await
    .expect("attempts");
    assert_eq!(attempts, 0, "a job recorded other than one run");
}
