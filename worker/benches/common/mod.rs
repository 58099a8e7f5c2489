//! What every benchmark needs: a database of its own on the server `DATABASE_URL` names.
// Each bench compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// A fresh, migrated database, dropped by [`BenchDb::drop_db`].
pub struct BenchDb {
    /// Pool on the new database.
    pub pool: PgPool,
    /// Its URL.
    pub url: String,
    /// The server's version, for the report.
    pub version: String,
    name: String,
    admin: PgConnection,
}

impl BenchDb {
    /// Creates `herald_bench_<label>_<pid>` and applies every migration.
    pub async fn create(label: &str, max_connections: u32) -> Self {
        let master =
            std::env::var("DATABASE_URL").expect("DATABASE_URL: the server to benchmark on");
        let (base, _) = master.rsplit_once('/').expect("URL with a database");
        let name = format!("herald_bench_{label}_{}", std::process::id());
        let mut admin = PgConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create");
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&url)
            .await
            .expect("pool");
        herald_shared::db::migrate(&pool).await.expect("migrate");
        let version = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .expect("version");
        Self {
            pool,
            url,
            version,
            name,
            admin,
        }
    }

    /// Closes the pool and drops the database.
    pub async fn drop_db(mut self) {
        self.pool.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await;
    }
}

/// One line of a report: a Herald figure beside its baseline.
pub struct Row {
    /// What was measured.
    pub what: String,
    /// Herald's figure, formatted.
    pub herald: String,
    /// The baseline's figure, formatted.
    pub baseline: String,
    /// Herald / baseline, formatted.
    pub ratio: String,
}

impl Row {
    /// A row whose ratio is `herald / baseline`.
    pub fn new(what: &str, herald: String, baseline: String, ratio: f64) -> Self {
        Self {
            what: what.to_owned(),
            herald,
            baseline,
            ratio: format!("{ratio:.2}"),
        }
    }
}

/// Prints the rows as a Markdown table, and once more as `BENCH-ROW` lines scripts/bench.sh collects.
pub fn print_rows(baseline: &str, rows: &[Row]) {
    println!("\n| measure | Herald | {baseline} | Herald / baseline |\n|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what, r.herald, r.baseline, r.ratio
        );
    }
    for r in rows {
        println!(
            "BENCH-ROW\t{}\t{}\t{}\t{}",
            r.what, r.herald, r.baseline, r.ratio
        );
    }
}

/// The median of some figures.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The API token the benches use.
pub const TOKEN: &str = "bench-token-0123456789abcdef0123456789";

/// Starts the API in this process on the bench database; its base URL.
pub async fn start_api(url: &str, pool: &PgPool) -> String {
    let api_config = herald_api::ApiConfig::from_source(&[
        ("API_TOKEN", TOKEN),
        ("API_ADDR", "127.0.0.1:0"),
        ("API_METRICS_ADDR", "127.0.0.1:0"),
        ("FRONTEND_URL", "https://app.example.com"),
        ("MARKETING_EMAIL_ENABLED", "false"),
        ("EMAIL_FROM", "noreply@herald.test"),
        ("DATABASE_URL", url),
    ])
    .expect("api config");
    let app = herald_api::Application::build(api_config, pool.clone())
        .await
        .expect("api");
    let api_url = format!("http://{}", app.local_addr().expect("addr"));
    tokio::spawn(app.serve(std::future::pending()));
    api_url
}

/// The API as its own process (the release `herald-api` beside this bench's binary, or
/// `BENCH_API_BIN`), as production runs it: the load generator no longer shares its runtime.
/// Returns the process and its URL.
pub fn spawn_api_process(url: &str) -> (Child, String) {
    use std::io::BufRead as _;
    let bin = std::env::var("BENCH_API_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().expect("own path");
        // target/<profile>/deps/<bench> → target/<profile>/herald-api
        let dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("target folder");
        dir.join("herald-api").display().to_string()
    });
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: cargo build --release -p herald-api first (or set BENCH_API_BIN)"
    );
    let mut child = Command::new(&bin)
        .env("API_TOKEN", TOKEN)
        .env("API_ADDR", "127.0.0.1:0")
        .env("API_METRICS_ADDR", "127.0.0.1:0")
        .env("FRONTEND_URL", "https://app.example.com")
        .env("MARKETING_EMAIL_ENABLED", "false")
        // The bench's webhook receiver listens on loopback.
        .env("WEBHOOK_ALLOW_PRIVATE_URLS", "true")
        .env("EMAIL_FROM", "noreply@herald.test")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald-api");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let api_url = loop {
        let line = lines
            .next()
            .expect("herald-api ended before it listened")
            .expect("read");
        if let Some(rest) = line.strip_prefix("herald-api listening on ") {
            break rest.trim().to_owned();
        }
    };
    // Keep reading so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, api_url)
}

/// The worker binary cargo built for this bench, against the database and the SES stub.
pub fn spawn_worker(url: &str, stub: &str, batch: usize, concurrency: usize) -> Child {
    spawn_worker_with(url, stub, batch, concurrency, &[])
}

/// [`spawn_worker`] with more environment variables.
pub fn spawn_worker_with(
    url: &str,
    stub: &str,
    batch: usize,
    concurrency: usize,
    extra: &[(&str, &str)],
) -> Child {
    // BENCH_WORKER_BIN compares another build of the worker (say, the previous commit's) in one run.
    let bin = std::env::var("BENCH_WORKER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_herald-worker").to_owned());
    Command::new(bin)
        .env("DATABASE_URL", url)
        .env("DB_MAX_CONNECTIONS", (concurrency + 8).to_string())
        .env("EMAIL_FROM", "noreply@herald.test")
        .env("FRONTEND_URL", "https://app.example.com")
        .env("MARKETING_EMAIL_ENABLED", "false")
        .env("WORKER_BATCH_SIZE", batch.to_string())
        .env("WORKER_CONCURRENCY", concurrency.to_string())
        .env("SES_MAX_SEND_RATE", "1000000")
        .env("AWS_ENDPOINT_URL", stub)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald-worker")
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A size from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted latencies (zero when there are none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A process's command name and CPU clock ticks (user + system) from its `/proc/<pid>/stat`.
fn stat_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After the command: state is field 3 of stat, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

// Linux reports in clock ticks of 1/100 s (USER_HZ) on every architecture it runs on here.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) used so far by the process `pid`.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    stat_ticks(pid).map_or(0.0, |(_, t)| t as f64 / TICKS_PER_SEC)
}

/// CPU seconds (user + system) used so far by every PostgreSQL process on this machine. Backends
/// that exit between two readings drop out; compare readings taken while the same connections
/// are open.
pub fn postgres_cpu_seconds() -> f64 {
    let mut ticks = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some((comm, t)) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(stat_ticks)
                && comm == "postgres"
            {
                ticks += t;
            }
        }
    }
    ticks as f64 / TICKS_PER_SEC
}

/// CPU seconds used so far by `pid` and every PostgreSQL process on this machine: the work a run
/// costs, which another tenant's load slows but does not change much, unlike its wall-clock rate.
pub fn cpu_seconds(pid: u32) -> f64 {
    process_cpu_seconds(pid) + postgres_cpu_seconds()
}
