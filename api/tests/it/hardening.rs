//! The hardened edges: token scopes, the dashboard session (POST login, signed cookie, CSRF,
//! headers), `/metrics` only on its own listener, `/ready` without details.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::api::{SEND_TOKEN, TOKEN, TestApp};

/// A request with `token`, the JSON body if any: status and JSON answer.
pub(crate) async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(
            method.parse().expect("method"),
            format!("{}{path}", app.url),
        )
        .header("authorization", format!("Bearer {token}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_send_token_sends_and_follows_but_gets_403_elsewhere(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let (status, body) = call(
        &app,
        "POST",
        "/v1/emails",
        SEND_TOKEN,
        Some(json!({"to": "scoped@example.com", "subject": "s", "text": "t"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().expect("id").to_owned();
    assert_eq!(
        call(&app, "GET", &format!("/v1/jobs/{id}"), SEND_TOKEN, None)
            .await
            .0,
        200
    );
    for (method, path) in [
        ("GET", "/v1/suppressions".to_owned()),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("POST", format!("/v1/jobs/{id}/retry")),
        ("GET", "/v1/schedules".to_owned()),
        ("GET", "/v1/compliance".to_owned()),
        ("DELETE", "/v1/suppressions/a%40example.com".to_owned()),
    ] {
        let (status, body) = call(&app, method, &path, SEND_TOKEN, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
    }
    // The full-access token reaches them; the job was not cancelled by the refused call.
    assert_eq!(
        call(&app, "GET", "/v1/suppressions", TOKEN, None).await.0,
        200
    );
    let (_, job) = call(&app, "GET", &format!("/v1/jobs/{id}"), TOKEN, None).await;
    assert_eq!(job["status"], "queued");
    // Unknown tokens and near misses are 401, whatever their length.
    for bad in [
        "",
        "x",
        &TOKEN[..TOKEN.len() - 1],
        &format!("{TOKEN}x"),
        &format!("send:{SEND_TOKEN}"),
    ] {
        let (status, body) = call(&app, "GET", "/v1/suppressions", bad, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{bad:?}"
        );
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_bearer_scheme_is_matched_case_insensitively(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let res = app
            .http
            .get(format!("{}/v1/suppressions", app.url))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200, "{scheme}");
    }
    let basic = app
        .http
        .get(format!("{}/v1/suppressions", app.url))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .expect("request");
    assert_eq!(basic.status(), 401);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn metrics_are_served_only_on_their_own_listener(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let public = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("request");
    assert_eq!(public.status(), 404, "not on API_ADDR");
    let internal = app
        .http
        .get(&app.metrics_url)
        .send()
        .await
        .expect("request");
    assert_eq!(internal.status(), 200);
    assert!(
        internal
            .text()
            .await
            .expect("text")
            .contains("# HELP herald_emails")
    );
    let other = app
        .http
        .get(app.metrics_url.replace("/metrics", "/v1/suppressions"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(
        other.status(),
        404,
        "the metrics listener serves nothing else"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn ready_says_not_ready_without_details(pool: PgPool) {
    // No queue schema: the schema check fails, and the answer names nothing of it.
    let app = TestApp::spawn(pool, false).await;
    let res = app
        .http
        .get(format!("{}/ready", app.url))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 503);
    let text = res.text().await.expect("text");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"]["code"], "not_ready");
    for leak in [
        "apalis",
        "relation",
        "schema",
        "role",
        "migration",
        "sqlx",
        "postgres",
    ] {
        assert!(!text.to_lowercase().contains(leak), "{leak} in {text}");
    }
}

/// A client that keeps no cookies and follows no redirects, so every header can be checked.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn login(app: &TestApp, token: &str, origin: Option<&str>) -> reqwest::Response {
    let mut req = raw_client()
        .post(format!("{}/admin/login", app.url))
        .form(&[("token", token)]);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.expect("login")
}

fn session_of(res: &reqwest::Response) -> String {
    res.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("set-cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned()
}

async fn dashboard(app: &TestApp, cookie: &str) -> reqwest::Response {
    raw_client()
        .get(format!("{}/admin", app.url))
        .header("cookie", cookie)
        .send()
        .await
        .expect("dashboard")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_dashboard_session_is_a_signed_cookie_from_a_post_login(pool: PgPool) {
    let secret = "a-dashboard-session-secret-of-32-chars!";
    let app = TestApp::spawn_with(pool.clone(), true, &[("ADMIN_SESSION_SECRET", secret)]).await;
    let origin = app.url.clone();

    // The token never travels in a URL: the old GET login sets nothing.
    let old = raw_client()
        .get(format!("{}/admin/login?token={TOKEN}", app.url))
        .send()
        .await
        .expect("get");
    assert!(old.headers().get("set-cookie").is_none());
    // Without a session: to the login form.
    let res = dashboard(&app, "").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/admin/login");

    // Wrong token, a send-only token, another origin: no session.
    assert_eq!(
        login(&app, "wrong-token-wrong-token-wrong-token", Some(&origin))
            .await
            .status(),
        401
    );
    assert_eq!(login(&app, SEND_TOKEN, Some(&origin)).await.status(), 401);
    assert_eq!(
        login(&app, TOKEN, Some("https://evil.example"))
            .await
            .status(),
        403
    );
    assert_eq!(login(&app, TOKEN, None).await.status(), 403);

    let ok = login(&app, TOKEN, Some(&origin)).await;
    assert_eq!(ok.status(), 303);
    let set = ok.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for part in [
        "__Host-herald_admin=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=43200",
    ] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains(TOKEN) && !set.contains("Domain"), "{set}");
    let session = session_of(&ok);

    let page = dashboard(&app, &session).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("default-src 'none'")
            && !csp.contains("unsafe-inline")
            && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.expect("html");
    assert!(html.contains("<h1>Herald queues</h1>"));

    // Forged, tampered and expired cookies are refused.
    let value = session.split_once('=').expect("pair").1.to_owned();
    // v2.<session id>.<issued>.<expires>.<fingerprint>.<mac>
    let parts: Vec<&str> = value.split('.').collect();
    let longer = format!(
        "v2.{}.{}.{}.{}.{}",
        parts[1],
        parts[2],
        parts[3].parse::<u64>().expect("n") + 86_400,
        parts[4],
        parts[5]
    );
    let signed = |body: String| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mac: String = ring::hmac::sign(&key, body.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{body}.{mac}")
    };
    // Signed with the right secret, but over.
    let expired = signed(format!("v2.{}.1000.2000.{}", parts[1], parts[4]));
    // Signed with the right secret, for a session the server never opened.
    let issued = parts[2];
    let made_up = signed(format!(
        "v2.{}.{issued}.{}.{}",
        uuid::Uuid::from_u128(0x0193_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b),
        parts[3],
        parts[4]
    ));
    for forged in [
        format!("{}0", value),
        value.replacen("v2.", "v3.", 1),
        longer,
        expired,
        made_up,
        format!(
            "v2.{}.1.99999999999.0000000000000000.00",
            uuid::Uuid::from_u128(0x0193_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b)
        ),
        String::new(),
    ] {
        let res = dashboard(&app, &format!("__Host-herald_admin={forged}")).await;
        assert_eq!(res.status(), 303, "{forged}");
    }
    // A session from another secret (another deployment) is worthless here.
    let other = TestApp::spawn_with(
        pool.clone(),
        false,
        &[("ADMIN_SESSION_SECRET", "another-secret-another-secret-0000")],
    )
    .await;
    assert_eq!(dashboard(&other, &session).await.status(), 303);
    // Removing the token the session came from revokes it, even with the same secret.
    let rotated = TestApp::spawn_with(
        pool,
        false,
        &[
            ("ADMIN_SESSION_SECRET", secret),
            ("API_TOKEN", ""),
            ("API_TOKENS", "admin:a-brand-new-admin-token-0123456789"),
        ],
    )
    .await;
    assert_eq!(dashboard(&rotated, &session).await.status(), 303);
    let same_token = TestApp::spawn_with(
        rotated.pool.clone(),
        false,
        &[("ADMIN_SESSION_SECRET", secret)],
    )
    .await;
    assert_eq!(
        dashboard(&same_token, &session).await.status(),
        200,
        "the same token and secret keep it"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn dashboard_actions_need_the_csrf_token_and_this_origin(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let (_, body) = app
        .post(
            "/v1/emails",
            json!({"to": "csrf@example.com", "subject": "s", "text": "t"}),
        )
        .await;
    let id = body["job_id"].as_str().expect("id").to_owned();
    sqlx::query("UPDATE apalis.jobs SET status = 'Failed', attempts = 8, max_attempts = 8, done_at = now() WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .expect("fail");
    let session = session_of(&login(&app, TOKEN, Some(&app.url)).await);
    let html = dashboard(&app, &session).await.text().await.expect("html");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the retry form carries a CSRF token")
        .to_owned();
    let retry = async |form: &[(&str, &str)], origin: Option<&str>| {
        let mut req = raw_client()
            .post(format!("{}/admin/jobs/{id}/retry", app.url))
            .header("cookie", &session)
            .form(form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.expect("retry").status().as_u16()
    };
    assert_eq!(retry(&[], Some(&app.url)).await, 403, "no CSRF token");
    assert_eq!(
        retry(&[("csrf", "0000")], Some(&app.url)).await,
        403,
        "a wrong one"
    );
    assert_eq!(
        retry(&[("csrf", &csrf)], Some("https://evil.example")).await,
        403,
        "another origin"
    );
    assert_eq!(
        retry(&[("csrf", &csrf)], None).await,
        403,
        "no origin at all"
    );
    let (_, job) = app.send("GET", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(job["status"], "failed", "nothing changed yet");
    assert_eq!(
        retry(&[("csrf", &csrf)], Some(&app.url)).await,
        200,
        "first a page that asks to confirm"
    );
    let (_, job) = app.send("GET", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(job["status"], "failed", "asking changes nothing");
    assert_eq!(
        retry(&[("csrf", &csrf), ("confirm", "yes")], Some(&app.url)).await,
        303
    );
    let (_, job) = app.send("GET", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(job["status"], "queued");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_request_over_the_timeout_gets_a_json_503_and_the_limit_queues_the_rest(pool: PgPool) {
    // One request at a time, one second each at most; a lock held here makes a request wait.
    let app = TestApp::spawn_with(
        pool.clone(),
        true,
        &[
            ("API_REQUEST_TIMEOUT_SECS", "1"),
            ("API_MAX_CONCURRENT_REQUESTS", "1"),
        ],
    )
    .await;
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE email_suppressions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let started = std::time::Instant::now();
    let (slow, quick) = tokio::join!(call(&app, "GET", "/v1/suppressions", TOKEN, None), async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let res = app
            .http
            .get(format!("{}/health", app.url))
            .send()
            .await
            .expect("health");
        (res.status().as_u16(), started.elapsed())
    });
    assert_eq!(
        (slow.0, slow.1["error"]["code"].as_str()),
        (503, Some("request_timeout")),
        "{slow:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The second request waited for the first's place (the limit is 1), then was served.
    assert_eq!(quick.0, 200);
    assert!(
        quick.1 >= std::time::Duration::from_millis(950),
        "{:?}",
        quick.1
    );
    holder.rollback().await.expect("rollback");
    assert_eq!(
        call(&app, "GET", "/v1/suppressions", TOKEN, None).await.0,
        200
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn header_injection_and_unicode_tricks_are_refused_at_enqueue(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let long = "x".repeat(999);
    let cases: Vec<(&str, Value)> = vec![
        (
            "a template whose data puts a line break into the subject",
            json!({"to": "a@example.com", "template": "notification",
                   "data": {"title": "Hi\r\nBcc: victim@example.com", "body": "b"}}),
        ),
        (
            "a rendered subject over 998 bytes",
            json!({"to": "a@example.com", "template": "notification", "data": {"title": long, "body": "b"}}),
        ),
        (
            "a raw subject with LF",
            json!({"to": "a@example.com", "subject": "Hi\nBcc: x@y.z", "text": "t"}),
        ),
        (
            "a raw subject with a right-to-left override",
            json!({"to": "a@example.com", "subject": "Invoice \u{202E}fdp.exe", "text": "t"}),
        ),
        (
            "a zero-width space in the address",
            json!({"to": "ad\u{200B}a@example.com", "subject": "s", "text": "t"}),
        ),
        (
            "a non-ASCII local part",
            json!({"to": "adä@example.com", "subject": "s", "text": "t"}),
        ),
    ];
    for (what, body) in cases {
        let (status, answer) = app.post("/v1/emails", body).await;
        assert_eq!(status, 422, "{what}: {answer}");
        let code = answer["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "validation_failed" || code == "template_data_invalid",
            "{what}: {answer}"
        );
    }
    let jobs: i64 = crate::api::job_count(&app.pool).await;
    assert_eq!(jobs, 0, "nothing refused was queued");
    // A Unicode domain is queued in Punycode, the form SES and DNS use.
    let (status, body) = app
        .post(
            "/v1/emails",
            json!({"to": "ada@Bücher.example", "subject": "s", "text": "t"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let to = herald_shared::email::ledger::record(
        &mut app.pool.acquire().await.expect("conn"),
        body["job_id"].as_str().expect("job id"),
    )
    .await
    .expect("query")
    .expect("row")
    .recipient;
    assert_eq!(to, "ada@xn--bcher-kva.example");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_public_listener_serves_only_unsubscribe_refuses_bad_tokens_and_limits_each_client(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, true, &[("PUBLIC_RATE_LIMIT_PER_MINUTE", "4")]).await;
    let http = reqwest::Client::new();
    for path in [
        "/v1/emails",
        "/admin",
        "/metrics",
        "/openapi.json",
        "/unsubscribe",
    ] {
        let res = http
            .get(format!("{}{path}", app.public_url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 404, "{path} on PUBLIC_ADDR");
    }
    let signer = herald_shared::unsubscribe::Signer::from_list(crate::api::UNSUBSCRIBE_SECRET)
        .expect("signer");
    let transactional = signer.sign(
        "a@example.com",
        herald_shared::email::Category::Transactional,
        chrono::Utc::now(),
    );
    let foreign = herald_shared::unsubscribe::Signer::from_list(
        "another-deployments-secret-0123456789abcdef",
    )
    .expect("signer")
    .sign(
        "a@example.com",
        herald_shared::email::Category::Marketing,
        chrono::Utc::now(),
    );
    // Each refused without a change; the fourth request of the minute is the last allowed.
    for token in [
        transactional.as_str(),
        foreign.as_str(),
        "%00%0d%0a",
        &"x".repeat(700),
    ] {
        let res = http
            .post(format!("{}/unsubscribe/{token}", app.public_url))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 400, "{token}");
        let page = res.text().await.expect("page");
        assert!(
            page.contains("not valid") && !page.contains("<script"),
            "{page}"
        );
    }
    let res = http
        .get(format!("{}/unsubscribe/{foreign}", app.public_url))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 429, "the fifth request in a minute");
    let (_, list) = app.send("GET", "/v1/suppressions", None, &[]).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_template_that_loops_or_grows_without_bound_is_refused_and_health_stays_fast(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, true, &[("API_REQUEST_TIMEOUT_SECS", "2")]).await;
    let put = |name: &str, html: &str, sample: Value| {
        let body = json!({"subject": "Hi", "text": "t", "html": html, "sample_data": sample});
        let path = format!("/v1/templates/{name}");
        let app = &app;
        async move { app.send("PUT", &path, Some(&body.to_string()), &[]).await }
    };
    // 6000 x 6000 iterations over the sample data, while /health is asked every 10 ms.
    let looped = "{% for i in range(n) %}{% for j in range(n) %}x{% endfor %}{% endfor %}";
    let started = std::time::Instant::now();
    let health = async {
        let mut slowest = std::time::Duration::ZERO;
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            let asked = std::time::Instant::now();
            let res = app
                .http
                .get(format!("{}/health", app.url))
                .send()
                .await
                .expect("health");
            assert_eq!(res.status(), 200);
            slowest = slowest.max(asked.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        slowest
    };
    let ((status, answer), slowest) =
        tokio::join!(put("looped", looped, json!({"n": 6000})), health);
    let took = started.elapsed();
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "template_invalid", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("template instructions"),
        "{answer}"
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert!(
        slowest < std::time::Duration::from_millis(50),
        "/health took {slowest:?} while the template rendered"
    );

    // 12 MB of HTML from a short loop: refused at PUT…
    let line = "x".repeat(125);
    let grows = format!("{{% for i in range(n) %}}{line}{{% endfor %}}");
    let (status, answer) = put("grows", &grows, json!({"n": 100_000})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bytes"),
        "{answer}"
    );
    // …and at preview, for a template whose sample renders small.
    let (status, answer) = put("grows", &grows, json!({"n": 1})).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = app
        .post(
            "/v1/templates/grows/preview",
            json!({"data": {"n": 100_000}}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    // And when an email is queued with such data.
    let (status, answer) = app
        .post(
            "/v1/emails",
            json!({"to": "big@example.com", "template": "grows", "data": {"n": 100_000}}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = app
        .post("/v1/templates/grows/preview", json!({"data": {"n": 2}}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["html"], format!("{line}{line}"));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn sign_out_ends_the_session_on_the_server_so_a_copied_cookie_stops_working(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let session = session_of(&login(&app, TOKEN, Some(&app.url)).await);
    let copy = session.clone();
    assert_eq!(dashboard(&app, &session).await.status(), 200);
    let out = raw_client()
        .post(format!("{}/admin/logout", app.url))
        .header("cookie", &session)
        .header("origin", &app.url)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    let res = dashboard(&app, &copy).await;
    assert_eq!(
        res.status(),
        303,
        "the copy kept before sign-out is refused"
    );
    assert_eq!(res.headers()["location"], "/admin/login");
    let ended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM admin_sessions WHERE ended_at IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .expect("sessions");
    assert_eq!(ended, 1);
    // A new sign-in works as before.
    let again = session_of(&login(&app, TOKEN, Some(&app.url)).await);
    assert_eq!(dashboard(&app, &again).await.status(), 200);
}

/// A tracing subscriber for this thread that keeps what is logged.
fn captured_logs() -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buf").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(std::sync::Arc::default());
    let keep = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || keep.clone())
        .finish();
    (buf.0, tracing::subscriber::set_default(subscriber))
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn failed_sign_ins_are_throttled_per_client_and_overall_and_logged(pool: PgPool) {
    let (logs, _guard) = captured_logs();
    // Behind a proxy that appends the client's address, so each test client has its own.
    let app = TestApp::spawn_with(pool, true, &[("PUBLIC_TRUST_PROXY", "true")]).await;
    let attempt = async |client: &str, token: &str| {
        let res = raw_client()
            .post(format!("{}/admin/login", app.url))
            .header("origin", &app.url)
            .header("x-forwarded-for", client)
            .form(&[("token", token)])
            .send()
            .await
            .expect("login");
        let retry = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        (res.status().as_u16(), retry)
    };
    let wrong = "wrong-token-wrong-token-wrong-token";
    let per_client = herald_api::routes::admin::SIGN_IN_FAILURES_PER_CLIENT as usize;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(attempt("198.51.100.1", wrong).await);
    }
    assert!(
        statuses[..per_client].iter().all(|s| *s == (401, None)),
        "{statuses:?}"
    );
    for (status, retry) in &statuses[per_client..] {
        assert_eq!(*status, 429, "{statuses:?}");
        assert!(
            retry.is_some_and(|r| (1..=900).contains(&r)),
            "{statuses:?}"
        );
    }
    // Even the right token waits out the budget from that client…
    assert_eq!(attempt("198.51.100.1", TOKEN).await.0, 429);
    // …while another client signs in (and its IPv6 /64 neighbours share its budget).
    assert_eq!(attempt("198.51.100.2", TOKEN).await.0, 303);
    for n in 0..per_client {
        assert_eq!(attempt(&format!("2001:db8:9:9::{n:x}"), wrong).await.0, 401);
    }
    assert_eq!(
        attempt("2001:db8:9:9::ffff", wrong).await.0,
        429,
        "same /64"
    );

    // Overall: many clients with a few failures each.
    let overall = herald_api::routes::admin::SIGN_IN_FAILURES_OVERALL as usize;
    let mut n = 2 * per_client; // failures counted so far
    let mut client = 0;
    while n < overall {
        client += 1;
        for _ in 0..per_client.min(overall - n) {
            assert_eq!(attempt(&format!("203.0.113.{client}"), wrong).await.0, 401);
            n += 1;
        }
    }
    let (status, retry) = attempt("192.0.2.200", TOKEN).await;
    assert_eq!(
        status, 429,
        "every client waits once the overall budget is spent"
    );
    assert!(retry.is_some_and(|r| (1..=60).contains(&r)));

    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    let failures = logged
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("console sign-in failed"))
        .count();
    assert_eq!(failures, overall, "each failure is logged at warn");
    assert!(
        logged.contains("client=198.51.100.1"),
        "with the client address"
    );
    assert!(
        !logged.contains(wrong) && !logged.contains(TOKEN),
        "never the token"
    );
}
