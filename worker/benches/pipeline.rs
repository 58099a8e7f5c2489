//! Herald's pipeline against raw apalis on the same machine and database, in one run.
//!
//! `DATABASE_URL=postgres://… cargo bench -p herald-worker --bench pipeline` (scripts/bench.sh sets it
//! up). It creates and drops its own database, runs the API in-process and a local SES stub, and prints:
//! - API `POST /v1/emails` rate and p50/p99 latency vs raw concurrent apalis pushes;
//! - email-job drain rate (SES stub) vs a raw apalis no-op drain, same batch size and concurrency;
//! - idle pick-up latency (commit to SES call) vs raw apalis (push to handler).
//!
//! Sizes: BENCH_PUSHES (2000), BENCH_JOBS (3000), BENCH_PICKUPS (30), BENCH_BATCH (100),
//! BENCH_CONCURRENCY (32), BENCH_CLIENTS (16).

#[path = "common/mod.rs"]
mod common;

use common::BenchDb;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_postgres::{Config as QueueConfig, PostgresStorage, Pubsub};
use herald_shared::email::{self, Category, EmailContent, EmailJob};
use herald_shared::jobs::EnqueueOptions;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Mutex, oneshot};

const TOKEN: &str = "bench-token-0123456789abcdef0123456789";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    what: &'static str,
    herald: String,
    baseline: String,
    ratio: String,
}

