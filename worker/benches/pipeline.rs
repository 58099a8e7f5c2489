//! Herald's pipeline against raw apalis and pgbench on the same machine and database, in one run.
//!
//! `DATABASE_URL=postgres://… cargo bench -p herald-worker --bench pipeline` (scripts/bench.sh sets
//! it up, with PGBENCH). It creates and drops its own database, runs the API in-process (or, with
//! BENCH_API=process as scripts/bench.sh sets it, the release `herald-api` binary), the real
//! `herald-worker` binary against a local SES stub, and prints:
//! - API `POST /v1/emails` rate and p50/p99 latency vs raw concurrent apalis pushes, closed loop
//!   and open loop at half the maximum;
//! - `POST /v1/emails/batch` vs apalis's own bulk push;
//! - no-op drain through Herald's queue backend vs raw apalis, same batch size and concurrency
//!   (alternating rounds, medians);
//! - the full email path (worker binary, SES stub) vs `pgbench -N` TPS on the same server, at the
//!   drain's modest batch and concurrency and at a throughput setting (BENCH_EMAIL_BATCH 500,
//!   BENCH_EMAIL_CONCURRENCY 256: the `email_path_vs_pgbench` key), BENCH_EMAIL_JOBS (20000)
//!   emails each;
//! - the worker's memory idle and under load;
//! - idle pick-up latency (commit to SES call) vs raw apalis (push to Done).
//!
//! Sizes: BENCH_PUSHES (4000), BENCH_JOBS (3000), BENCH_ROUNDS (3), BENCH_PICKUPS (30),
//! BENCH_BATCH (100), BENCH_CONCURRENCY (32), BENCH_CLIENTS (16), BENCH_PGBENCH_SECS (15);
//! BENCH_PARTS (all, or a comma list of enqueue, batch, drain, email, templates: enqueue includes
//! an open loop at half its maximum for BENCH_OPEN_SECS (10); batch posts BENCH_BATCH_EMAILS
//! (20000) in batches of 1,000 from BENCH_BATCH_CLIENTS (2); email includes pgbench and pick-up;
//! templates sends a stored template vs raw content, alternating rounds; attachments posts and
//! sends BENCH_ATTACHMENT_EMAILS (400) emails with a distinct 100 KB attachment each vs plain ones,
//! alternating rounds, and compares their job rows' sizes);
//! BENCH_WORKER_BIN (another herald-worker binary to measure instead of this build's).
//!
//! Long on purpose: the baselines and Herald run in one process, alternating, so they share it.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/it/ses_stub.rs"]
mod ses_stub;

use common::{
    BenchDb, Row, TOKEN, env_usize, median, percentile, print_rows, rss_mib, spawn_worker,
    start_api,
};
use ses_stub::SesStub;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_postgres::{Config as QueueConfig, PostgresStorage, Pubsub};
use herald_shared::email::{self, Category, EmailContent, EmailJob};
use herald_shared::jobs::EnqueueOptions;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::oneshot;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
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
    // While jobs wait, count them through apalis's fetch index (it holds waiting jobs only): a
    // count of every row each few ms would take a share of the server from the drain it times.
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'",
        )
        .bind(queue)
        .fetch_one(pool)
        .await
        .expect("count waiting");
        if waiting == 0 {
            break;
        }
        assert!(Instant::now() < limit, "queue {queue} did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// A no-op worker under a Monitor, on the backend `$backend` builds (any apalis backend, hence a
/// macro), until the returned sender fires.
macro_rules! noop_worker {
    ($backend:expr, $concurrency:expr $(,)?) => {{
        let backend = $backend;
        let concurrency = $concurrency;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(format!("bench-noop-{}", ulid::Ulid::generate()))
                        .backend(backend())
                        .concurrency(concurrency)
                        .build(noop)
                })
                .run_with_signal(async move {
                    let _ = rx.await;
                    Ok(())
                })
                .await
                .expect("no-op worker");
        });
        tx
    }};
}

/// Raw apalis as its documentation sets it up: LISTEN/NOTIFY plus a 1 s poll.
fn raw_worker(pool: &PgPool, queue: &str, batch: usize, concurrency: usize) -> oneshot::Sender<()> {
    let (pool, queue) = (pool.clone(), queue.to_owned());
    noop_worker!(
        move || {
            PostgresStorage::<Noop>::new(&pool)
                .with_config(queue_config(&queue, batch))
                .poll_with_strategy(
                    Strategy::new()
                        .stream(Pubsub::new(pool.clone(), queue.clone()))
                        .interval(Duration::from_secs(1)),
                )
        },
        concurrency,
    )
}

