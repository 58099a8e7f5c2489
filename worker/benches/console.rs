//! How fast the console's pages render over 100,000 jobs (`BENCH_CONSOLE_JOBS`): each page asked
//! `BENCH_CONSOLE_RUNS` times (30) after three warm-ups, through the real router in this process,
//! on a database of its own. Prints the median and p95 per page; the target is under 200 ms.

mod common;

use std::time::{Duration, Instant};

use herald_api::{ApiConfig, Application};
use herald_shared::email::{self, Category, EmailContent, EmailJob, NewEmail};

const TOKEN: &str = "bench-console-token-0123456789abcdef";

#[tokio::main]
async fn main() {
    let jobs = common::env_usize("BENCH_CONSOLE_JOBS", 100_000);
    let runs = common::env_usize("BENCH_CONSOLE_RUNS", 30);
    let db = common::BenchDb::create("console", 8).await;
    let started = Instant::now();
    let payloads: Vec<EmailJob> = (0..jobs)
        .map(|n| EmailJob {
            envelope: Default::default(),
            to: format!("user{n}@example.com"),
            category: if n % 10 == 0 {
                Category::Marketing
            } else {
                Category::Transactional
            },
            content: EmailContent::Raw {
                subject: format!("Message {n}"),
                text: Some("Hello".into()),
                html: None,
            },
        })
        .collect();
    let mut conn = db.pool.acquire().await.expect("conn");
    for chunk in payloads.chunks(1000) {
        let batch: Vec<NewEmail<'_>> = chunk
            .iter()
            .map(|job| NewEmail {
                job,
                run_at: None,
                max_attempts: 8,
                idempotency: None,
            })
            .collect();
        email::enqueue_many(&mut conn, &batch, false)
            .await
            .expect("enqueue");
    }
    // A queue as it looks after a day: most done and sent, some failed for good, some waiting.
    for sql in [
        "UPDATE apalis.jobs SET status = 'Done', attempts = 1, done_at = now(), last_result = '{\"Ok\": null}'
         WHERE right(id, 1) NOT IN ('0', '1')",
        "UPDATE apalis.jobs SET status = 'Failed', attempts = 8, done_at = now(), last_result = '{\"Err\": \"permanent: MessageRejected\"}'
         WHERE right(id, 2) = '00'",
        "UPDATE email_deliveries SET status = 'sent', attempts = 1, sent_at = now(),
                ses_message_id = 'bench-' || job_id WHERE right(job_id, 1) NOT IN ('0', '1')",
        "VACUUM ANALYZE",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .expect("shape the queue");
    }
    let some: String =
        sqlx::query_scalar("SELECT id FROM apalis.jobs ORDER BY id OFFSET $1 LIMIT 1")
            .bind(i64::try_from(jobs / 2).unwrap_or(0))
            .fetch_one(&mut *conn)
            .await
            .expect("a job");
    drop(conn);
    println!(
        "console bench: {jobs} jobs written in {:.1} s on PostgreSQL {}",
        started.elapsed().as_secs_f64(),
        db.version
    );

    let env: std::collections::HashMap<String, String> = [
        ("API_TOKEN", TOKEN),
        ("API_ADDR", "127.0.0.1:0"),
        ("API_METRICS_ADDR", "127.0.0.1:0"),
        ("FRONTEND_URL", "https://app.example.com"),
        (
            "UNSUBSCRIBE_SECRETS",
            "bench-unsubscribe-secret-0123456789abcdef",
        ),
        ("PUBLIC_URL", "https://mail.example.com"),
        ("EMAIL_FROM", "noreply@herald.test"),
        ("DATABASE_URL", db.url.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = ApiConfig::from_source(&env).expect("config");
    let app = Application::build(config, db.pool.clone())
        .await
        .expect("bind");
    let url = format!("http://{}", app.local_addr().expect("addr"));
    tokio::spawn(app.serve(std::future::pending()));
    let http = reqwest::Client::new();

    let pages = [
        "/admin".to_owned(),
        "/admin/jobs".to_owned(),
        "/admin/jobs?queue=herald.email&state=failed".to_owned(),
        "/admin/jobs?state=queued&category=marketing".to_owned(),
        format!("/admin/jobs?recipient=USER{}%40example.com", jobs / 3),
        format!("/admin/jobs?before={some}"),
        format!("/admin/jobs/{some}"),
        "/admin/suppressions".to_owned(),
        "/admin/schedules".to_owned(),
        "/admin/feedback".to_owned(),
    ];
    // Twice: every job from the last hour (the 24-hour aggregates read all of them), then the
    // same jobs spread over a week, as a queue in use looks.
    let mut worst = Vec::new();
    for shape in ["burst", "week"] {
        if shape == "week" {
            for sql in [
                "UPDATE email_deliveries SET created_at = now() - (abs(hashtext(job_id)) % 168) * interval '1 hour'",
                "UPDATE email_deliveries SET sent_at = created_at + interval '1 second', updated_at = created_at + interval '1 second'",
                "VACUUM ANALYZE",
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&db.pool)
                    .await
                    .expect("spread");
            }
        }
        println!(
            "\n{shape}: {:<45} {:>10} {:>10} {:>8}",
            "page", "median ms", "p95 ms", "bytes"
        );
        let mut slowest = (0.0_f64, String::new());
        for path in &pages {
            let (median, p95, bytes) = measure(&http, &url, path, runs).await;
            if median > slowest.0 {
                slowest = (median, path.clone());
            }
            println!("{path:<52} {median:>10.1} {p95:>10.1} {bytes:>8}");
        }
        println!(
            "BENCH-KEY console_{shape}_slowest_page_median_ms={:.1}",
            slowest.0
        );
        worst.push((shape, slowest));
    }
    for (shape, (ms, path)) in &worst {
        println!(
            "console pages over {jobs} jobs ({shape}): slowest median {ms:.1} ms ({path}; target < 200 ms): {}",
            if *ms < 200.0 { "met" } else { "NOT met" }
        );
    }
    db.drop_db().await;
}

/// Asks for `path` `runs` times after three warm-ups: median and p95 in ms, and the body's size.
async fn measure(http: &reqwest::Client, url: &str, path: &str, runs: usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for n in 0..runs + 3 {
        let t = Instant::now();
        let res = http
            .get(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("get");
        assert!(res.status().is_success(), "{path}: {}", res.status());
        bytes = res.bytes().await.expect("body").len();
        if n >= 3 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(times[times.len() / 2]),
        ms(common::percentile(&times, 0.95)),
        bytes,
    )
}