/// The SES v2 SendEmail API, answered at once; it records when each call arrived.
async fn ses_stub(calls: Arc<Mutex<Vec<Instant>>>) -> String {
    use axum::routing::post;
    let counter = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/v2/email/outbound-emails",
        post(move || {
            let calls = calls.clone();
            let counter = counter.clone();
            async move {
                calls.lock().await.push(Instant::now());
                let n = counter.fetch_add(1, Ordering::Relaxed);
                axum::Json(serde_json::json!({"MessageId": format!("stub-{n}")}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stub");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("stub") });
    format!("http://{addr}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop(u64);

async fn noop(_job: Noop) -> Result<(), BoxDynError> {
    Ok(())
}

async fn count_done(pool: &PgPool, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'")
        .bind(queue)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn wait_done(pool: &PgPool, queue: &str, n: i64) {
    let limit = Instant::now() + Duration::from_secs(600);
    while count_done(pool, queue).await < n {
        assert!(Instant::now() < limit, "queue {queue} did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn queue_config(queue: &str, batch: usize) -> QueueConfig {
    QueueConfig::default()
        .queue(queue)
        .batch_size(batch)
        .heartbeat_interval(Duration::from_secs(5))
        .missed_heartbeats(3)
}

/// A plain apalis worker with LISTEN/NOTIFY, the given batch size and concurrency, and a no-op handler.
fn raw_worker(
    pool: &PgPool,
    queue: &'static str,
    batch: usize,
    concurrency: usize,
) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    let pool = pool.clone();
    tokio::spawn(async move {
        Monitor::new()
            .register(move |_| {
                let backend = PostgresStorage::<Noop>::new(&pool)
                    .with_config(queue_config(queue, batch))
                    .poll_with_strategy(
                        Strategy::new()
                            .stream(Pubsub::new(pool.clone(), queue.to_owned()))
                            .interval(Duration::from_secs(1)),
                    );
                WorkerBuilder::new(format!("bench-noop-{}", ulid::Ulid::generate()))
                    .backend(backend)
                    .concurrency(concurrency)
                    .build(noop)
            })
            .run_with_signal(async move {
                let _ = rx.await;
                Ok(())
            })
            .await
            .expect("raw worker");
    });
    tx
}

async fn push_raw(pool: &PgPool, queue: &str, n: u64) {
    let mut conn = pool.acquire().await.expect("conn");
    let task = TaskBuilder::new(serde_json::to_vec(&Noop(n)).expect("json"))
        .task_id(TaskId::from_ulid(ulid::Ulid::generate()))
        .max_attempts(3)
        .build();
    apalis_postgres::queries::push_tasks(&mut *conn, queue, vec![task])
        .await
        .expect("push");
}

fn email(i: usize) -> EmailJob {
    EmailJob {
        to: format!("bench-{i}@example.com"),
        category: Category::Transactional,
        content: EmailContent::Raw {
            subject: "Bench".into(),
            text: Some("Hello".into()),
            html: None,
        },
    }
}

#[tokio::main]
async fn main() {
    let pushes = env_usize("BENCH_PUSHES", 2000);
    let jobs = env_usize("BENCH_JOBS", 3000);
    let pickups = env_usize("BENCH_PICKUPS", 30);
    let batch = env_usize("BENCH_BATCH", 100);
    let concurrency = env_usize("BENCH_CONCURRENCY", 32);
    let clients = env_usize("BENCH_CLIENTS", 16);

    let db = BenchDb::create("pipeline", 60).await;
    let (pool, url, version) = (db.pool.clone(), db.url.clone(), db.version.clone());
    println!(
        "Herald pipeline benchmark: PostgreSQL {version}, {} cores, pushes={pushes} jobs={jobs} batch={batch} concurrency={concurrency} clients={clients}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut rows = Vec::new();

    // 1. Enqueue: the API over HTTP vs raw concurrent apalis pushes.
    let api_config = herald_api::ApiConfig::from_source(&[
        ("API_TOKEN", TOKEN),
        ("API_ADDR", "127.0.0.1:0"),
        ("FRONTEND_URL", "https://app.example.com"),
        ("EMAIL_FROM", "noreply@herald.test"),
        ("DATABASE_URL", url.as_str()),
    ])
    .expect("api config");
    let app = herald_api::Application::build(api_config, pool.clone())
        .await
        .expect("api");
    let api_url = format!("http://{}", app.local_addr().expect("addr"));
    tokio::spawn(app.serve(std::future::pending()));
    let http = reqwest::Client::new();
    let timed = |lat: Vec<Duration>, elapsed: Duration| {
        let mut lat = lat;
        lat.sort();
        (
            lat.len() as f64 / elapsed.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
        )
    };
    let run_clients = |f: Arc<
        dyn Fn(usize) -> futures::future::BoxFuture<'static, ()> + Send + Sync,
    >| async move {
        let per = pushes / clients;
        let start = Instant::now();
        let mut handles = Vec::new();
        for c in 0..clients {
            let f = f.clone();
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    f(c * per + i).await;
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("client"));
        }
        (all, start.elapsed())
    };
    let raw_pool = pool.clone();
    let (raw_lat, raw_time) = run_clients(Arc::new(move |i| {
        let pool = raw_pool.clone();
        Box::pin(async move { push_raw(&pool, "bench.push", i as u64).await })
    }))
    .await;
    let (api_lat, api_time) = run_clients(Arc::new(move |i| {
        let http = http.clone();
        let url = format!("{api_url}/v1/emails");
        Box::pin(async move {
            let res = http
                .post(&url)
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"to": format!("api-{i}@example.com"), "subject": "Bench", "text": "Hello"}))
                .send()
                .await
                .expect("post");
            assert_eq!(res.status(), 202);
        })
    }))
    .await;
    let (raw_rate, raw_p50, raw_p99) = timed(raw_lat, raw_time);
    let (api_rate, api_p50, api_p99) = timed(api_lat, api_time);
    rows.push(Row {
        what: "enqueue rate (POST /v1/emails vs apalis push)",
        herald: format!("{api_rate:.0}/s"),
        baseline: format!("{raw_rate:.0}/s"),
        ratio: format!("{:.2}", api_rate / raw_rate),
    });
    rows.push(Row {
        what: "enqueue latency p50",
        herald: ms(api_p50),
        baseline: ms(raw_p50),
        ratio: format!("{:.2}", api_p50.as_secs_f64() / raw_p50.as_secs_f64()),
    });
    rows.push(Row {
        what: "enqueue latency p99",
        herald: ms(api_p99),
        baseline: ms(raw_p99),
        ratio: format!("{:.2}", api_p99.as_secs_f64() / raw_p99.as_secs_f64()),
    });
    // Those API jobs are not drained here; clear them so the drain below starts from an empty queue.
    sqlx::query("DELETE FROM apalis.jobs")
        .execute(&pool)
        .await
        .expect("clear");
    sqlx::query("DELETE FROM email_deliveries")
        .execute(&pool)
        .await
        .expect("clear");

    // 2. Drain: raw no-op jobs vs Herald email jobs against the SES stub, same batch and concurrency.
    for i in 0..jobs {
        push_raw(&pool, "bench.noop", i as u64).await;
    }
    let start = Instant::now();
    let stop_raw = raw_worker(&pool, "bench.noop", batch, concurrency);
    wait_done(&pool, "bench.noop", jobs as i64).await;
    let raw_drain = jobs as f64 / start.elapsed().as_secs_f64();
    let _ = stop_raw.send(());

    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stub = ses_stub(calls.clone()).await;
    let mut tx = pool.begin().await.expect("tx");
    for i in 0..jobs {
        email::enqueue(
            &mut tx,
            &email(i),
            EnqueueOptions {
                max_attempts: 3,
                run_at: None,
            },
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let worker_env: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", url.as_str()),
        ("EMAIL_FROM", "noreply@herald.test"),
        ("FRONTEND_URL", "https://app.example.com"),
        ("WORKER_BATCH_SIZE", &batch.to_string()),
        ("WORKER_CONCURRENCY", &concurrency.to_string()),
        ("SES_MAX_SEND_RATE", "1000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = herald_worker::WorkerConfig::from_source(&worker_env).expect("worker config");
    // SAFETY-free: the SDK reads its endpoint and credentials from these variables.
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&stub)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sesv2::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    let ctx = Arc::new(herald_worker::email_job::EmailContext {
        pool: pool.clone(),
        sender: herald_worker::ses::SesSender::new(
            aws_sdk_sesv2::Client::new(&aws),
            "noreply@herald.test".into(),
            None,
        ),
        frontend_url: config.frontend_url.clone(),
        send_rate: 1_000_000.0,
        backoff_base: config.backoff_base,
        backoff_max: config.backoff_max,
        pause: config.pause,
        slots: Default::default(),
        metrics: Default::default(),
        compliance_recheck: std::time::Duration::from_millis(500),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let start = Instant::now();
    let worker = tokio::spawn(herald_worker::run(config, pool.clone(), ctx, async move {
        let _ = stop_rx.await;
    }));
    wait_done(&pool, email::EMAIL_QUEUE, jobs as i64).await;
    let herald_drain = jobs as f64 / start.elapsed().as_secs_f64();
    let sent = calls.lock().await.len();
    assert_eq!(sent, jobs, "every email job called SES exactly once");
    rows.push(Row {
        what: "drain rate (email via SES stub vs no-op)",
        herald: format!("{herald_drain:.0}/s"),
        baseline: format!("{raw_drain:.0}/s"),
        ratio: format!("{:.2}", herald_drain / raw_drain),
    });

    // 3. Idle pick-up: one job at a time into an idle queue.
    let mut herald_lat = Vec::new();
    for i in 0..pickups {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = calls.lock().await.len();
        let mut tx = pool.begin().await.expect("tx");
        email::enqueue(
            &mut tx,
            &email(jobs + i),
            EnqueueOptions {
                max_attempts: 3,
                run_at: None,
            },
        )
        .await
        .expect("enqueue");
        let t = Instant::now();
        tx.commit().await.expect("commit");
        loop {
            let c = calls.lock().await;
            if c.len() > before {
                herald_lat.push(c[before].saturating_duration_since(t));
                break;
            }
            drop(c);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let _ = stop_tx.send(());
    let _ = worker.await;

    // The same for raw apalis: push, then wait for the job to be Done (an upper bound for pick-up).
    let stop_raw = raw_worker(&pool, "bench.idle", batch, concurrency);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut raw_lat = Vec::new();
    for i in 0..pickups {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let t = Instant::now();
        push_raw(&pool, "bench.idle", i as u64).await;
        while count_done(&pool, "bench.idle").await < (i + 1) as i64 {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        raw_lat.push(t.elapsed());
    }
    let _ = stop_raw.send(());
    herald_lat.sort();
    raw_lat.sort();
    rows.push(Row {
        what: "idle pick-up p50 (commit to SES call / to Done)",
        herald: ms(percentile(&herald_lat, 0.5)),
        baseline: ms(percentile(&raw_lat, 0.5)),
        ratio: format!(
            "{:.2}",
            percentile(&herald_lat, 0.5).as_secs_f64() / percentile(&raw_lat, 0.5).as_secs_f64()
        ),
    });
    rows.push(Row {
        what: "idle pick-up p99",
        herald: ms(percentile(&herald_lat, 0.99)),
        baseline: ms(percentile(&raw_lat, 0.99)),
        ratio: format!(
            "{:.2}",
            percentile(&herald_lat, 0.99).as_secs_f64() / percentile(&raw_lat, 0.99).as_secs_f64()
        ),
    });

    println!("\n| measure | Herald | raw apalis | Herald / raw |\n|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what, r.herald, r.baseline, r.ratio
        );
    }
    db.drop_db().await;
}
