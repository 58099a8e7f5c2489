//! One-click unsubscribe end to end: the real binaries, moto, and the API's public listener.

use std::time::Duration;

use serde_json::{Value, json};

use crate::e2e::{Stack, moto_message, unique};

/// Sends an email through the API and waits for it; returns the job.
async fn send(stack: &Stack, body: Value) -> Value {
    let (status, queued) = stack.post("/v1/emails", body).await;
    assert_eq!(status, 202, "{queued}");
    let job = stack
        .wait_final(
            queued["job_id"].as_str().expect("id"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

#[tokio::test]
async fn a_marketing_email_links_a_one_click_unsubscribe_that_stops_marketing_only() {
    let mut stack = Stack::start().await;
    stack.spawn_worker(&[]);
    let to = format!("{}@example.com", unique("reader"));
    let job = send(
        &stack,
        json!({"to": to, "category": "marketing", "subject": "News",
               "text": "Hello", "html": "<html><body><p>Hello</p></body></html>"}),
    )
    .await;
    let message = moto_message(job["result"]["ses_message_id"].as_str().expect("id"))
        .await
        .expect("moto has the message");
    let body = message["body"].as_str().unwrap_or_default().to_owned();
    let prefix = format!("{}/unsubscribe/", stack.public_url);
    let at = body
        .find(&prefix)
        .unwrap_or_else(|| panic!("no link under {prefix} in {body}"));
    let token: String = body[at + prefix.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    let link = format!("{prefix}{token}");
    let job_id = job["id"].as_str().expect("job id");
    assert!(!body.contains(job_id), "the job id is in no link");

    let http = reqwest::Client::new();
    let path = format!("/v1/suppressions/{to}");
    // A GET (a link scanner, or the reader opening it) shows the page and changes nothing.
    let page = http.get(&link).send().await.expect("get");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("script"),
        "{csp}"
    );
    let html = page.text().await.expect("page");
    assert!(
        html.contains("<form method=\"post\"") && !html.contains("<script"),
        "{html}"
    );
    assert!(!html.contains(&to), "the page masks the address: {html}");
    assert_eq!(stack.get(&path).await.0, 404, "a GET suppresses nothing");

    // One character of the token changed: refused, nothing suppressed.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{prefix}{}", String::from_utf8(tampered).expect("ascii"));
    let one_click = |url: String| {
        let http = http.clone();
        async move {
            http.post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("List-Unsubscribe=One-Click")
                .send()
                .await
                .expect("post")
        }
    };
    assert_eq!(one_click(tampered).await.status(), 400);
    assert_eq!(stack.get(&path).await.0, 404);

    // RFC 8058 one-click, with no token header: 200, and marketing mail stops.
    let done = one_click(link.clone()).await;
    assert_eq!(done.status(), 200);
    let (status, row) = stack.get(&path).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["type"], "unsubscribe", "{row}");
    // Again: still 200, recorded once.
    assert_eq!(one_click(link.clone()).await.status(), 200);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_feedback_events WHERE recipient = $1 AND event_type = 'suppression_added'",
    )
    .bind(&to)
    .fetch_one(&stack.pool)
    .await
    .expect("events");
    assert_eq!(events, 1);

    let (status, refused) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "category": "marketing", "subject": "More news", "text": "Hi"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let job = send(
        &stack,
        json!({"to": to, "subject": "Your receipt", "text": "Thanks"}),
    )
    .await;
    assert_eq!(
        job["result"]["outcome"], "sent",
        "transactional mail still goes out"
    );

    // The public listener serves nothing else.
    let base = stack.public_url.clone();
    for path in ["/v1/emails", "/admin", "/metrics", "/health"] {
        let res = http
            .post(format!("{base}{path}"))
            .bearer_auth(crate::e2e::TOKEN)
            .json(&json!({"to": "a@example.com", "subject": "x", "text": "y"}))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 404, "{path} on PUBLIC_ADDR");
    }
    stack.finish().await;
}
