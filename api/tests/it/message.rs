//! `POST /v1/emails` with the whole envelope: names, arrays, cc/bcc, sender, reply-to, headers and
//! tags; bad inputs refused naming their field, nothing queued; suppressed recipients left out.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::api::{TestApp, job_count as jobs};

async fn payload(pool: &PgPool, id: &str) -> Value {
    let mut conn = pool.acquire().await.expect("conn");
    let bytes = herald_shared::jobs::payload(&mut conn, id)
        .await
        .expect("payload")
        .expect("the job exists");
    serde_json::from_slice(&bytes).expect("json")
}

fn base() -> Value {
    json!({"to": "ada@example.com", "subject": "Hi", "text": "Hello"})
}

fn with(field: &str, value: Value) -> Value {
    let mut body = base();
    body[field] = value;
    body
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn bad_envelopes_are_refused_naming_the_field_and_nothing_is_queued(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool.clone(),
        true,
        &[(
            "EMAIL_FROM_ALLOWED",
            "noreply@herald.test,@mail.herald.test",
        )],
    )
    .await;
    let many: Vec<String> = (0..51).map(|i| format!("r{i}@example.com")).collect();
    let tags: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("t{i}"), json!("v"))).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("51 recipients", with("to", json!(many)), "to:"),
        (
            "51 with cc",
            {
                let mut b = with("to", json!(many[..30]));
                b["cc"] = json!(many[30..]);
                b
            },
            "to:",
        ),
        ("no recipient", with("to", json!([])), "to:"),
        (
            "bad address",
            with("to", json!("Ada <not-an-address>")),
            "to:",
        ),
        (
            "CR/LF in a name",
            with("cc", json!(["Eve\r\nBcc: x@evil.test <eve@example.com>"])),
            "cc[0]:",
        ),
        (
            "CR/LF in an object's name",
            with(
                "to",
                json!([{"email": "a@example.com", "name": "A\nB"}, "b@example.com"]),
            ),
            "to[0]:",
        ),
        (
            "CR/LF in a header",
            with("headers", json!({"X-Ref": "a\r\nBcc: x@evil.test"})),
            "headers.X-Ref:",
        ),
        (
            "an owned header",
            with("headers", json!({"List-Unsubscribe": "<https://x.test>"})),
            "headers.List-Unsubscribe:",
        ),
        (
            "a Content- header",
            with("headers", json!({"content-type": "text/plain"})),
            "headers.content-type:",
        ),
        (
            "a bad header name",
            with("headers", json!({"X Ref": "a"})),
            "headers.X Ref:",
        ),
        (
            "an unknown sender",
            with("from", json!("Boss <boss@evil.test>")),
            "from:",
        ),
        (
            "a sender of the right name on another domain",
            with("from", json!("noreply@herald.test.evil.test")),
            "from:",
        ),
        ("11 tags", with("tags", json!(tags)), "tags:"),
        (
            "a tag with a space",
            with("tags", json!({"plan": "pro plan"})),
            "tags.plan:",
        ),
        (
            "Herald's own tag",
            with("tags", json!({"herald_job_id": "x"})),
            "tags.herald_job_id:",
        ),
        (
            "a bad reply-to",
            with("reply_to", json!(["ok@example.com", "nope"])),
            "reply_to[1]:",
        ),
        (
            "a refused attachment type",
            with(
                "attachments",
                json!([{"filename": "setup.exe", "content": "TVo="}]),
            ),
            "attachments[0].filename:",
        ),
        (
            "bad base64",
            with(
                "attachments",
                json!([{"filename": "a.pdf", "content": "%%%not base64"}]),
            ),
            "attachments[0].content:",
        ),
        (
            "a content type with parameters",
            with(
                "attachments",
                json!([{"filename": "a.txt", "content": "eA==", "content_type": "text/plain; x=y"}]),
            ),
            "attachments[0].content_type:",
        ),
        (
            "a cid: without an inline part",
            {
                let mut b = with("html", json!("<img src=\"cid:logo\">"));
                b["attachments"] = json!([{"filename": "logo.png", "content": "eA=="}]);
                b
            },
            "html:",
        ),
    ];
    for (what, body, field) in cases {
        let (status, answer) = app.post("/v1/emails", body.clone()).await;
        assert_eq!(status, 422, "{what}: {answer}");
        assert_eq!(
            answer["error"]["code"], "validation_failed",
            "{what}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(field),
            "{what}: {message:?} should name {field}"
        );
        // The batch endpoint applies the same rules per item.
        let (status, batch) = app
            .post("/v1/emails/batch", json!({"emails": [body]}))
            .await;
        assert_eq!(status, 200, "{what}: {batch}");
        assert_eq!(batch["results"][0]["status"], 422, "{what}: {batch}");
    }
    // 11 MB decoded: over the 10 MB bound, answered 422 naming the field, not 413.
    let big = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(vec![0u8; 11 * 1024 * 1024])
    };
    let (status, answer) = app
        .post(
            "/v1/emails",
            with(
                "attachments",
                json!([{"filename": "big.pdf", "content": big}]),
            ),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("attachments:"),
        "{answer}"
    );
    // The room is for attachments only: a large text is still refused.
    let (status, _) = app
        .post("/v1/emails", with("text", json!("x".repeat(300 * 1024))))
        .await;
    assert_eq!(status, 413);
    assert_eq!(jobs(&pool).await, 0, "nothing was queued");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_whole_envelope_is_queued_and_a_plain_email_keeps_its_plain_payload(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool.clone(),
        true,
        &[(
            "EMAIL_FROM_ALLOWED",
            "noreply@herald.test,@mail.herald.test",
        )],
    )
    .await;
    let (status, plain) = app.post("/v1/emails", base()).await;
    assert_eq!(status, 202, "{plain}");
    let job = payload(&pool, plain["job_id"].as_str().expect("id")).await;
    assert!(job.get("envelope").is_none(), "{job}");

    let body = json!({
        "from": "Billing <billing@mail.herald.test>",
        "to": ["Ada Lovelace <ada@example.com>", {"email": "grace@example.com", "name": "Grace Hopper"}],
        "cc": ["Zoë Ångström <zoe@example.com>", "ADA@example.com"],
        "bcc": ["audit@example.com"],
        "reply_to": "Support <support@mail.herald.test>",
        "headers": {"X-Campaign": "spring", "X-Entity-Ref-ID": "inv-42"},
        "tags": {"plan": "pro", "kind": "receipt"},
        "subject": "Your receipt", "text": "Thanks", "html": "<p>Thanks</p>"
    });
    let (status, answer) = app.post("/v1/emails", body).await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer.get("suppressed").is_none(), "{answer}");
    let job = payload(&pool, answer["job_id"].as_str().expect("id")).await;
    let envelope = &job["envelope"];
    assert_eq!(job["to"], "ada@example.com");
    assert_eq!(
        envelope["to"][1],
        json!({"email": "grace@example.com", "name": "Grace Hopper"})
    );
    assert_eq!(
        envelope["cc"],
        json!([{"email": "zoe@example.com", "name": "Zoë Ångström"}]),
        "an address given twice is kept once"
    );
    assert_eq!(envelope["bcc"][0]["email"], "audit@example.com");
    assert_eq!(envelope["from"]["name"], "Billing");
    assert_eq!(envelope["reply_to"][0]["email"], "support@mail.herald.test");
    assert_eq!(envelope["headers"]["X-Entity-Ref-ID"], "inv-42");
    assert_eq!(envelope["tags"], json!({"kind": "receipt", "plan": "pro"}));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn suppressed_recipients_are_left_out_and_listed_and_all_suppressed_is_409(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), true).await;
    for address in ["gone@example.com", "left@example.com"] {
        let (status, body) = app
            .post(
                "/v1/suppressions",
                json!({"email": address, "type": "manual", "reason": "test"}),
            )
            .await;
        assert!(status == 201 || status == 200, "{body}");
    }
    let (status, answer) = app
        .post(
            "/v1/emails",
            json!({"to": ["Gone <gone@example.com>", "stay@example.com"], "bcc": ["left@example.com"],
                   "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["suppressed"],
        json!(["gone@example.com", "left@example.com"])
    );
    let job = payload(&pool, answer["job_id"].as_str().expect("id")).await;
    assert_eq!(job["to"], "stay@example.com", "the first recipient left");
    assert!(job["envelope"].get("bcc").is_none(), "{job}");

    let before = jobs(&pool).await;
    let (status, answer) = app
        .post(
            "/v1/emails",
            json!({"to": ["gone@example.com"], "cc": ["Left <left@example.com>"],
                   "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "recipient_suppressed");
    assert_eq!(
        answer["error"]["suppressed"],
        json!(["gone@example.com", "left@example.com"])
    );
    assert_eq!(jobs(&pool).await, before, "nothing queued");
}

const READ_TOKEN: &str = "api-test-read-only-0123456789abcdef";

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn an_email_can_be_read_listed_by_tag_rescheduled_and_cancelled_and_read_tokens_only_read(
    pool: PgPool,
) {
    let tokens = format!("send:{},read:{READ_TOKEN}", crate::api::SEND_TOKEN);
    let app = TestApp::spawn_with(
        pool.clone(),
        true,
        &[
            ("API_TOKENS", tokens.as_str()),
            ("EMAIL_FROM_ALLOWED", "@herald.test"),
        ],
    )
    .await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, queued) = app
        .post(
            "/v1/emails",
            json!({
                "from": "Billing <billing@herald.test>",
                "to": ["Ada Lovelace <ada@example.com>"], "cc": ["cc@example.com"],
                "bcc": ["bcc@example.com"], "reply_to": "help@herald.test",
                "tags": {"plan": "pro"}, "headers": {"X-Ref": "42"},
                "attachments": [{"filename": "r.pdf", "content": "JVBERi0=", "content_type": "application/pdf"}],
                "subject": "Receipt", "text": "Thanks", "send_at": later
            }),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["job_id"].as_str().expect("id").to_owned();
    let path = format!("/v1/emails/{id}");
    let (status, email) = crate::hardening::call(&app, "GET", &path, READ_TOKEN, None).await;
    assert_eq!(status, 200, "{email}");
    assert_eq!(email["id"], id.as_str());
    assert_eq!(
        email["from"],
        json!({"email": "billing@herald.test", "name": "Billing"})
    );
    assert_eq!(
        email["to"],
        json!([{"email": "ada@example.com", "name": "Ada Lovelace"}])
    );
    assert_eq!(email["cc"][0]["email"], "cc@example.com");
    assert_eq!(email["bcc"][0]["email"], "bcc@example.com");
    assert_eq!(email["reply_to"][0]["email"], "help@herald.test");
    assert_eq!(email["subject"], "Receipt");
    assert_eq!(email["category"], "transactional");
    assert_eq!(email["tags"], json!({"plan": "pro"}));
    assert_eq!(email["headers"], json!({"X-Ref": "42"}));
    assert_eq!(
        email["attachments"],
        json!([{"filename": "r.pdf", "content_type": "application/pdf", "size": 5}])
    );
    assert_eq!(email["status"], "pending");
    assert_eq!(
        email["send_at"].as_str().map(|s| &s[..19]),
        Some(&later[..19])
    );
    assert_eq!(email["timeline"][0]["event"], "queued");

    // The console's job page shows the same facts, addresses masked, attachments by name.
    let html = app
        .http
        .get(format!("{}/admin/jobs/{id}", app.url))
        .bearer_auth(crate::api::TOKEN)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("r.pdf (application&#x2f;pdf, 5 bytes)"),
        "{html}"
    );
    assert!(html.contains("plan:pro"), "{html}");
    let cc = herald_shared::address::mask("cc@example.com");
    assert!(
        html.contains(&format!(r#"<dd id="cc">{cc}</dd>"#)),
        "{html}"
    );
    for hidden in ["cc@example.com", "bcc@example.com", "ada@example.com"] {
        assert!(!html.contains(hidden), "{hidden} is masked: {html}");
    }

    // Listed by tag, status and recipient; not under another tag.
    for (query, found) in [
        ("tag=plan:pro", true),
        ("tag=plan:free", false),
        ("status=pending&to=ADA@example.com", true),
        ("status=sent", false),
        ("category=marketing", false),
    ] {
        let (status, page) = crate::hardening::call(
            &app,
            "GET",
            &format!("/v1/emails?{query}"),
            READ_TOKEN,
            None,
        )
        .await;
        assert_eq!(status, 200, "{query}: {page}");
        let ids: Vec<&str> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        assert_eq!(ids.contains(&id.as_str()), found, "{query}: {page}");
        if found {
            assert_eq!(page["items"][0]["tags"], json!({"plan": "pro"}));
        }
    }
    for bad in ["tag=plan", "tag=plan:pro%20x", "status=lost", "before=nope"] {
        let (status, _) =
            crate::hardening::call(&app, "GET", &format!("/v1/emails?{bad}"), READ_TOKEN, None)
                .await;
        assert_eq!(status, 422, "{bad}");
    }
    // GET /v1/jobs filters by tag too.
    let (_, jobs) = app.send("GET", "/v1/jobs?tag=plan:pro", None, &[]).await;
    assert_eq!(jobs["items"][0]["id"], id.as_str(), "{jobs}");

    // A read token reads, and does nothing else.
    for (method, p, body) in [
        ("POST", "/v1/emails".to_owned(), Some(base())),
        ("PATCH", path.clone(), Some(json!({"send_at": later}))),
        ("POST", format!("{path}/cancel"), None),
        ("GET", "/v1/suppressions".to_owned(), None),
    ] {
        let (status, answer) = crate::hardening::call(&app, method, &p, READ_TOKEN, body).await;
        assert_eq!(status, 403, "{method} {p}: {answer}");
    }

    // Rescheduled while waiting; cancelled; then neither again.
    let even_later = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, moved) = crate::hardening::call(
        &app,
        "PATCH",
        &path,
        crate::api::SEND_TOKEN,
        Some(json!({"send_at": even_later})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        moved["send_at"].as_str().map(|s| &s[..19]),
        Some(&even_later[..19])
    );
    let (status, cancelled) = crate::hardening::call(
        &app,
        "POST",
        &format!("{path}/cancel"),
        crate::api::SEND_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        app.post(&format!("{path}/cancel"), json!({})).await.0,
        409,
        "cancelled once"
    );
    let (status, answer) = crate::hardening::call(
        &app,
        "PATCH",
        &path,
        crate::api::SEND_TOKEN,
        Some(json!({"send_at": later})),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_job_state");
    for missing in [
        "/v1/emails/not-an-id",
        "/v1/emails/01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ] {
        assert_eq!(
            app.send("GET", missing, None, &[]).await.0,
            404,
            "{missing}"
        );
    }
}

/// Every string in `v` that starts like a time is RFC 3339, UTC, `Z`, milliseconds.
fn assert_one_time_format(where_: &str, v: &Value) {
    match v {
        Value::String(s) => {
            let b = s.as_bytes();
            let looks_like_time = b.len() >= 11
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[10] == b'T';
            if looks_like_time {
                let ok = s.len() == 24
                    && s.ends_with('Z')
                    && b[19] == b'.'
                    && b[20..23].iter().all(u8::is_ascii_digit)
                    && chrono::DateTime::parse_from_rfc3339(s).is_ok();
                assert!(ok, "{where_}: {s:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
            }
        }
        Value::Array(a) => a.iter().for_each(|x| assert_one_time_format(where_, x)),
        Value::Object(o) => o.values().for_each(|x| assert_one_time_format(where_, x)),
        _ => {}
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn every_answer_gives_times_in_one_format(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), true).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, queued) = app
        .post(
            "/v1/emails",
            json!({"to": "Ada <ada@example.com>", "tags": {"k": "v"}, "subject": "S", "text": "T", "send_at": later}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["job_id"].as_str().expect("id").to_owned();
    let (status, _) = app
        .post(
            "/v1/suppressions",
            json!({"email": "gone@example.com", "type": "manual", "reason": "asked"}),
        )
        .await;
    assert!(status == 200 || status == 201);
    let (status, hook) = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["email.sent"]}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let hook_id = hook["id"].as_str().expect("hook").to_owned();
    assert_one_time_format("POST /v1/webhooks", &hook);
    let mut seen = 0;
    for path in [
        format!("/v1/emails/{id}"),
        "/v1/emails".to_owned(),
        format!("/v1/jobs/{id}"),
        "/v1/jobs".to_owned(),
        "/v1/suppressions".to_owned(),
        "/v1/suppressions/gone@example.com".to_owned(),
        "/v1/compliance".to_owned(),
        "/v1/schedules".to_owned(),
        "/v1/templates".to_owned(),
        "/v1/templates/welcome".to_owned(),
        "/v1/webhooks".to_owned(),
        format!("/v1/webhooks/{hook_id}"),
    ] {
        let (status, body) = app.send("GET", &path, None, &[]).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_one_time_format(&path, &body);
        seen += body.to_string().matches("Z\"").count();
    }
    assert!(seen > 10, "the answers carry times ({seen})");
}