/// The same handler behind Herald's own email backend and queue settings (`herald_worker::email_backend`).
fn herald_noop_worker(
    pool: &PgPool,
    queue: &str,
    config: &herald_worker::WorkerConfig,
) -> oneshot::Sender<()> {
    let (pool, queue) = (pool.clone(), queue.to_owned());
    let (queue_config, poll) = (
        herald_worker::email_queue_config(config).queue(&queue),
        config.poll_interval,
    );
    noop_worker!(
        move || herald_worker::email_backend::<Noop>(
            &pool,
            &queue,
            queue_config.clone(),
            poll,
            Arc::default()
        ),
        config.concurrency,
    )
}

type Call = Arc<dyn Fn(usize) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Starts `f` at a fixed `rate` for `secs`, each call on its own whatever the others do; each
/// call's latency counted from its scheduled start.
async fn open_loop(rate: f64, secs: f64, f: Call) -> Vec<Duration> {
    let n = (rate * secs).max(1.0) as usize;
    let every = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + every.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let f = f.clone();
        handles.push(tokio::spawn(async move {
            f(i).await;
            due.elapsed()
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for h in handles {
        lat.push(h.await.expect("open-loop call"));
    }
    lat
}

/// A figure for `.local/bench-report.json` (scripts/bench.sh collects these lines).
fn key(name: &str, value: f64) {
    println!("BENCH-KEY\t{name}\t{value:.4}");
}

async fn push_raw(pool: &PgPool, queue: &str, n: u64) {
    push_raw_many(pool, queue, n, 1).await;
}

/// Pushes `count` no-op tasks in one statement.
async fn push_raw_many(pool: &PgPool, queue: &str, first: u64, count: u64) {
    let mut conn = pool.acquire().await.expect("conn");
    let tasks = (first..first + count)
        .map(|n| {
            TaskBuilder::new(serde_json::to_vec(&Noop(n)).expect("json"))
                .task_id(TaskId::from_ulid(ulid::Ulid::generate()))
                .max_attempts(3)
                .build()
        })
        .collect();
    apalis_postgres::queries::push_tasks(&mut *conn, queue, tasks)
        .await
        .expect("push");
}

/// Pushes `n` no-op jobs to a fresh queue, starts a worker, and returns jobs/s until all are Done.
async fn drain_noop(
    pool: &PgPool,
    queue: &str,
    n: usize,
    start: impl FnOnce() -> oneshot::Sender<()>,
) -> f64 {
    for first in (0..n as u64).step_by(500) {
        push_raw_many(pool, queue, first, 500.min(n as u64 - first)).await;
    }
    let t = Instant::now();
    let stop = start();
    wait_done(pool, queue, n as i64).await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = stop.send(());
    rate
}

fn email(i: usize) -> EmailJob {
    EmailJob {
        envelope: Default::default(),
        to: format!("bench-{i}@example.com"),
        category: Category::Transactional,
        content: EmailContent::Raw {
            subject: "Bench".into(),
            text: Some("Hello".into()),
            html: None,
        },
    }
}

/// The machine's CPU counters (busy, total) in ticks, from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Transactions committed or rolled back in this database so far.
async fn xacts(pool: &PgPool) -> i64 {
    // Statistics are flushed when a backend goes idle; give them a moment.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("stats")
}

/// `pgbench -N` (no updates of the small tables: the simple-update write ceiling) against `url`,
/// with the given clients, if `PGBENCH` names the binary.
fn pgbench_tps(url: &str, clients: usize, secs: usize) -> Option<f64> {
    let bin = std::env::var("PGBENCH").ok()?;
    let init = Command::new(&bin)
        .args(["-i", "-q", "-s", "10", url])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = Command::new(&bin)
        .args(["-N", "-n", "-c", &clients.to_string(), "-j", "2", "-T"])
        .arg(secs.to_string())
        .arg(url)
        .output()
        .expect("pgbench -N");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "pgbench -N: {out}");
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Queues bench email `i` (its job and ledger row) on the caller's transaction.
async fn enqueue_email(conn: &mut sqlx::PgConnection, i: usize) {
    email::enqueue(
        conn,
        &email(i),
        EnqueueOptions {
            max_attempts: 3,
            run_at: None,
            idempotency_key: None,
        },
    )
    .await
    .expect("enqueue");
}

/// One drain of the email path through a running worker.
struct EmailRun {
    rate: f64,
    idle_rss: f64,
    peak_rss: f64,
    worker_ms: f64,
    pg_ms: f64,
    own_ms: f64,
    busy: f64,
    xacts_per_email: f64,
}

impl EmailRun {
    fn summary(&self) -> String {
        format!(
            "{:.0} jobs/s; worker CPU {:.2} ms per email; PostgreSQL CPU {:.2} ms per email; {:.2} transactions per email (all clients); machine CPU {:.0}% busy ({:.2} ms per email in this process: SES stub and polling)",
            self.rate,
            self.worker_ms,
            self.pg_ms,
            self.xacts_per_email,
            self.busy * 100.0,
            self.own_ms
        )
    }
}

/// Queues `n` emails (numbered from `first`) in one transaction and times `worker` sending them
/// all: watched through the SES stub's count while emails go out, and through the database only
/// for the last acks (a count over every job row each few ms took a share of the server from the
/// path it timed; pgbench beside it has no such observer).
async fn email_run(
    pool: &PgPool,
    stub: &SesStub,
    worker: &mut std::process::Child,
    first: usize,
    n: usize,
) -> EmailRun {
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        worker.try_wait().expect("wait").is_none(),
        "herald-worker exited"
    );
    let idle_rss = rss_mib(worker.id());
    let calls_before = stub.calls();
    let done_before = count_done(pool, email::EMAIL_QUEUE).await;
    let (cpu_before, xacts_before) = (common::process_cpu_seconds(worker.id()), xacts(pool).await);
    let mut tx = pool.begin().await.expect("tx");
    for i in first..first + n {
        enqueue_email(&mut tx, i).await;
    }
    tx.commit().await.expect("commit");
    let start = Instant::now();
    let machine_before = machine_cpu();
    let own_before = common::process_cpu_seconds(std::process::id());
    let pg_before = common::postgres_cpu_seconds();
    let mut peak_rss = idle_rss;
    loop {
        let sending = stub.calls() < calls_before + n as u64;
        if !sending && count_done(pool, email::EMAIL_QUEUE).await >= done_before + n as i64 {
            break;
        }
        peak_rss = peak_rss.max(rss_mib(worker.id()));
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "email jobs did not drain"
        );
        let wait = if sending { 20 } else { 5 };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let machine_after = machine_cpu();
    let per = |seconds: f64| seconds * 1000.0 / n as f64;
    let run = EmailRun {
        rate,
        idle_rss,
        peak_rss,
        worker_ms: per(common::process_cpu_seconds(worker.id()) - cpu_before),
        pg_ms: per(common::postgres_cpu_seconds() - pg_before),
        own_ms: per(common::process_cpu_seconds(std::process::id()) - own_before),
        busy: (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1),
        xacts_per_email: (xacts(pool).await - xacts_before) as f64 / n as f64,
    };
    assert_eq!(
        stub.calls(),
        calls_before + n as u64,
        "every email job called SES exactly once"
    );
    run
}

/// Sum (seconds) and count of the worker's email job runs, from its `/metrics`.
async fn email_job_seconds(metrics_url: &str) -> Option<(f64, f64)> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.contains(r#"queue="herald.email""#))
    {
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        if line.starts_with("herald_job_duration_seconds_sum") {
            sum += value;
        } else if line.starts_with("herald_job_duration_seconds_count") {
            count += value;
        }
    }
    (count > 0.0).then_some((sum, count))
}

#[tokio::main]
async fn main() {
    let pushes = env_usize("BENCH_PUSHES", 4000);
    let jobs = env_usize("BENCH_JOBS", 3000);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let pickups = env_usize("BENCH_PICKUPS", 30);
    let batch = env_usize("BENCH_BATCH", 100);
    let concurrency = env_usize("BENCH_CONCURRENCY", 32);
    let clients = env_usize("BENCH_CLIENTS", 16);
    let pgbench_secs = env_usize("BENCH_PGBENCH_SECS", 15);

    let db = BenchDb::create("pipeline", 40).await;
    let (pool, url, version) = (db.pool.clone(), db.url.clone(), db.version.clone());
    println!(
        "Herald pipeline benchmark: PostgreSQL {version}, {} cores, pushes={pushes} jobs={jobs} rounds={rounds} batch={batch} concurrency={concurrency} clients={clients}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut rows = Vec::new();

    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "all".into());
    let want = |part: &str| parts == "all" || parts.split(',').any(|p| p == part);
    if want("enqueue") {
        // 1. Enqueue: the API over HTTP vs raw concurrent apalis pushes. BENCH_API=process runs
        // the API as its own process instead of in this one.
        let mut api_process = None;
        let api_url = if std::env::var("BENCH_API").as_deref() == Ok("process") {
            let (child, api_url) = common::spawn_api_process(&url);
            api_process = Some(child);
            println!("enqueue: the API as its own process (release herald-api)");
            api_url
        } else {
            println!("enqueue: the API in the bench's process (BENCH_API=process runs the binary)");
            start_api(&url, &pool).await
        };
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
        let raw_push: Call = Arc::new(move |i| {
            let pool = raw_pool.clone();
            Box::pin(async move { push_raw(&pool, "bench.push", i as u64).await })
        });
        let post: Call = Arc::new(move |i| {
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
        });
        // Untimed warm-up on both sides: every client's connections (HTTP, and the API's and the
        // bench's database pools) are open before the clock starts.
        for f in [&raw_push, &post] {
            let warm: Vec<_> = (0..clients * 4).map(|i| f(10_000_000 + i)).collect();
            futures::future::join_all(warm).await;
        }
        // CPU per request of each party (this process, the API's, PostgreSQL's): where the single
        // enqueue's time goes on a machine whose two cores they share.
        let api_pid = api_process.as_ref().map(std::process::Child::id);
        let cpu = || {
            (
                common::process_cpu_seconds(std::process::id()),
                api_pid.map(common::process_cpu_seconds).unwrap_or(0.0),
                common::postgres_cpu_seconds(),
            )
        };
        let per_request = |before: (f64, f64, f64), after: (f64, f64, f64)| {
            let ms = |a: f64, b: f64| (b - a) * 1000.0 / pushes as f64;
            format!(
                "this process {:.3}, API process {:.3}, PostgreSQL {:.3}",
                ms(before.0, after.0),
                ms(before.1, after.1),
                ms(before.2, after.2)
            )
        };
        let before = cpu();
        let (raw_lat, raw_time) = run_clients(raw_push.clone()).await;
        let between = cpu();
        let (api_lat, api_time) = run_clients(post.clone()).await;
        println!(
            "enqueue CPU ms per request: raw push: {}; POST /v1/emails: {}",
            per_request(before, between),
            per_request(between, cpu())
        );
        let (raw_rate, raw_p50, raw_p99) = timed(raw_lat, raw_time);
        let (api_rate, api_p50, api_p99) = timed(api_lat, api_time);
        rows.push(Row::new(
            "enqueue rate (POST /v1/emails vs apalis push), jobs/s",
            format!("{api_rate:.0}"),
            format!("{raw_rate:.0}"),
            api_rate / raw_rate,
        ));
        rows.push(Row::new(
            "enqueue latency p50",
            ms(api_p50),
            ms(raw_p50),
            api_p50.as_secs_f64() / raw_p50.as_secs_f64(),
        ));
        rows.push(Row::new(
            "enqueue latency p99",
            ms(api_p99),
            ms(raw_p99),
            api_p99.as_secs_f64() / raw_p99.as_secs_f64(),
        ));
        key("enqueue_vs_push", api_rate / raw_rate);
        // Open loop at half the measured maximum: latency without the queueing of saturation,
        // counted from each request's scheduled start (no coordinated omission).
        let half = api_rate / 2.0;
        let open_secs = env_usize("BENCH_OPEN_SECS", 10) as f64;
        let mut raw_open =
            open_loop(half, open_secs, Arc::new(move |i| raw_push(1_000_000 + i))).await;
        let mut api_open = open_loop(half, open_secs, Arc::new(move |i| post(1_000_000 + i))).await;
        raw_open.sort();
        api_open.sort();
        for (what, p) in [
            ("enqueue latency p50 at half load (open loop)", 0.5),
            ("enqueue latency p99 at half load (open loop)", 0.99),
        ] {
            let (h, r) = (percentile(&api_open, p), percentile(&raw_open, p));
            rows.push(Row::new(
                &format!("{what}, {half:.0}/s"),
                ms(h),
                ms(r),
                h.as_secs_f64() / r.as_secs_f64(),
            ));
        }
        key(
            "enqueue_p99_ms_half_load",
            percentile(&api_open, 0.99).as_secs_f64() * 1000.0,
        );
        if let Some(mut child) = api_process {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Those API jobs are not drained here; clear them so the drains below start from empty queues.
        for table in ["apalis.jobs", "email_deliveries"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&pool)
                .await
                .expect("clear");
        }
    }
    if want("batch") {
        // 1b. Batches: POST /v1/emails/batch (1,000 emails each) vs apalis's own bulk push of
        // 1,000 tasks per statement, the same number from the same clients, alternating rounds.
        let api_url = start_api(&url, &pool).await;
        let total = env_usize("BENCH_BATCH_EMAILS", 20_000);
        let batch_clients = env_usize("BENCH_BATCH_CLIENTS", 2);
        let per_client = total / batch_clients / 1000;
        let http = reqwest::Client::new();
        let (mut herald_rates, mut bulk_rates) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let start = Instant::now();
            let mut handles = Vec::new();
            for c in 0..batch_clients {
                let pool = pool.clone();
                handles.push(tokio::spawn(async move {
                    for b in 0..per_client {
                        let first = ((round * batch_clients + c) * per_client + b) * 1000;
                        push_raw_many(&pool, "bench.bulk", first as u64, 1000).await;
                    }
                }));
            }
            for h in handles {
                h.await.expect("bulk client");
            }
            bulk_rates
                .push((per_client * batch_clients * 1000) as f64 / start.elapsed().as_secs_f64());
            // Bodies built before the clock starts: the client's JSON is not the server's work.
            let bodies: Vec<Vec<Vec<u8>>> = (0..batch_clients)
                .map(|c| {
                    (0..per_client)
                        .map(|b| {
                            let first = ((round * batch_clients + c) * per_client + b) * 1000;
                            let emails: Vec<serde_json::Value> = (first..first + 1000)
                                .map(|i| serde_json::json!({"to": format!("batch-{i}@example.com"), "subject": "Bench", "text": "Hello"}))
                                .collect();
                            serde_json::to_vec(&serde_json::json!({"emails": emails})).expect("json")
                        })
                        .collect()
                })
                .collect();
            let start = Instant::now();
            let mut handles = Vec::new();
            for client_bodies in bodies {
                let (http, url) = (http.clone(), format!("{api_url}/v1/emails/batch"));
                handles.push(tokio::spawn(async move {
                    for body in client_bodies {
                        let res = http
                            .post(&url)
                            .bearer_auth(TOKEN)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .expect("post batch");
                        assert_eq!(res.status(), 200);
                        let answer: serde_json::Value = res.json().await.expect("answer");
                        let accepted = answer["results"]
                            .as_array()
                            .map_or(0, |r| r.iter().filter(|i| i["status"] == 202).count());
                        assert_eq!(accepted, 1000, "every batch item was accepted");
                    }
                }));
            }
            for h in handles {
                h.await.expect("batch client");
            }
            herald_rates
                .push((per_client * batch_clients * 1000) as f64 / start.elapsed().as_secs_f64());
        }
        println!("batch rounds, emails/s: bulk push {bulk_rates:.0?}, Herald {herald_rates:.0?}");
        let (h, b) = (median(&herald_rates), median(&bulk_rates));
        rows.push(Row::new(
            &format!("batch enqueue (POST /v1/emails/batch, 1,000 each, {batch_clients} clients) vs apalis bulk push, emails/s, median of {rounds}"),
            format!("{h:.0}"),
            format!("{b:.0}"),
            h / b,
        ));
        key("batch_enqueue_per_s", h);
        key("batch_vs_bulk_push", h / b);
        for table in ["apalis.jobs", "email_deliveries"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&pool)
                .await
                .expect("clear");
        }
    }
    let mut raw_drain = f64::NAN;
    if want("drain") {
        // 2. No-op drain, alternating raw and Herald rounds on fresh queues; medians.
        let worker_env: std::collections::HashMap<String, String> = [
            ("DATABASE_URL", url.as_str()),
            ("EMAIL_FROM", "noreply@herald.test"),
            ("FRONTEND_URL", "https://app.example.com"),
            ("MARKETING_EMAIL_ENABLED", "false"),
            ("WORKER_BATCH_SIZE", &batch.to_string()),
            ("WORKER_CONCURRENCY", &concurrency.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = herald_worker::WorkerConfig::from_source(&worker_env).expect("worker config");
        let (mut raw_rates, mut herald_rates) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let q = format!("bench.raw.{round}");
            raw_rates.push(
                drain_noop(&pool, &q, jobs, || {
                    raw_worker(&pool, &q, batch, concurrency)
                })
                .await,
            );
            let q = format!("bench.herald.{round}");
            herald_rates
                .push(drain_noop(&pool, &q, jobs, || herald_noop_worker(&pool, &q, &config)).await);
        }
        let herald_drain = median(&herald_rates);
        raw_drain = median(&raw_rates);
        key("noop_drain_per_s", herald_drain);
        println!("no-op drain rounds, jobs/s: raw {raw_rates:.0?}, Herald {herald_rates:.0?}");
        rows.push(Row::new(
            &format!(
                "no-op drain (batch {batch}, concurrency {concurrency}), jobs/s, median of {rounds}"
            ),
            format!("{herald_drain:.0}"),
            format!("{raw_drain:.0}"),
            herald_drain / raw_drain,
        ));
    }
    // 3. The write ceiling of this server.
    let tps = if want("email") {
        pgbench_tps(&url, clients, pgbench_secs)
    } else {
        None
    };

    if want("email") {
        // 4. Full email path: the worker binary against the SES stub; its memory idle and under load.
        // First at the bench's modest setting (the drain's batch and concurrency), then at the
        // throughput setting (BENCH_EMAIL_BATCH, BENCH_EMAIL_CONCURRENCY), whose worker stays
        // up for the pick-up measure below.
        let stub = SesStub::start().await;
        let mut modest = spawn_worker(&url, &stub.url, batch, concurrency);
        // Enough emails that the faster setting runs for seconds, not a fraction of one.
        let jobs = env_usize("BENCH_EMAIL_JOBS", jobs.max(20_000));
        let modest_run = email_run(&pool, &stub, &mut modest, 0, jobs).await;
        let _ = modest.kill();
        let _ = modest.wait();
        let (email_batch, email_concurrency) = (
            env_usize("BENCH_EMAIL_BATCH", 500),
            env_usize("BENCH_EMAIL_CONCURRENCY", 256),
        );
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut worker = common::spawn_worker_with(
            &url,
            &stub.url,
            email_batch,
            email_concurrency,
            &[("METRICS_ADDR", &metrics_addr)],
        );
        let run = email_run(&pool, &stub, &mut worker, jobs, jobs).await;
        // Where an email's time in flight goes: inside its job's run (claim, SES call, `sent`)
        // or before it (fetched, waiting for a free slot) and after it (the ack).
        if let Some((sum, count)) =
            email_job_seconds(&format!("http://{metrics_addr}/metrics")).await
        {
            let in_flight = email_concurrency as f64 / run.rate * 1000.0;
            println!(
                "email path (batch {email_batch}, concurrency {email_concurrency}): a job's run takes {:.1} ms on average ({count:.0} runs); {email_concurrency} in flight at {:.0}/s is {in_flight:.1} ms per email",
                sum / count * 1000.0,
                run.rate
            );
        }
        let (email_rate, idle_rss, peak_rss) = (run.rate, run.idle_rss, run.peak_rss);
        let (updates, hot): (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'email_deliveries'",
        )
        .fetch_one(&pool)
        .await
        .expect("table stats");
        println!("ledger updates: {updates}, of which HOT (no index rewritten): {hot}");
        for (what, r) in [
            (
                format!("batch {batch}, concurrency {concurrency}"),
                &modest_run,
            ),
            (
                format!("batch {email_batch}, concurrency {email_concurrency}"),
                &run,
            ),
        ] {
            println!("email path ({what}): {}", r.summary());
        }
        match tps {
            Some(tps) => {
                key("email_path_vs_pgbench", email_rate / tps);
                key("email_path_modest_vs_pgbench", modest_run.rate / tps);
                rows.push(Row::new(
                    &format!("full email path (worker binary, SES stub; batch {email_batch}, concurrency {email_concurrency}) vs pgbench -N TPS"),
                    format!("{email_rate:.0}"),
                    format!("{tps:.0}"),
                    email_rate / tps,
                ));
                rows.push(Row::new(
                    &format!("full email path at batch {batch}, concurrency {concurrency} vs pgbench -N TPS"),
                    format!("{:.0}", modest_run.rate),
                    format!("{tps:.0}"),
                    modest_run.rate / tps,
                ));
            }
            None => println!("PGBENCH is not set: no pgbench -N baseline"),
        }
        rows.push(Row::new(
            "full email path vs raw no-op drain, jobs/s",
            format!("{email_rate:.0}"),
            format!("{raw_drain:.0}"),
            email_rate / raw_drain,
        ));
        rows.push(Row::new(
            "worker memory (RSS, MiB): peak under load vs idle",
            format!("{peak_rss:.1}"),
            format!("{idle_rss:.1}"),
            peak_rss / idle_rss,
        ));

        // 5. Idle pick-up: one job at a time into an idle queue.
        let mut herald_lat = Vec::new();
        for i in 0..pickups {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let before = stub.calls() as usize;
            let mut tx = pool.begin().await.expect("tx");
            enqueue_email(&mut tx, 2 * jobs + i).await;
            let t = Instant::now();
            tx.commit().await.expect("commit");
            loop {
                let calls = stub.call_times().await;
                if calls.len() > before {
                    herald_lat.push(calls[before].saturating_duration_since(t));
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let _ = worker.kill();
        let _ = worker.wait();

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
        for (what, p) in [
            ("idle pick-up p50 (commit to SES call / push to Done)", 0.5),
            ("idle pick-up p99", 0.99),
        ] {
            let (h, r) = (percentile(&herald_lat, p), percentile(&raw_lat, p));
            rows.push(Row::new(
                what,
                ms(h),
                ms(r),
                h.as_secs_f64() / r.as_secs_f64(),
            ));
        }
    }
    if want("templates") {
        // 6. Rendering from the template cache must not slow the email path: the same worker
        // sends rounds of a stored template (`notification`, pinned to v1) and of raw content
        // (no rendering at all: the fastest any embedded template could be), alternating.
        let stub = SesStub::start().await;
        let mut worker = spawn_worker(&url, &stub.url, batch, concurrency);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (mut stored, mut raw) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for templated in [round % 2 == 0, round % 2 != 0] {
                let before = count_done(&pool, email::EMAIL_QUEUE).await;
                let mut tx = pool.begin().await.expect("tx");
                for i in 0..jobs {
                    let mut job = email(i);
                    if templated {
                        job.content = EmailContent::Template {
                            name: "notification".into(),
                            data: serde_json::json!({"title": "Bench", "message": "Hello"}),
                            locale: Some("en".into()),
                            version: Some(1),
                        };
                    }
                    let options = EnqueueOptions {
                        max_attempts: 3,
                        run_at: None,
                        idempotency_key: None,
                    };
                    email::enqueue(&mut tx, &job, options)
                        .await
                        .expect("enqueue");
                }
                tx.commit().await.expect("commit");
                let start = Instant::now();
                wait_done(&pool, email::EMAIL_QUEUE, before + jobs as i64).await;
                let rate = jobs as f64 / start.elapsed().as_secs_f64();
                println!(
                    "round {round}: {} {rate:.0} emails/s",
                    if templated {
                        "stored template"
                    } else {
                        "raw content"
                    }
                );
                if templated { &mut stored } else { &mut raw }.push(rate);
            }
        }
        let _ = worker.kill();
        let _ = worker.wait();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (s, r) = (median(&mut stored), median(&mut raw));
        rows.push(Row::new(
            "email path: stored template (cached) vs raw content, emails/s (medians)",
            format!("{s:.0}"),
            format!("{r:.0}"),
            s / r,
        ));
    }
    if want("attachments") {
        // 7. Emails with a 100 KB attachment (distinct bytes each) vs plain ones: posted over HTTP,
        // then sent by the same worker in alternating rounds; and what their job rows weigh (the
        // bytes live in email_attachment_blobs, not in the queue's rows).
        let n = env_usize("BENCH_ATTACHMENT_EMAILS", 400);
        let attachment = |i: usize| -> Vec<u8> {
            let mut bytes = vec![0u8; 100 * 1024];
            for (k, b) in bytes.iter_mut().enumerate() {
                *b = ((k * 31 + i * 7) % 251) as u8;
            }
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            bytes
        };
        let api_url = start_api(&url, &pool).await;
        let http = reqwest::Client::new();
        let post_round = |with: bool, first: usize| {
            let (http, api_url) = (http.clone(), api_url.clone());
            async move {
                let per = n / 8;
                let start = Instant::now();
                let mut handles = Vec::new();
                for c in 0..8 {
                    let (http, api_url) = (http.clone(), api_url.clone());
                    handles.push(tokio::spawn(async move {
                        for k in 0..per {
                            let i = first + c * per + k;
                            let mut body = serde_json::json!({"to": format!("att-{i}@example.com"), "subject": "Receipt", "text": "Attached."});
                            if with {
                                use base64::Engine;
                                body["attachments"] = serde_json::json!([{"filename": "receipt.pdf",
                                    "content": base64::engine::general_purpose::STANDARD.encode(attachment(i))}]);
                            }
                            let res = http
                                .post(format!("{api_url}/v1/emails"))
                                .bearer_auth(TOKEN)
                                .json(&body)
                                .send()
                                .await
                                .expect("post");
                            assert_eq!(res.status(), 202);
                        }
                    }));
                }
                for h in handles {
                    h.await.expect("client");
                }
                (per * 8) as f64 / start.elapsed().as_secs_f64()
            }
        };
        let (mut posted_with, mut posted_without) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for with in [round % 2 == 0, round % 2 != 0] {
                let rate =
                    post_round(with, 1_000_000 * (1 + round) + usize::from(with) * 100_000).await;
                if with {
                    &mut posted_with
                } else {
                    &mut posted_without
                }
                .push(rate);
            }
        }
        let stub = SesStub::start().await;
        let mut worker = spawn_worker(&url, &stub.url, batch, concurrency);
        // What was posted goes out first, untimed.
        let posted: i64 = herald_shared::jobs::count_by_state(&pool)
            .await
            .expect("counts")
            .iter()
            .filter(|c| c.queue == email::EMAIL_QUEUE)
            .map(|c| c.n)
            .sum();
        wait_done(&pool, email::EMAIL_QUEUE, posted).await;
        let mut row_sizes = (0usize, 0usize);
        let (mut sent_with, mut sent_without) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for with in [round % 2 == 0, round % 2 != 0] {
                let before = count_done(&pool, email::EMAIL_QUEUE).await;
                let mut tx = pool.begin().await.expect("tx");
                for k in 0..n {
                    let i = 5_000_000 + round * 100_000 + k;
                    let mut job = email(i);
                    if with {
                        let bytes = attachment(i);
                        let checked =
                            email::attachments::check(&[email::attachments::AttachmentInput {
                                filename: "receipt.pdf".into(),
                                content: {
                                    use base64::Engine;
                                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                                },
                                content_type: None,
                                content_id: None,
                            }])
                            .expect("attachment");
                        email::attachments::store(&mut tx, &checked)
                            .await
                            .expect("store");
                        job.envelope.attachments = checked.into_iter().map(|(r, _)| r).collect();
                    }
                    // The job row's payload: what the queue's rows carry of the email.
                    let size = serde_json::to_vec(&job).expect("payload").len();
                    if with {
                        row_sizes.0 = size
                    } else {
                        row_sizes.1 = size
                    }
                    let options = EnqueueOptions {
                        max_attempts: 3,
                        run_at: None,
                        idempotency_key: None,
                    };
                    email::enqueue(&mut tx, &job, options)
                        .await
                        .expect("enqueue");
                }
                tx.commit().await.expect("commit");
                let start = Instant::now();
                wait_done(&pool, email::EMAIL_QUEUE, before + n as i64).await;
                let rate = n as f64 / start.elapsed().as_secs_f64();
                println!(
                    "round {round}: {} {rate:.0} emails/s",
                    if with { "100 KB attachment" } else { "plain" }
                );
                if with {
                    &mut sent_with
                } else {
                    &mut sent_without
                }
                .push(rate);
            }
        }
        let _ = worker.kill();
        let _ = worker.wait();
        let (pw, pp) = (median(&posted_with), median(&posted_without));
        rows.push(Row::new(
            "POST /v1/emails with a 100 KB attachment vs plain, emails/s (medians, 8 clients)",
            format!("{pw:.0}"),
            format!("{pp:.0}"),
            pw / pp,
        ));
        let (sw, sp) = (median(&sent_with), median(&sent_without));
        rows.push(Row::new(
            "email path with a 100 KB attachment vs plain, emails/s (medians)",
            format!("{sw:.0}"),
            format!("{sp:.0}"),
            sw / sp,
        ));
        rows.push(Row::new(
            "email job payload with a 100 KB attachment vs plain, bytes",
            format!("{}", row_sizes.0),
            format!("{}", row_sizes.1),
            row_sizes.0 as f64 / row_sizes.1 as f64,
        ));
    }
    print_rows("baseline (raw apalis / pgbench / idle)", &rows);
    db.drop_db().await;
}
