//! The queue dashboard in a real browser (headless Chromium driven through ChromeDriver's
//! WebDriver protocol): sign in with the POST form, read the page, press a retry button.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::api::{TOKEN, TestApp};
use crate::browser::Browser;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_dashboard_signs_in_shows_the_queues_and_retries_in_a_real_browser(pool: PgPool) {
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

    let browser = Browser::start().await;
    // Without a session the dashboard sends the browser to the sign-in form.
    browser.goto(&format!("{}/admin", app.url)).await;
    assert!(browser.current_url().await.ends_with("/admin/login"));
    let form = browser.source().await;
    assert!(!form.contains("data-queue"), "{form}");

    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/admin").await;
    let mut dom = browser.source().await;
    for _ in 0..50 {
        if dom.contains("</main></body>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        dom = browser.source().await;
    }
    assert!(!browser.current_url().await.contains(TOKEN));
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

    // The retry button posts its CSRF token from this origin, as a browser does.
    browser
        .click(&format!(
            "form[action=\"/admin/jobs/{broken}/retry\"] button"
        ))
        .await;
    // The console asks first; the confirmation posts the same form with `confirm=yes`.
    browser.wait_for_text("id=\"confirm\"", false, 10).await;
    browser.click("#confirm").await;
    // The click can return before the POST it starts has been answered: wait for its effect.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, job) = app
            .send("GET", &format!("/v1/jobs/{broken}"), None, &[])
            .await;
        if job["status"] == "queued" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retry did not take: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait_for_url(&format!("/admin/jobs/{broken}")).await;

    // Signing out clears the cookie: back to the form.
    browser.click("form[action=\"/admin/logout\"] button").await;
    browser.wait_for_url("/admin/login").await;
    browser.goto(&format!("{}/admin", app.url)).await;
    assert!(browser.current_url().await.ends_with("/admin/login"));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_unsubscribe_page_has_no_script_and_its_button_unsubscribes_in_a_real_browser(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool, true).await;
    let signer = herald_shared::unsubscribe::Signer::from_list(crate::api::UNSUBSCRIBE_SECRET)
        .expect("signer");
    let token = signer.sign(
        "Reader@Example.com",
        herald_shared::email::Category::Marketing,
        chrono::Utc::now(),
    );
    let link = format!("{}/unsubscribe/{token}", app.public_url);
    let browser = Browser::start().await;
    browser.goto(&link).await;
    let page = browser.source().await;
    assert!(!page.contains("<script"), "no script: {page}");
    assert!(
        page.contains("r***@example.com"),
        "the masked address: {page}"
    );
    let (status, _) = app
        .send("GET", "/v1/suppressions/reader@example.com", None, &[])
        .await;
    assert_eq!(status, 404, "opening the page suppresses nothing");

    browser.click("button[type=submit]").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, row) = app
            .send("GET", "/v1/suppressions/reader@example.com", None, &[])
            .await;
        if status == 200 {
            assert_eq!(row["type"], "unsubscribe", "{row}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the button did not unsubscribe"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = browser.source().await;
    assert!(done.contains("no more marketing email"), "{done}");
}
