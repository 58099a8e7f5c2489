//! The queue dashboard in a real browser (headless Chromium driven through ChromeDriver's
//! WebDriver protocol): sign in with the POST form, read the page, press a retry button.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::api::{TOKEN, TestApp};

fn tool(var: &str, default: &str, package: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is needed: scripts/test.sh installs it (apt-get install {package})"
    );
    path
}

/// A ChromeDriver process and one headless Chromium session, closed on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let chromium = tool("HERALD_CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = tool(
            "HERALD_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(res) = http.get(format!("{base}/status")).send().await
                && res.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not answer on {base}");
        let profile = tempfile::tempdir().expect("profile dir");
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ]}
            }}}))
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Self {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        assert!(
            answer["value"].get("error").is_none(),
            "{method} {path}: {answer}"
        );
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    async fn source(&self) -> String {
        self.command("GET", "/source", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().expect("element id").to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Waits (up to 10 s) until the page's URL ends with `suffix`: a click that submits a form
    /// can return before the navigation it starts has finished.
    async fn wait_for_url(&self, suffix: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.current_url().await;
            if url.ends_with(suffix) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still at {url}, waiting for …{suffix}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn current_url(&self) -> String {
        self.command("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

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
        if dom.contains("</table></body>") {
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
    browser.wait_for_url("/admin").await;

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
