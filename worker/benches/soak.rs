//! A long run: SOAK_EMAILS (1,000,000) emails posted through the API's batch endpoint at
//! SOAK_RATE (1,000) emails/s, to SOAK_WORKERS (2) `herald-worker` processes with their maintenance
//! schedules running, against a local SES stub. scripts/soak.sh runs it on PostgreSQL 17.
//!
//! Each minute it writes one line to SOAK_CSV (.local/soak.csv): emails/s sent, pick-up p50/p99
//! (the batch request's start to the SES call), each worker's RSS, the sizes of `apalis.jobs` and
//! `email_deliveries` with their dead rows and autovacuum count. At the end: lost (a posted email
//! that SES never got, or a ledger row not `sent`) and duplicates (SES calls beyond one per email),
//! and whether RSS stayed flat (growth after warm-up under 10 %).

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/it/ses_stub.rs"]
mod ses_stub;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BenchDb, TOKEN, env_usize, percentile, rss_mib, spawn_worker, start_api};
use ses_stub::SesStub;
use tokio::sync::Mutex;

/// A percentile in milliseconds (NaN when there is none).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    percentile(sorted, p).as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let total = env_usize("SOAK_EMAILS", 1_000_000);
    let rate = env_usize("SOAK_RATE", 1000).max(1);
    let workers = env_usize("SOAK_WORKERS", 2);
    let batch = 500usize;
    let csv_path = std::env::var("SOAK_CSV").unwrap_or_else(|_| ".local/soak.csv".into());

    let db = BenchDb::create("soak", 20).await;
    let (pool, url) = (db.pool.clone(), db.url.clone());
    let stub = SesStub::start_logging().await;
    let api = start_api(&url, &pool).await;
    let mut procs: Vec<_> = (0..workers)
        .map(|_| spawn_worker(&url, &stub.url, 100, 32))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "Herald soak: PostgreSQL {}, {total} emails at {rate}/s in batches of {batch}, {workers} workers",
        db.version
    );

    // The producer: one batch every batch/rate seconds; each email's commit time by recipient.
    let posted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let producer = {
        let posted = posted.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let every = Duration::from_secs_f64(batch as f64 / rate as f64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for first in (0..total).step_by(batch) {
                tick.tick().await;
                let n = batch.min(total - first);
                let emails: Vec<serde_json::Value> = (first..first + n)
                    .map(|i| serde_json::json!({"to": format!("soak-{i}@example.com"), "subject": "Soak", "text": "Hello"}))
                    .collect();
                // Pick-up counts from the request's start: an upper bound by the batch's own
                // time (about 25 ms), where the answer's arrival would undercount.
                let start = Instant::now();
                let res = http
                    .post(format!("{api}/v1/emails/batch"))
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({ "emails": emails }))
                    .send()
                    .await
                    .expect("post batch");
                assert_eq!(res.status(), 200, "batch refused");
                let mut posted = posted.lock().await;
                for i in first..first + n {
                    posted.insert(format!("soak-{i}@example.com"), start);
                }
            }
        })
    };

    let mut csv = std::fs::File::create(&csv_path).expect("csv");
    writeln!(
        csv,
        "minute,emails_per_s,pickup_p50_ms,pickup_p99_ms,{}jobs_mib,jobs_dead,jobs_autovacuums,deliveries_mib,deliveries_dead,deliveries_autovacuums",
        (0..workers).map(|w| format!("rss_worker{w}_mib,")).collect::<String>()
    )
    .expect("csv header");
    let started = Instant::now();
    let (mut seen, mut minute) = (0usize, 0usize);
    let mut rss_first_after_warmup: Vec<f64> = Vec::new();
    let mut rss_last: Vec<f64>;
    loop {
        let window = Instant::now();
        while window.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if producer.is_finished() && stub.calls() as usize >= total {
                break;
            }
        }
        minute += 1;
        let calls = stub.log_since(seen).await;
        seen += calls.len();
        let mut pickups: Vec<Duration> = {
            let posted = posted.lock().await;
            calls
                .iter()
                .filter_map(|(at, to)| posted.get(to).map(|p| at.saturating_duration_since(*p)))
                .collect()
        };
        pickups.sort();
        let rss: Vec<f64> = procs.iter().map(|p| rss_mib(p.id())).collect();
        if minute == 2 {
            rss_first_after_warmup = rss.clone();
        }
        rss_last = rss.clone();
        let tables: Vec<(f64, i64, i64)> = {
            let mut out = Vec::new();
            for (schema, table) in [("apalis", "jobs"), ("public", "email_deliveries")] {
                let row: (i64, i64, i64) = sqlx::query_as(
                    "SELECT pg_total_relation_size(relid), n_dead_tup, autovacuum_count
                     FROM pg_stat_all_tables WHERE schemaname = $1 AND relname = $2",
                )
                .bind(schema)
                .bind(table)
                .fetch_one(&pool)
                .await
                .expect("table stats");
                out.push((row.0 as f64 / 1048576.0, row.1, row.2));
            }
            out
        };
        let per_s = calls.len() as f64 / window.elapsed().as_secs_f64();
        let line = format!(
            "{minute},{per_s:.0},{:.1},{:.1},{}{:.1},{},{},{:.1},{},{}",
            percentile_ms(&pickups, 0.5),
            percentile_ms(&pickups, 0.99),
            rss.iter().map(|r| format!("{r:.1},")).collect::<String>(),
            tables[0].0,
            tables[0].1,
            tables[0].2,
            tables[1].0,
            tables[1].1,
            tables[1].2
        );
        println!("{line}");
        writeln!(csv, "{line}").expect("csv line");
        if producer.is_finished() && stub.calls() as usize >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "the soak did not finish within an hour"
        );
    }
    producer.await.expect("producer");
    // Let the last ledger writes land.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    let accepted = stub.accepted().await;
    let lost_at_ses = (0..total)
        .filter(|i| !accepted.contains_key(&format!("soak-{i}@example.com")))
        .count();
    let totals = herald_shared::email::ledger::totals(&pool)
        .await
        .expect("ledger");
    let not_sent = totals.rows - totals.sent;
    let duplicates: u64 = accepted
        .values()
        .map(|n| u64::from(n.saturating_sub(1)))
        .sum();
    let growth: Vec<String> = rss_first_after_warmup
        .iter()
        .zip(&rss_last)
        .map(|(a, b)| format!("{:+.1} %", (b / a - 1.0) * 100.0))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "SOAK-SUMMARY\temails={total}\tseconds={elapsed:.0}\tmean_per_s={:.0}\tlost_at_ses={lost_at_ses}\tledger_not_sent={not_sent}\tduplicates={duplicates}\trss_growth_after_warmup={}",
        total as f64 / elapsed,
        growth.join(" / ")
    );
    db.drop_db().await;
    assert_eq!(lost_at_ses, 0, "emails never reached SES");
    assert_eq!(not_sent, 0, "ledger rows not sent");
}
