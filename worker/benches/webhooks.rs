//! Webhooks: events delivered per second to a local receiver, and the email path (worker binary,
//! SES stub) in three modes, rounds rotating in one run: no subscriber; one endpoint subscribed to
//! `email.sent` with the worker delivering no webhooks (`WEBHOOK_CONCURRENCY=0`: what the outbox
//! itself costs the email path); the same endpoint with the worker delivering its webhooks
//! meanwhile (what the whole feature costs a process that does both). `BENCH_JOBS` emails per
//! round (2,000), `BENCH_ROUNDS` rounds of each (3), `BENCH_EVENTS` events for the delivery rate
//! (2,000).

mod common;

use std::time::{Duration, Instant};

use herald_shared::email::{self, Category, EmailContent, EmailJob, NewEmail};
use herald_shared::webhooks::{self, NewEndpoint};

#[path = "../tests/it/ses_stub.rs"]
mod ses_stub;

async fn receiver() -> String {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
    url
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::main]
async fn main() {
    let jobs = common::env_usize("BENCH_JOBS", 2000);
    let rounds = common::env_usize("BENCH_ROUNDS", 3);
    let events = common::env_usize("BENCH_EVENTS", 2000);
    let db = common::BenchDb::create("webhooks", 16).await;
    let stub = ses_stub::SesStub::start().await;
    let hook = receiver().await;
    let mut conn = db.pool.acquire().await.expect("conn");
    let endpoint = webhooks::create(
        &mut conn,
        &NewEndpoint {
            url: &hook,
            description: None,
            events: &[
                webhooks::EventType::EmailSent,
                webhooks::EventType::SuppressionCreated,
            ],
            include_addresses: false,
            secret: &webhooks::new_secret().expect("secret"),
        },
    )
    .await
    .expect("endpoint")
    .id;
    drop(conn);
    println!("webhooks bench on PostgreSQL {}", db.version);

    // 1. The email path: no subscriber, the outbox alone, the outbox with deliveries meanwhile.
    const MODES: [&str; 3] = [
        "no subscriber",
        "one subscriber, outbox only",
        "one subscriber, delivering meanwhile",
    ];
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    // CPU milliseconds per email, worker and PostgreSQL together.
    let mut cpu: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds * 3 {
        let mode = round % 3;
        sqlx::query("UPDATE webhook_endpoints SET enabled = $2 WHERE id = $1")
            .bind(endpoint)
            .bind(mode > 0)
            .execute(&db.pool)
            .await
            .expect("toggle");
        let delivering = if mode == 2 { "8" } else { "0" };
        let mut worker = common::spawn_worker_with(
            &db.url,
            &stub.url,
            20,
            16,
            &[("WEBHOOK_CONCURRENCY", delivering)],
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = count(
            &db.pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'herald.email' AND status = 'Done'",
        )
        .await;
        let payloads: Vec<EmailJob> = (0..jobs)
            .map(|n| EmailJob {
                envelope: Default::default(),
                to: format!("r{round}n{n}@example.com"),
                category: Category::Transactional,
                content: EmailContent::Raw {
                    subject: "Bench".into(),
                    text: Some("Hello".into()),
                    html: None,
                },
            })
            .collect();
        let cpu_before = common::cpu_seconds(worker.id());
        let start = Instant::now();
        let mut conn = db.pool.acquire().await.expect("conn");
        for chunk in payloads.chunks(500) {
            let batch: Vec<NewEmail<'_>> = chunk
                .iter()
                .map(|job| NewEmail {
                    job,
                    run_at: None,
                    max_attempts: 3,
                    idempotency: None,
                })
                .collect();
            email::enqueue_many(&mut conn, &batch, false)
                .await
                .expect("enqueue");
        }
        drop(conn);
        let target = before + jobs as i64;
        while count(
            &db.pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'herald.email' AND status = 'Done'",
        )
        .await
            < target
        {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "emails did not drain"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rate = jobs as f64 / start.elapsed().as_secs_f64();
        rates[mode].push(rate);
        let per_email = (common::cpu_seconds(worker.id()) - cpu_before) * 1000.0 / jobs as f64;
        cpu[mode].push(per_email);
        let recorded = count(&db.pool, "SELECT count(*) FROM webhook_events").await;
        if mode == 2 {
            // Every event delivered before the next round starts.
            // One endpoint: each event becomes one delivery. Polled gently, so that the bench's
            // own queries cost little of the CPU measured.
            while count(
                &db.pool,
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'",
            )
            .await
                < recorded
            {
                assert!(
                    start.elapsed() < Duration::from_secs(600),
                    "webhooks did not drain"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // This mode's CPU is the email's and its webhook's, all delivered.
            let with_webhook =
                (common::cpu_seconds(worker.id()) - cpu_before) * 1000.0 / jobs as f64;
            cpu[mode].pop();
            cpu[mode].push(with_webhook);
            println!(
                "round {round}: {}: {rate:.0} emails/s; {recorded} events, all delivered {:.1} s after the first enqueue, {with_webhook:.2} CPU ms per email and its webhook",
                MODES[mode],
                start.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "round {round}: {}: {rate:.0} emails/s, {per_email:.2} CPU ms per email; {recorded} events recorded",
                MODES[mode]
            );
        }
        let _ = worker.kill();
        let _ = worker.wait();
        // Each round starts from the same state: an empty outbox (the outbox-only rounds leave
        // theirs waiting), no finished jobs or ledger rows from earlier rounds to scan.
        for sql in [
            "DELETE FROM webhook_events",
            "DELETE FROM apalis.jobs",
            "DELETE FROM email_deliveries",
            "VACUUM ANALYZE apalis.jobs, email_deliveries, webhook_events, webhook_deliveries",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&db.pool)
                .await
                .expect("clear");
        }
    }
    let none = common::median(&rates[0]);
    let outbox = common::median(&rates[1]);
    let both = common::median(&rates[2]);
    // Ratios within each three-round cycle (run back to back), then their median: the machine's
    // drift between cycles cancels out.
    let ratio = |mode: usize| {
        let per_cycle: Vec<f64> = rates[mode]
            .iter()
            .zip(&rates[0])
            .map(|(with, without)| with / without)
            .collect();
        common::median(&per_cycle)
    };
    let (outbox_ratio, both_ratio) = (ratio(1), ratio(2));
    let cpu_ratio = |mode: usize| {
        let per_cycle: Vec<f64> = cpu[mode]
            .iter()
            .zip(&cpu[0])
            .map(|(with, without)| with / without)
            .collect();
        common::median(&per_cycle)
    };
    println!(
        "email path (medians of {rounds}): no subscriber {none:.0}/s; one subscribed endpoint, outbox only {outbox:.0}/s; delivering meanwhile {both:.0}/s"
    );
    println!(
        "ratios to no subscriber (median of the {rounds} cycles' ratios): outbox only {outbox_ratio:.3} (the outbox may cost at most 10 %), delivering meanwhile {both_ratio:.3}"
    );
    println!(
        "CPU per email (worker + PostgreSQL, medians): no subscriber {:.2} ms; outbox only {:.2} ms (x{:.3}); delivering meanwhile {:.2} ms (x{:.3}: the email and its webhook)",
        common::median(&cpu[0]),
        common::median(&cpu[1]),
        cpu_ratio(1),
        common::median(&cpu[2]),
        cpu_ratio(2)
    );
    println!("BENCH-KEY email_path_with_webhook_vs_none={outbox_ratio:.3}");
    println!(
        "BENCH-KEY email_cpu_with_webhook_vs_none={:.3}",
        cpu_ratio(1)
    );
    println!("BENCH-KEY email_path_delivering_webhooks_vs_none={both_ratio:.3}");

    // 2. Delivery rate: `events` events queued at once, drained by one worker process.
    sqlx::query("UPDATE webhook_endpoints SET enabled = true WHERE id = $1")
        .bind(endpoint)
        .execute(&db.pool)
        .await
        .expect("enable");
    let before = count(
        &db.pool,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'",
    )
    .await;
    sqlx::query(
        "INSERT INTO email_suppressions (email, suppression_type, reason)
         SELECT 'bench' || g || '@example.com', 'manual', 'bench' FROM generate_series(1, $1) g",
    )
    .bind(i32::try_from(events).unwrap_or(i32::MAX))
    .execute(&db.pool)
    .await
    .expect("events");
    let start = Instant::now();
    let mut worker = common::spawn_worker(&db.url, &stub.url, 20, 16);
    let target = before + events as i64;
    while count(
        &db.pool,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'",
    )
    .await
        < target
    {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "deliveries did not drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    println!(
        "webhook delivery: {events} events in {:.1} s, {rate:.0} events/s (one worker process, start-up included)",
        start.elapsed().as_secs_f64()
    );
    println!("BENCH-KEY webhook_events_per_s={rate:.0}");
    let _ = worker.kill();
    let _ = worker.wait();
    db.drop_db().await;
}
