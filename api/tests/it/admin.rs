//! The queue dashboard, loaded in headless Chromium as a person would see it.

use std::process::Command;

use serde_json::json;
use sqlx::PgPool;

use crate::api::{TOKEN, TestApp};

fn chromium() -> String {
    let path = std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "headless Chromium is needed at {path}: scripts/test.sh installs it (apt-get install chromium)"
    );
    path
}

/// The page's DOM after Chromium loaded it (and ran its redirects). Runs off the async runtime,
/// which must keep serving the page meanwhile.
async fn dump_dom(url: &str) -> String {
    let url = url.to_owned();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::task::spawn_blocking(move || dump_dom_blocking(&url)),
    )
    .await
    .expect("chromium finished within 60 s")
    .expect("chromium task")
}

fn dump_dom_blocking(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--timeout=30000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_dashboard_shows_the_queues_and_failures_in_headless_chromium(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let (_, queued) = app
        .post(
            "/v1/emails",
            json!({"to": "dash@example.com", "subject": "s", "text": "t"}),
        )
        .await;
    let (_, broken) = app
        .post(
            "/v1/emails",
            json!({"to": "broken@example.com", "subject": "s", "text": "t"}),
        )
        .await;
    let broken = broken["job_id"].as_str().expect("id").to_owned();
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Failed', attempts = 8, max_attempts = 8, done_at = now(),
                last_result = '{\"Err\": \"permanent: MessageRejected: <not verified>\"}' WHERE id = $1",
    )
    .bind(&broken)
    .execute(&app.pool)
    .await
    .expect("fail a job");

    // Without the token there is nothing to see.
    let denied = dump_dom(&format!("{}/admin", app.url)).await;
    assert!(!denied.contains("data-queue"), "{denied}");

    let dom = dump_dom(&format!("{}/admin/login?token={TOKEN}", app.url)).await;
    assert!(dom.contains("<h1>Herald queues</h1>"), "{dom}");
    assert!(dom.contains(r#"data-queue="herald.email""#), "{dom}");
    assert!(dom.contains(r#"data-queue="herald.maintenance""#), "{dom}");
    assert!(
        dom.contains(&format!("/admin/jobs/{broken}/retry")),
        "the failed job has a retry button: {dom}"
    );
    assert!(
        dom.contains("&lt;not verified&gt;"),
        "errors are escaped: {dom}"
    );
    assert!(
        dom.contains(queued["job_id"].as_str().expect("id")),
        "recent jobs are listed"
    );

    // The retry button works with the session cookie.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = client
        .get(format!("{}/admin/login?token={TOKEN}", app.url))
        .send()
        .await
        .expect("login");
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(
        !cookie.contains(TOKEN),
        "the cookie does not carry the token"
    );
    let session = cookie.split(';').next().expect("pair").to_owned();
    let res = client
        .post(format!("{}/admin/jobs/{broken}/retry", app.url))
        .header("cookie", session)
        .send()
        .await
        .expect("retry");
    assert_eq!(res.status(), 303);
    let (_, job) = app
        .send("GET", &format!("/v1/jobs/{broken}"), None, &[])
        .await;
    assert_eq!(job["status"], "queued");
    let res = client
        .post(format!("{}/admin/jobs/{broken}/retry", app.url))
        .send()
        .await
        .expect("retry");
    assert_eq!(res.status(), 401, "no cookie, no retry");
}
