//! The operator's console over HTTP (the browser test drives it end to end: worker's e2e tests):
//! filters, keyset pages, the job page, confirmations, suppressions and their audit trail.

use serde_json::json;
use sqlx::PgPool;

use crate::api::{TOKEN, TestApp};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// GET a console page with the admin token: status and HTML.
async fn get(app: &TestApp, path: &str) -> (u16, String) {
    let res = client()
        .get(format!("{}{path}", app.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    (res.status().as_u16(), res.text().await.expect("html"))
}

/// POST a console form with the admin token (no session, so no CSRF token): status, Location.
async fn post(app: &TestApp, path: &str, form: &[(&str, &str)]) -> (u16, String, String) {
    let res = client()
        .post(format!("{}{path}", app.url))
        .bearer_auth(TOKEN)
        .form(form)
        .send()
        .await
        .expect("post");
    let location = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        res.status().as_u16(),
        location,
        res.text().await.unwrap_or_default(),
    )
}

async fn send(app: &TestApp, to: &str, template: &str) -> String {
    let body = if template == "raw" {
        json!({"to": to, "subject": format!("Hello {to}"), "text": "t"})
    } else {
        json!({"to": to, "template": template, "data": {"title": "Note for Ada", "message": "m"}})
    };
    let (status, body) = app.post("/v1/emails", body).await;
    assert_eq!(status, 202, "{body}");
    body["job_id"].as_str().expect("id").to_owned()
}

fn job_rows(html: &str) -> Vec<String> {
    html.split("<tr class=\"job\" data-job=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_console_needs_a_session_and_every_page_renders(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    for path in [
        "/admin",
        "/admin/jobs",
        "/admin/suppressions",
        "/admin/schedules",
        "/admin/feedback",
        "/admin/webhooks",
    ] {
        let res = client()
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 303, "{path} without a session");
        assert_eq!(res.headers()["location"], "/admin/login");
        let (status, html) = get(&app, path).await;
        assert_eq!(status, 200, "{path}: {html}");
        assert!(html.contains("<header><strong>Herald</strong>"), "{path}");
        assert!(!html.contains("<script"), "{path} has no script");
    }
    let (_, overview) = get(&app, "/admin?refresh=1").await;
    assert!(
        overview.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "the live refresh is clamped to 5 s"
    );
    assert!(overview.contains("<svg id=\"hourly\""), "{overview}");
    assert!(!overview.contains("paused since"), "nothing is paused");
    herald_shared::compliance::pause(
        &mut app.pool.acquire().await.expect("conn"),
        herald_shared::email::Category::Marketing,
        "bounce rate 5.1 % over 24h",
    )
    .await
    .expect("pause");
    let (_, overview) = get(&app, "/admin").await;
    let marketing = overview
        .split(r#"data-category="marketing""#)
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("the marketing row");
    assert!(marketing.contains("paused since"), "{marketing}");
    assert!(
        marketing.contains("bounce rate 5.1 % over 24h"),
        "{marketing}"
    );
    assert!(overview.contains("<svg id=\"rates\""), "{overview}");
    // A webhook endpoint the worker disabled is a warning; one an operator turned off is not.
    sqlx::query(
        "INSERT INTO webhook_endpoints (url, events, secret, enabled, disabled_reason) VALUES
         ('https://down.example.com/h', '{email.sent}', 'c2VjcmV0', false, 'every delivery failed for a day'),
         ('https://paused.example.com/h', '{email.sent}', 'c2VjcmV0', false, 'disabled by an operator')",
    )
    .execute(&app.pool)
    .await
    .expect("endpoints");
    let (_, overview) = get(&app, "/admin").await;
    assert_eq!(
        overview.matches("class=\"warn disabled-endpoint\"").count(),
        1,
        "{overview}"
    );
    assert!(overview.contains("down.example.com"), "{overview}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn jobs_filter_by_recipient_state_template_and_page_by_keyset(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let mut ids = Vec::new();
    for n in 0..53 {
        ids.push(send(&app, &format!("bulk{n}@example.com"), "raw").await);
    }
    let ada = send(&app, "Ada.Lovelace@Example.com", "raw").await;
    let notification = send(&app, "grace@example.com", "notification").await;

    // Recipient: exact, case-insensitive, shown masked.
    let (status, html) = get(&app, "/admin/jobs?recipient=ADA.LOVELACE%40example.COM").await;
    assert_eq!(status, 200);
    assert_eq!(job_rows(&html), vec![ada.clone()]);
    assert!(html.contains("a***@example.com"), "masked: {html}");
    let listed = html.split("<table id=\"jobs\"").nth(1).unwrap_or_default();
    assert!(!listed.contains("lovelace"), "no full address in the list");
    let (_, html) = get(&app, "/admin/jobs?recipient=ada%40example.com").await;
    assert!(job_rows(&html).is_empty(), "exact, not a substring");
    // The API's list reads the same function.
    let (status, page) = app
        .send(
            "GET",
            "/v1/jobs?recipient=ADA.LOVELACE%40example.COM",
            None,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], ada.as_str(), "{page}");
    assert_eq!(page["items"][0]["recipient"], "ada.lovelace@example.com");
    assert!(page["next_cursor"].is_null());
    for bad in ["state=finished", "from=yesterday", "before=x", "colour=red"] {
        let (status, body) = app.send("GET", &format!("/v1/jobs?{bad}"), None, &[]).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }

    // Template and category.
    let (_, html) = get(&app, "/admin/jobs?template=notification").await;
    assert_eq!(job_rows(&html), vec![notification.clone()]);
    let (_, page) = get(&app, &format!("/admin/jobs/{notification}")).await;
    assert!(
        page.contains(r#"<dd id="subject">Note for Ada</dd>"#),
        "rendered: {page}"
    );
    let (_, html) = get(&app, "/admin/jobs?category=marketing").await;
    assert!(job_rows(&html).is_empty());

    // State: one cancelled job.
    let (status, _, _) = post(
        &app,
        &format!("/admin/jobs/{}/cancel", ids[0]),
        &[("confirm", "yes")],
    )
    .await;
    assert_eq!(status, 303);
    let (_, html) = get(&app, "/admin/jobs?state=cancelled").await;
    assert_eq!(job_rows(&html), vec![ids[0].clone()]);
    let (_, html) = get(&app, "/admin/jobs?state=finished").await;
    assert!(html.contains("id=\"problem\""), "a bad state is explained");
    assert!(job_rows(&html).is_empty());

    // Time range: everything was enqueued today.
    let today = chrono::Utc::now().date_naive();
    let (_, html) = get(
        &app,
        &format!("/admin/jobs?to={}", today.pred_opt().expect("day")),
    )
    .await;
    assert!(job_rows(&html).is_empty(), "nothing before yesterday's end");

    // Keyset pages: 55 email jobs, newest first, 50 then 5, no overlap, filters kept.
    let (_, first) = get(&app, "/admin/jobs?queue=herald.email").await;
    let first_rows = job_rows(&first);
    assert_eq!(first_rows.len(), 50);
    assert_eq!(first_rows[0], notification, "newest first");
    let next = first
        .split("id=\"next\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a next link")
        .replace("&amp;", "&");
    assert!(next.contains("queue=herald.email"), "{next}");
    let (_, second) = get(&app, &next).await;
    let second_rows = job_rows(&second);
    assert_eq!(second_rows.len(), 5);
    assert!(second_rows.iter().all(|id| !first_rows.contains(id)));
    assert!(!second.contains("id=\"next\""), "the last page");
    assert_eq!(second_rows.last(), Some(&ids[0]), "oldest last");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_job_page_shows_the_email_and_actions_ask_before_acting(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let id = send(&app, "page@example.com", "raw").await;
    let (status, html) = get(&app, &format!("/admin/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Hello page@example.com"),
        "the subject: {html}"
    );
    assert!(
        html.contains(r#"<dd id="ledger-status">pending</dd>"#),
        "{html}"
    );
    assert!(html.contains("p***@example.com"));
    assert!(
        html.contains(&format!("/admin/jobs/{id}/cancel")),
        "a waiting job can be cancelled"
    );
    assert!(
        !html.contains(&format!("/admin/jobs/{id}/retry")),
        "not retried"
    );

    let (status, _, confirm) = post(&app, &format!("/admin/jobs/{id}/cancel"), &[]).await;
    assert_eq!(status, 200);
    assert!(
        confirm.contains(r#"name="confirm" value="yes""#),
        "{confirm}"
    );
    let (_, job) = app.send("GET", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(job["status"], "queued", "asking changed nothing");

    let (status, location, _) = post(
        &app,
        &format!("/admin/jobs/{id}/cancel"),
        &[("confirm", "yes")],
    )
    .await;
    assert_eq!(
        (status, location.as_str()),
        (303, format!("/admin/jobs/{id}").as_str())
    );
    let (_, html) = get(&app, &format!("/admin/jobs/{id}")).await;
    assert!(html.contains(r#"id="job-state">cancelled<"#), "{html}");
    assert!(
        html.contains(r#"data-event="cancelled""#),
        "the timeline logs it: {html}"
    );
    let (status, _, _) = post(
        &app,
        &format!("/admin/jobs/{id}/cancel"),
        &[("confirm", "yes")],
    )
    .await;
    assert_eq!(status, 409, "only a waiting job");

    let (status, _) = get(&app, "/admin/jobs/not-a-ulid").await;
    assert_eq!(status, 404);
    let (status, _) = get(&app, &format!("/admin/jobs/{}", ulid::Ulid::generate())).await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn suppressions_are_added_and_removed_with_reasons_in_the_audit_trail(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let add = [
        ("email", "Someone@Example.com"),
        ("type", "manual"),
        ("reason", "asked by phone"),
    ];
    let (status, location, _) = post(&app, "/admin/suppressions", &add).await;
    assert_eq!(status, 303);
    assert!(
        location.starts_with("/admin/suppressions?email="),
        "{location}"
    );
    let (_, row) = app
        .send("GET", "/v1/suppressions/someone@example.com", None, &[])
        .await;
    assert_eq!(row["type"], "manual", "{row}");

    let (_, html) = get(&app, "/admin/suppressions?email=SOMEONE%40example.com").await;
    assert_eq!(
        html.matches("<tr class=\"suppression\"").count(),
        1,
        "{html}"
    );
    assert!(
        html.contains("manual: asked by phone (via console)"),
        "{html}"
    );

    let (status, _, _) = post(
        &app,
        "/admin/suppressions",
        &[("email", "not an address"), ("type", "manual")],
    )
    .await;
    assert_eq!(status, 422);
    let (status, _, _) = post(
        &app,
        "/admin/suppressions",
        &[("email", "x@example.com"), ("type", "bounce")],
    )
    .await;
    assert_eq!(status, 422, "only manual or unsubscribe");

    let remove = |reason: &'static str| {
        let app = &app;
        async move {
            post(
                app,
                "/admin/suppressions/remove",
                &[("email", "someone@example.com"), ("reason", reason)],
            )
            .await
            .0
        }
    };
    assert_eq!(remove("  ").await, 422, "a reason is required");
    assert_eq!(remove("wrong person").await, 303);
    let (status, _) = app
        .send("GET", "/v1/suppressions/someone@example.com", None, &[])
        .await;
    assert_eq!(status, 404);
    assert_eq!(remove("again").await, 404);
    let (_, html) = get(&app, "/admin/suppressions").await;
    assert!(html.contains("removed because wrong person"), "{html}");
    assert!(!html.contains("someone@example.com"), "masked in the trail");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_webhooks_page_shows_endpoints_and_deliveries_and_redelivers(pool: PgPool) {
    use herald_shared::suppressions::{self, SuppressionType};
    use herald_shared::webhooks::{self, DeliveryStatus, EventType, NewEndpoint};

    let app = TestApp::spawn(pool, true).await;
    let (_, empty) = get(&app, "/admin/webhooks").await;
    assert!(empty.contains("No endpoint registered"), "{empty}");

    let mut conn = app.pool.acquire().await.expect("conn");
    let endpoint = webhooks::create(
        &mut conn,
        &NewEndpoint {
            url: "https://hooks.example.com/herald",
            description: Some("billing"),
            events: &[EventType::SuppressionCreated],
            include_addresses: false,
            secret: "c2VjcmV0",
        },
    )
    .await
    .expect("endpoint");
    suppressions::add_recorded(
        &mut conn,
        "ada@example.com",
        SuppressionType::Manual,
        Some("asked"),
        "api",
    )
    .await
    .expect("suppress");
    assert_eq!(webhooks::fan_out(&mut conn, 10).await.expect("fan out"), 1);
    let delivery = webhooks::deliveries(&mut conn, endpoint.id, None, 10)
        .await
        .expect("deliveries")
        .pop()
        .expect("one delivery");
    assert_eq!(delivery.status, DeliveryStatus::Pending);

    let (status, html) = get(&app, "/admin/webhooks").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("hooks.example.com&#x2f;herald"), "{html}");
    assert!(html.contains("suppression.created"), "{html}");
    assert!(
        html.contains(&format!(
            r#"data-delivery="{}" data-status="pending""#,
            delivery.id
        )),
        "{html}"
    );
    assert!(!html.contains("ada@example.com"), "no address on the page");

    // A delivered one is sent again: back to pending, with a job of its own.
    let out = webhooks::outgoing(&mut conn, delivery.id)
        .await
        .expect("outgoing")
        .expect("found");
    let recorded = webhooks::record_attempt(
        &mut conn,
        &out,
        &webhooks::Attempt {
            status_code: Some(200),
            latency_ms: 3,
            error: None,
            excerpt: Some("ok"),
            status: DeliveryStatus::Delivered,
        },
    )
    .await
    .expect("attempt");
    assert!(recorded.moved);
    let path = format!(
        "/admin/webhooks/{}/deliveries/{}/retry",
        endpoint.id, delivery.id
    );
    let (status, location, _) = post(&app, &path, &[("confirm", "yes")]).await;
    assert_eq!(status, 303);
    assert_eq!(
        location,
        format!("/admin/webhooks?endpoint={}", endpoint.id)
    );
    let again = webhooks::deliveries(&mut conn, endpoint.id, None, 10)
        .await
        .expect("deliveries");
    assert_eq!(again[0].status, DeliveryStatus::Pending);
    assert_eq!(again[0].attempts, 1, "the attempt made is kept");

    // Another endpoint's delivery id is not found, and nothing changes.
    let other = format!(
        "/admin/webhooks/{}/deliveries/{}/retry",
        uuid::Uuid::from_u128(42),
        delivery.id
    );
    let (status, _, body) = post(&app, &other, &[("confirm", "yes")]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("No such delivery"), "{body}");
    // Without a session or token the form is refused.
    let res = client()
        .post(format!("{}{path}", app.url))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 401);
}
