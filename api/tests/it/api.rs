//!
//! Long on purpose: every route's test shares `TestApp`.
use std::collections::BTreeSet;

use herald_api::{ApiConfig, Application};
use serde_json::{Value, json};
use sqlx::PgPool;

pub const TOKEN: &str = "api-test-token-0123456789abcdef0123";
/// A token with the `send` scope only.
/// The unsubscribe secret the test APIs verify links with.
pub const UNSUBSCRIBE_SECRET: &str = "test-unsubscribe-secret-0123456789abcdef";
pub const SEND_TOKEN: &str = "api-test-send-only-0123456789abcdef";

pub struct TestApp {
    pub url: String,
    /// Where `/metrics` is served (`API_METRICS_ADDR`), apart from `url`.
    pub metrics_url: String,
    /// The public listener (`PUBLIC_ADDR`).
    pub public_url: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
}

impl TestApp {
    pub async fn spawn(pool: PgPool, with_queue_schema: bool) -> Self {
        Self::spawn_with(pool, with_queue_schema, &[]).await
    }

    /// [`TestApp::spawn`] with more (or overriding) variables.
    pub async fn spawn_with(pool: PgPool, with_queue_schema: bool, extra: &[(&str, &str)]) -> Self {
        if with_queue_schema {
            apalis_postgres::PostgresStorage::setup(&pool)
                .await
                .expect("apalis schema");
        }
        let send_tokens = format!("send:{SEND_TOKEN}");
        let mut env: std::collections::HashMap<String, String> = [
            ("API_TOKEN", TOKEN),
            ("API_TOKENS", send_tokens.as_str()),
            ("API_ADDR", "127.0.0.1:0"),
            ("API_METRICS_ADDR", "127.0.0.1:0"),
            ("FRONTEND_URL", "https://app.example.com"),
            ("UNSUBSCRIBE_SECRETS", UNSUBSCRIBE_SECRET),
            ("PUBLIC_URL", "https://mail.example.com"),
            ("EMAIL_FROM", "noreply@herald.test"),
            ("DATABASE_URL", "postgres://unused@127.0.0.1/unused"),
            // Test receivers listen on loopback (a test of the guard sets it empty).
            ("WEBHOOK_ALLOW_PRIVATE_URLS", "true"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.retain(|_, v| !v.is_empty());
        let config = ApiConfig::from_source(&env).expect("config");
        let app = Application::build(config, pool.clone())
            .await
            .expect("bind");
        let url = format!("http://{}", app.local_addr().expect("addr"));
        let metrics_url = format!("http://{}/metrics", app.metrics_addr().expect("addr"));
        let public_url = format!("http://{}", app.public_addr().expect("addr"));
        tokio::spawn(app.serve(std::future::pending()));
        Self {
            url,
            metrics_url,
            public_url,
            http: reqwest::Client::new(),
            pool,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.url),
            )
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, Some(&body.to_string()), &[]).await
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn health_is_open_and_every_v1_route_needs_the_bearer_token(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let health = app
        .http
        .get(format!("{}/health", app.url))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    for (method, path) in [
        ("POST", "/v1/emails"),
        ("GET", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("POST", "/v1/password-resets"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token-wrong-token"),
            Some(TOKEN),
        ] {
            let mut req = app
                .http
                .request(method.parse().expect("m"), format!("{}{path}", app.url));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.expect("request");
            // The bare token without "Bearer " is refused too.
            assert_eq!(res.status(), 401, "{method} {path} with {auth:?}");
            let body: Value = res.json().await.expect("json");
            assert_eq!(code(&body), "unauthorized");
        }
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn ready_reports_503_until_the_job_queue_schema_exists(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), false).await;
    let res = app
        .http
        .get(format!("{}/ready", app.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.expect("json");
    assert_eq!(code(&body), "not_ready");
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    let res = app
        .http
        .get(format!("{}/ready", app.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(res.status(), 200);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn bad_bodies_get_json_errors_with_stable_codes(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let cases: Vec<(&str, u16, &str)> = vec![
        (
            r#"{"to":"a@example.com","subject":"s","text":"t","bcc":"x@y.z"}"#,
            422,
            "validation_failed",
        ),
        (r#"{"to":"a@example.com","#, 400, "malformed_json"),
        (
            r#"{"to":"not-an-address","subject":"s","text":"t"}"#,
            422,
            "validation_failed",
        ),
        (
            r#"{"to":"a@example.com","template":"nope","data":{}}"#,
            422,
            "unknown_template",
        ),
        (
            r#"{"to":"a@example.com","template":"verification","data":{"name":"x","link":"y"}}"#,
            422,
            "unknown_template",
        ),
        (
            r#"{"to":"a@example.com","template":"welcome","data":{}}"#,
            422,
            "template_data_invalid",
        ),
        (
            r#"{"to":"a@example.com","subject":"s"}"#,
            422,
            "validation_failed",
        ),
        (
            r#"{"to":"a@example.com","category":"spam","subject":"s","text":"t"}"#,
            422,
            "validation_failed",
        ),
    ];
    for (body, status, expected) in cases {
        let (got, json) = app.send("POST", "/v1/emails", Some(body), &[]).await;
        assert_eq!((got, code(&json)), (status, expected), "{body:?} -> {json}");
    }
    let big = format!(
        r#"{{"to":"a@example.com","subject":"s","text":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let (got, json) = app.send("POST", "/v1/emails", Some(&big), &[]).await;
    assert_eq!((got, code(&json)), (413, "payload_too_large"));
    let res = app
        .http
        .post(format!("{}/v1/emails", app.url))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 415);
    let (got, json) = app.send("GET", "/v1/nothing-here", None, &[]).await;
    assert_eq!((got, code(&json)), (404, "not_found"));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_same_idempotency_key_and_body_give_the_same_job_and_another_body_conflicts(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool, true).await;
    let body = r#"{"to":"idem@example.com","subject":"Hello","text":"Once"}"#;
    let key = [("Idempotency-Key", "order-42")];
    let (s1, first) = app.send("POST", "/v1/emails", Some(body), &key).await;
    let (s2, second) = app.send("POST", "/v1/emails", Some(body), &key).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["job_id"], second["job_id"]);
    let jobs: i64 = job_count(&app.pool).await;
    assert_eq!(jobs, 1, "a replay must not enqueue again");
    // A replay says so in a header; a first request does not.
    let post = |key: &'static str| {
        app.http
            .post(format!("{}/v1/emails", app.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    let replayed = |r: &reqwest::Response| {
        r.headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let again = post("order-42").await.expect("replay");
    assert_eq!(again.status(), 202);
    assert_eq!(replayed(&again).as_deref(), Some("true"));
    let fresh = post("order-43").await.expect("fresh");
    assert_eq!(fresh.status(), 202);
    assert_eq!(replayed(&fresh), None);
    let other = r#"{"to":"idem@example.com","subject":"Hello","text":"Twice"}"#;
    let (s3, conflict) = app.send("POST", "/v1/emails", Some(other), &key).await;
    assert_eq!((s3, code(&conflict)), (409, "idempotency_conflict"));
    // Without a key, the same body is a new job.
    let (_, third) = app.send("POST", "/v1/emails", Some(body), &[]).await;
    assert_ne!(third["job_id"], first["job_id"]);
    assert_eq!(
        job_count(&app.pool).await,
        3,
        "order-42 once, order-43, and the keyless one"
    );
}

/// Jobs in the queue, every state.
pub(crate) async fn job_count(pool: &PgPool) -> i64 {
    herald_shared::jobs::count_by_state(pool)
        .await
        .expect("counts")
        .iter()
        .map(|c| c.n)
        .sum()
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn jobs_can_be_read_cancelled_and_retried_only_from_the_right_state(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let send_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, queued) = app
        .post("/v1/emails", json!({"to": "later@example.com", "subject": "s", "text": "t", "category": "marketing", "send_at": send_at}))
        .await;
    let id = queued["job_id"].as_str().expect("id").to_owned();
    let (status, job) = app.send("GET", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["queue"], "herald.email");
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["max_attempts"], 8);
    assert_eq!(job["result"], Value::Null);
    let run_at: chrono::DateTime<chrono::Utc> = job["run_at"]
        .as_str()
        .expect("run_at")
        .parse()
        .expect("time");
    assert!(
        run_at > chrono::Utc::now() + chrono::Duration::minutes(59),
        "send_at is honoured: {run_at}"
    );

    for bad in ["not-a-ulid", "01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
        let (status, body) = app.send("GET", &format!("/v1/jobs/{bad}"), None, &[]).await;
        assert_eq!((status, code(&body)), (404, "not_found"));
    }
    let (status, body) = app
        .send("POST", &format!("/v1/jobs/{id}/retry"), None, &[])
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_job_state"));
    let (status, body) = app
        .send("POST", &format!("/v1/jobs/{id}/cancel"), None, &[])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(ledger_status(&app.pool, &id).await, "cancelled");
    let (status, body) = app
        .send("POST", &format!("/v1/jobs/{id}/cancel"), None, &[])
        .await;
    assert_eq!((status, code(&body)), (409, "invalid_job_state"));

    // A job that failed for good can be retried with a fresh budget.
    let (_, other) = app
        .post(
            "/v1/emails",
            json!({"to": "x@example.com", "subject": "s", "text": "t"}),
        )
        .await;
    let other = other["job_id"].as_str().expect("id");
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Failed', attempts = 8, max_attempts = 8 WHERE id = $1",
    )
    .bind(other)
    .execute(&app.pool)
    .await
    .expect("fail it");
    let (_, job) = app
        .send("GET", &format!("/v1/jobs/{other}"), None, &[])
        .await;
    assert_eq!(job["status"], "failed");
    let (status, job) = app
        .send("POST", &format!("/v1/jobs/{other}/retry"), None, &[])
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempts"], 0);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_openapi_document_lists_every_route_and_each_is_served(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "GET /health",
        "GET /ready",
        "POST /v1/emails",
        "GET /v1/emails",
        "GET /v1/emails/{id}",
        "PATCH /v1/emails/{id}",
        "POST /v1/emails/{id}/cancel",
        "GET /v1/jobs",
        "GET /v1/jobs/{id}",
        "POST /v1/jobs/{id}/retry",
        "POST /v1/jobs/{id}/cancel",
        "POST /v1/users/{user_id}/verification-email",
        "POST /v1/password-resets",
        "GET /v1/suppressions",
        "POST /v1/suppressions",
        "GET /v1/suppressions/{email}",
        "DELETE /v1/suppressions/{email}",
        "GET /v1/schedules",
        "GET /v1/compliance",
        "POST /v1/compliance/resume",
        "POST /v1/emails/batch",
        "PUT /v1/templates/{name}",
        "GET /v1/templates",
        "GET /v1/templates/{name}",
        "GET /v1/templates/{name}/versions/{version}",
        "DELETE /v1/templates/{name}",
        "POST /v1/templates/{name}/preview",
        "POST /v1/webhooks",
        "GET /v1/webhooks",
        "GET /v1/webhooks/{id}",
        "PATCH /v1/webhooks/{id}",
        "DELETE /v1/webhooks/{id}",
        "GET /v1/webhooks/{id}/deliveries",
        "POST /v1/webhooks/{id}/deliveries/{delivery}/retry",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(documented, expected);
    // Every operation has its own id, named for what it does; parameters are where they are read.
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("item").values() {
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{id}: {p}");
                }
            }
        }
    }
    for id in [
        "sendEmail",
        "getEmail",
        "listEmails",
        "listJobs",
        "getJob",
        "listSuppressions",
    ] {
        assert!(ids.contains(id), "{id} in {ids:?}");
    }
    // Request schemas say what the API enforces: the enums it accepts, the bounds it checks.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Category"]["enum"],
        json!(["transactional", "marketing"])
    );
    assert_eq!(
        schemas["CreateWebhook"]["properties"]["events"]["items"]["$ref"],
        "#/components/schemas/EventType"
    );
    assert_eq!(
        schemas["EventType"]["enum"].as_array().map(Vec::len),
        Some(herald_shared::webhooks::EventType::ALL.len())
    );
    // An email is a template or a subject with a part, never both; every error code is listed.
    let one_of: Vec<&str> = schemas["SendEmailRequest"]["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .filter_map(|v| v["$ref"].as_str())
        .collect();
    assert_eq!(
        one_of,
        [
            "#/components/schemas/TemplateEmail",
            "#/components/schemas/RawEmail"
        ]
    );
    assert_eq!(
        schemas["RawEmail"]["properties"]["template"]["type"],
        "null"
    );
    assert_eq!(
        schemas["TemplateEmail"]["required"],
        json!(["to", "template"])
    );
    let query = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["schema"].clone())
            .expect("parameter")
    };
    assert_eq!(
        query("/v1/jobs", "state")["enum"],
        json!(["queued", "running", "succeeded", "failed", "cancelled"])
    );
    assert_eq!(query("/v1/suppressions", "limit")["maximum"], 500);
    assert_eq!(
        schemas["AddSuppression"]["properties"]["type"]["enum"],
        json!(["manual", "unsubscribe"])
    );
    let codes = schemas["ErrorDetail"]["properties"]["code"]["enum"]
        .as_array()
        .expect("codes");
    assert!(codes.contains(&json!("recipient_suppressed")) && codes.len() >= 20);

    assert_eq!(
        schemas["BatchRequest"]["properties"]["emails"]["maxItems"],
        1000
    );
    let list_jobs = &doc["paths"]["/v1/jobs"]["get"]["parameters"];
    assert!(
        list_jobs
            .as_array()
            .expect("params")
            .iter()
            .all(|p| p["in"] == "query"),
        "{list_jobs}"
    );
    // The webhooks section: every event type Herald POSTs, with its signature headers and the
    // example a test in shared checks against real events.
    let hooks = doc["webhooks"].as_object().expect("webhooks");
    let mut events: Vec<&str> = hooks.keys().map(String::as_str).collect();
    events.sort_unstable();
    let mut all = herald_shared::webhooks::EventType::names();
    all.sort_unstable();
    assert_eq!(events, all);
    for (event, item) in hooks {
        let body = &item["post"]["requestBody"]["content"]["application/json"];
        assert_eq!(body["example"]["type"], event.as_str());
        assert_eq!(
            body["example"],
            herald_shared::webhooks::EventType::parse(event)
                .expect("a known type")
                .example_body()
        );
        let headers: Vec<&str> = item["post"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            headers,
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
    }
    // Every documented route exists in the router: none falls through to the 404 fallback route.
    for entry in &documented {
        let (method, path) = entry.split_once(' ').expect("entry");
        let path = path
            .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .replace("{user_id}", &uuid::Uuid::nil().to_string())
            .replace("{email}", "nobody@example.com")
            .replace("{name}", "no_such_template")
            .replace("{version}", "1");
        let (status, body) = app.send(method, &path, Some("{}"), &[]).await;
        assert_ne!(
            body["error"]["message"], "route not found",
            "{entry} -> {status}"
        );
        assert_ne!(status, 405, "{entry}");
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn suppressions_can_be_added_raised_read_paged_and_removed_with_events(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let (status, unsub) = app
        .post(
            "/v1/suppressions",
            json!({"email": "Reader@Example.com", "type": "unsubscribe", "reason": "footer link"}),
        )
        .await;
    assert_eq!(status, 201, "{unsub}");
    assert_eq!(unsub["email"], "reader@example.com");
    assert_eq!(
        (
            unsub["suppress_transactional"].as_bool(),
            unsub["suppress_marketing"].as_bool()
        ),
        (Some(false), Some(true))
    );
    // Manual is stronger: the row is raised, and a later unsubscribe does not lower it again.
    let (_, manual) = app
        .post(
            "/v1/suppressions",
            json!({"email": "reader@example.com", "type": "manual"}),
        )
        .await;
    assert_eq!(manual["type"], "manual");
    assert_eq!(manual["suppress_transactional"], true);
    let (_, again) = app
        .post(
            "/v1/suppressions",
            json!({"email": "READER@example.com", "type": "unsubscribe"}),
        )
        .await;
    assert_eq!(again["type"], "manual");
    assert_eq!(again["suppress_transactional"], true);
    assert_eq!(again["id"], unsub["id"]);

    let (status, bad) = app
        .post(
            "/v1/suppressions",
            json!({"email": "x@example.com", "type": "bounce"}),
        )
        .await;
    assert_eq!((status, code(&bad)), (422, "validation_failed"));
    let (status, bad) = app
        .post(
            "/v1/suppressions",
            json!({"email": "nope", "type": "manual"}),
        )
        .await;
    assert_eq!((status, code(&bad)), (422, "validation_failed"));

    for i in 0..3 {
        app.post(
            "/v1/suppressions",
            json!({"email": format!("u{i}@example.com"), "type": "unsubscribe"}),
        )
        .await;
    }
    let (_, one) = app
        .send("GET", "/v1/suppressions/READER@EXAMPLE.COM", None, &[])
        .await;
    assert_eq!(one["type"], "manual");
    let (_, page) = app
        .send(
            "GET",
            "/v1/suppressions?type=unsubscribe&limit=2",
            None,
            &[],
        )
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, rest) = app
        .send(
            "GET",
            &format!("/v1/suppressions?type=unsubscribe&limit=2&cursor={cursor}"),
            None,
            &[],
        )
        .await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, by_email) = app
        .send("GET", "/v1/suppressions?email=U1@example.com", None, &[])
        .await;
    assert_eq!(by_email["items"][0]["email"], "u1@example.com");
    let (status, bad) = app.send("GET", "/v1/suppressions?limit=0", None, &[]).await;
    assert_eq!((status, code(&bad)), (422, "validation_failed"));

    let (status, _) = app
        .send("DELETE", "/v1/suppressions/Reader@example.com", None, &[])
        .await;
    assert_eq!(status, 204);
    let (status, body) = app
        .send("GET", "/v1/suppressions/reader@example.com", None, &[])
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _) = app
        .send("DELETE", "/v1/suppressions/reader@example.com", None, &[])
        .await;
    assert_eq!(status, 404);
    // Suppression changes only (the address had no SES feedback), oldest first.
    let mut events: Vec<(String, String)> = herald_shared::feedback::recent(
        &mut app.pool.acquire().await.expect("conn"),
        true,
        Some("reader@example.com"),
        100,
    )
    .await
    .expect("events")
    .into_iter()
    .map(|e| (e.event_type, e.recipient))
    .collect();
    events.reverse();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "suppression_added",
            "suppression_added",
            "suppression_added",
            "suppression_removed"
        ]
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn compliance_reports_rates_and_pauses_and_resume_lifts_them(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    for category in herald_shared::email::Category::ALL {
        herald_shared::compliance::pause(
            &mut app.pool.acquire().await.expect("conn"),
            category,
            "bounce rate too high",
        )
        .await
        .expect("pause");
    }
    let (status, body) = app.send("GET", "/v1/compliance", None, &[]).await;
    assert_eq!(status, 200, "{body}");
    let rates = body["rates"].as_array().expect("rates");
    assert_eq!(
        rates.len(),
        6,
        "two windows × (all, transactional, marketing)"
    );
    assert!(
        rates
            .iter()
            .any(|r| r["window"] == "24h" && r["category"] == "all")
    );
    assert!(
        rates
            .iter()
            .any(|r| r["window"] == "7d" && r["category"] == "marketing")
    );
    assert_eq!(body["thresholds"]["bounce_threshold"], 0.04);
    assert_eq!(body["thresholds"]["complaint_threshold"], 0.0008);
    assert!(
        body["pauses"]
            .as_array()
            .expect("pauses")
            .iter()
            .all(|p| p["paused"] == true)
    );

    let (status, bad) = app
        .post("/v1/compliance/resume", json!({"category": "everything"}))
        .await;
    assert_eq!((status, code(&bad)), (422, "validation_failed"));
    let (status, body) = app
        .post("/v1/compliance/resume", json!({"category": "marketing"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let pauses = body["pauses"].as_array().expect("pauses");
    let by = |c: &str| pauses.iter().find(|p| p["category"] == c).expect("row")["paused"].clone();
    assert_eq!(
        (by("marketing"), by("transactional")),
        (json!(false), json!(true))
    );
    let (_, body) = app.post("/v1/compliance/resume", json!({})).await;
    assert!(
        body["pauses"]
            .as_array()
            .expect("pauses")
            .iter()
            .all(|p| p["paused"] == false)
    );
}

async fn ledger_status(pool: &PgPool, id: &str) -> String {
    herald_shared::email::ledger::find(&mut pool.acquire().await.expect("conn"), id)
        .await
        .expect("query")
        .expect("ledger row")
        .status
        .as_str()
        .to_owned()
}

/// A job that failed for good whose ledger row says `status`, with `outcome_unknown`.
async fn failed_email(app: &TestApp, status: &str, outcome_unknown: bool) -> String {
    let (_, body) = app
        .post(
            "/v1/emails",
            json!({"to": "retry@example.com", "subject": "s", "text": "t"}),
        )
        .await;
    let id = body["job_id"].as_str().expect("id").to_owned();
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Failed', attempts = 8, max_attempts = 8 WHERE id = $1",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .expect("fail the job");
    sqlx::query(
        "UPDATE email_deliveries SET status = $2, outcome_unknown = $3, attempts = 1,
                ses_message_id = CASE WHEN $2 = 'sent' THEN 'ses-' || job_id END
         WHERE job_id = $1",
    )
    .bind(&id)
    .bind(status)
    .bind(outcome_unknown)
    .execute(&app.pool)
    .await
    .expect("ledger");
    id
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn retrying_a_sent_email_is_refused_and_changes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let id = failed_email(&app, "sent", false).await;
    let snapshot = |pool: PgPool, id: String| async move {
        sqlx::query_as::<_, (String, i32, i32, Option<String>, String, i32)>(
            "SELECT d.status::text, d.attempts, d.uncertain_resends, d.ses_message_id, j.status, j.attempts
             FROM email_deliveries d JOIN apalis.jobs j ON j.id = d.job_id WHERE d.job_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("snapshot")
    };
    let before = snapshot(app.pool.clone(), id.clone()).await;
    let (status, body) = app
        .send("POST", &format!("/v1/jobs/{id}/retry"), None, &[])
        .await;
    assert_eq!((status, code(&body)), (409, "already_sent"), "{body}");
    assert_eq!(snapshot(app.pool.clone(), id.clone()).await, before);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn retrying_after_an_unknown_outcome_counts_the_resend_as_uncertain(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    // Left `sending` (the run died), and failed with its last outcome unknown: both allowed, and
    // the next claim counts the resend.
    for (status, unknown) in [("sending", false), ("failed", true)] {
        let id = failed_email(&app, status, unknown).await;
        let (code_, body) = app
            .send("POST", &format!("/v1/jobs/{id}/retry"), None, &[])
            .await;
        assert_eq!(code_, 200, "{status}: {body}");
        assert_eq!(body["status"], "queued");
        assert_eq!(ledger_status(&app.pool, &id).await, "sending", "{status}");
        let mut conn = app.pool.acquire().await.expect("conn");
        assert!(
            herald_shared::email::ledger::claim(&mut conn, &id, None)
                .await
                .expect("claim")
        );
        let uncertain = herald_shared::email::ledger::find(&mut conn, &id)
            .await
            .expect("query")
            .expect("row")
            .uncertain_resends;
        assert_eq!(uncertain, 1, "{status}");
    }
    // A clean failure goes back to pending: the next send is a first try.
    let id = failed_email(&app, "failed", false).await;
    let (code_, _) = app
        .send("POST", &format!("/v1/jobs/{id}/retry"), None, &[])
        .await;
    assert_eq!(code_, 200);
    assert_eq!(ledger_status(&app.pool, &id).await, "pending");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn templates_are_versioned_previewed_listed_and_deleted_only_when_unused(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let body = |subject: &str| {
        json!({"subject": subject, "text": "Hi {{ name }}", "html": "<b>{{ name }}</b>",
               "sample_data": {"name": "Ada"}})
    };
    let (status, v1) = app
        .send(
            "PUT",
            "/v1/templates/promo",
            Some(&body("v1").to_string()),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    assert!(
        v1["created_by"]
            .as_str()
            .unwrap_or("")
            .starts_with("token:"),
        "{v1}"
    );
    let (_, v2) = app
        .send(
            "PUT",
            "/v1/templates/promo",
            Some(&body("v2").to_string()),
            &[],
        )
        .await;
    assert_eq!(v2["version"], 2);
    let (status, de) = app
        .send(
            "PUT",
            "/v1/templates/promo?locale=de",
            Some(&body("de").to_string()),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{de}");
    assert_eq!(
        (de["locale"].as_str(), de["version"].as_i64()),
        (Some("de"), Some(1))
    );
    let (status, versions) = app.send("GET", "/v1/templates/promo", None, &[]).await;
    assert_eq!(status, 200);
    let en: Vec<&Value> = versions["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|v| v["locale"] == "en")
        .collect();
    assert_eq!(en[0]["version"], 2, "newest first: {versions}");
    assert_eq!(en[0]["required_variables"], json!(["name"]), "{versions}");
    let (status, one) = app
        .send("GET", "/v1/templates/promo/versions/1", None, &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["subject"], "v1");
    let (status, preview) = app
        .send(
            "POST",
            "/v1/templates/promo/preview",
            Some(&json!({"data": {"name": "<Eve>"}, "version": 1}).to_string()),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["subject"], "v1");
    assert_eq!(preview["html"], "<b>&lt;Eve&gt;</b>");
    let (status, list) = app.send("GET", "/v1/templates", None, &[]).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    for name in [
        "promo",
        "welcome",
        "notification",
        "verification",
        "password_reset",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    // The token flows' templates cannot be sent by callers.
    let (status, refused) = app
        .post(
            "/v1/emails",
            json!({"to": "a@example.com", "template": "verification", "data": {"name": "x", "link": "y"}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    // Queued email using it: DELETE refused unless forced.
    let (status, queued) = app
        .post(
            "/v1/emails",
            json!({"to": "a@example.com", "template": "promo", "data": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let (status, busy) = app.send("DELETE", "/v1/templates/promo", None, &[]).await;
    assert_eq!(status, 409, "{busy}");
    assert_eq!(busy["error"]["code"], "template_in_use");
    let (status, _) = app
        .send("DELETE", "/v1/templates/promo?force=true", None, &[])
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.send("GET", "/v1/templates/promo", None, &[]).await;
    assert_eq!(status, 404);
    for (path, bad) in [
        ("/v1/templates/Bad-Name", body("x")),
        (
            "/v1/templates/ok",
            json!({"locale": "de_AT", "subject": "s", "text": "t", "html": "h", "sample_data": {}}),
        ),
        (
            "/v1/templates/ok",
            json!({"subject": "s", "text": "t", "html": "h", "sample_data": []}),
        ),
        (
            "/v1/templates/ok",
            json!({"subject": "{% if %}", "text": "t", "html": "h", "sample_data": {}}),
        ),
        (
            "/v1/templates/ok",
            json!({"subject": "a\u{0}b", "text": "t", "html": "h", "sample_data": {}}),
        ),
        (
            "/v1/templates/ok",
            json!({"subject": "s", "text": "t", "html": "h", "sample_data": {"x": "\u{0}"}}),
        ),
    ] {
        let (status, err) = app.send("PUT", path, Some(&bad.to_string()), &[]).await;
        assert_eq!(status, 422, "{path} {bad}: {err}");
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_dashboard_lists_templates_with_sandboxed_previews(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let page = app
        .http
        .get(format!("{}/admin/templates", app.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("frame-src 'self'") && !csp.contains("script"),
        "{csp}"
    );
    let html = page.text().await.expect("html");
    assert!(html.contains(r#"data-template="welcome""#), "{html}");
    assert!(
        html.contains(r#"<iframe sandbox src="/admin/templates/welcome/en/1/preview""#),
        "{html}"
    );
    let preview = app
        .http
        .get(format!("{}/admin/templates/welcome/en/1/preview", app.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("preview");
    assert_eq!(preview.status(), 200);
    let csp = preview.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.starts_with("sandbox;") && !csp.contains("script"),
        "{csp}"
    );
    assert!(preview.text().await.expect("html").contains("Hello Ada"));
    let anonymous = app
        .http
        .get(format!("{}/admin/templates/welcome/en/1/preview", app.url))
        .send()
        .await
        .expect("preview");
    assert_eq!(anonymous.status(), 401);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn declared_required_variables_and_a_data_schema_are_enforced_at_enqueue(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let put = |extra: Value, sample: Value| {
        let mut body = json!({"subject": "Hi", "text": "Hello {{ name }}", "html": "<p>{{ name }}</p>",
                              "sample_data": sample});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body.to_string()
    };
    let (status, err) = app
        .send(
            "PUT",
            "/v1/templates/coupon",
            Some(&put(
                json!({"required_variables": ["code"]}),
                json!({"name": "Ada"}),
            )),
            &[],
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("\"code\""),
        "{err}"
    );
    let (status, stored) = app
        .send(
            "PUT",
            "/v1/templates/coupon",
            Some(&put(
                json!({"data_schema": {"type": "object", "required": ["code"]}}),
                json!({"name": "Ada", "code": "X1"}),
            )),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["required_variables"], json!(["code", "name"]));
    let (status, refused) = app
        .post(
            "/v1/emails",
            json!({"to": "a@example.com", "template": "coupon", "data": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "template_data_invalid");
    let (status, queued) = app
        .post(
            "/v1/emails",
            json!({"to": "a@example.com", "template": "coupon", "data": {"name": "Ada", "code": "X2"}}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let (status, _) = app
        .send(
            "PUT",
            "/v1/templates/coupon",
            Some(&put(
                json!({"data_schema": {"required": "code"}}),
                json!({"name": "Ada"}),
            )),
            &[],
        )
        .await;
    assert_eq!(status, 422, "a schema whose required is not a list");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_batch_answers_each_item_in_order_and_queues_only_the_good_ones(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), true).await;
    herald_shared::suppressions::raise(
        &mut pool.acquire().await.expect("conn"),
        &herald_shared::suppressions::Raise::new(
            "gone@example.com",
            herald_shared::suppressions::SuppressionType::Bounce,
            true,
            true,
        ),
    )
    .await
    .expect("suppress");
    let batch = json!({"emails": [
        {"to": "a@example.com", "subject": "Hi", "text": "one", "idempotency_key": "k-1"},
        {"to": "not-an-address", "subject": "Hi", "text": "two"},
        {"to": "gone@example.com", "subject": "Hi", "text": "three"},
        {"to": "b@example.com", "template": "welcome", "data": {"name": "Bo"}},
        {"to": "c@example.com", "template": "welcome", "data": {}},
        {"to": "d@example.com", "subject": "Hi", "text": "six", "unknown": true},
    ]});
    let (status, body) = app.post("/v1/emails/batch", batch).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<i64> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, vec![202, 422, 409, 202, 422, 422], "{body}");
    assert_eq!(body["results"][2]["code"], "recipient_suppressed");
    assert_eq!(body["results"][4]["code"], "template_data_invalid");
    let first = body["results"][0]["job_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, job) = app
        .send("GET", &format!("/v1/jobs/{first}"), None, &[])
        .await;
    assert_eq!(status, 200, "{job}");
    let ledger: i64 = job_count(&pool).await;
    assert_eq!(ledger, 2, "only the two good items were queued");

    // The same key and item: replayed (200, same job); the same key with another item: 409.
    let again = json!({"emails": [
        {"to": "a@example.com", "subject": "Hi", "text": "one", "idempotency_key": "k-1"},
        {"to": "a@example.com", "subject": "Hi", "text": "changed", "idempotency_key": "k-1"},
        {"to": "e@example.com", "subject": "Hi", "text": "new"},
    ]});
    let (status, body) = app.post("/v1/emails/batch", again).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], 200);
    assert_eq!(body["results"][0]["job_id"], first.as_str());
    assert_eq!(body["results"][1]["status"], 409);
    assert_eq!(body["results"][1]["code"], "idempotency_conflict");
    assert_eq!(body["results"][2]["status"], 202);

    // A key repeated inside one batch: the same item answers the first's job; another item, 409.
    let repeated = json!({"emails": [
        {"to": "r@example.com", "subject": "Hi", "text": "r", "idempotency_key": "k-2"},
        {"to": "r@example.com", "subject": "Hi", "text": "r", "idempotency_key": "k-2"},
        {"to": "r@example.com", "subject": "Hi", "text": "other", "idempotency_key": "k-2"},
    ]});
    let (status, body) = app.post("/v1/emails/batch", repeated).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], 202, "{body}");
    assert_eq!(body["results"][1]["status"], 200, "{body}");
    assert_eq!(body["results"][1]["job_id"], body["results"][0]["job_id"]);
    assert_eq!(body["results"][2]["status"], 409, "{body}");
    let r_jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_deliveries WHERE recipient = 'r@example.com'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(r_jobs, 1, "a repeated key queued once");

    // 1,001 items, or none: refused whole.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"to": format!("m{i}@example.com"), "subject": "s", "text": "t"}))
        .collect();
    let (status, body) = app.post("/v1/emails/batch", json!({"emails": many})).await;
    assert!(matches!(status, 413 | 422), "{status} {body}");
    let (status, _) = app.post("/v1/emails/batch", json!({"emails": []})).await;
    assert_eq!(status, 422);
    // A send-scope token may use it.
    let res = app
        .http
        .post(format!("{}/v1/emails/batch", app.url))
        .bearer_auth(SEND_TOKEN)
        .json(&json!({"emails": [{"to": "f@example.com", "subject": "s", "text": "t"}]}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn concurrent_single_emails_share_statements_and_each_request_gets_its_own_answer(
    pool: PgPool,
) {
    // One statement at a time, so that requests arriving meanwhile are grouped.
    let app = TestApp::spawn_with(pool, true, &[("API_ENQUEUE_STATEMENTS", "1")]).await;
    herald_shared::suppressions::raise(
        &mut app.pool.acquire().await.expect("conn"),
        &herald_shared::suppressions::Raise::new(
            "gone@example.com",
            herald_shared::suppressions::SuppressionType::Bounce,
            true,
            true,
        ),
    )
    .await
    .expect("suppress");
    let mut asks: Vec<(String, Option<&str>)> = (0..40)
        .map(|i| {
            (
                format!(r#"{{"to":"c{i}@example.com","subject":"Hi","text":"x"}}"#),
                None,
            )
        })
        .collect();
    asks.push((
        r#"{"to":"gone@example.com","subject":"Hi","text":"x"}"#.into(),
        None,
    ));
    asks.push((
        r#"{"to":"bad address","subject":"Hi","text":"x"}"#.into(),
        None,
    ));
    for _ in 0..3 {
        asks.push((
            r#"{"to":"k@example.com","subject":"Hi","text":"same"}"#.into(),
            Some("k-1"),
        ));
    }
    let answers = futures::future::join_all(asks.iter().map(|(body, key)| {
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("Idempotency-Key", *k)).collect();
        let app = &app;
        async move { app.send("POST", "/v1/emails", Some(body), &headers).await }
    }))
    .await;
    for (i, (status, body)) in answers.iter().enumerate().take(40) {
        assert_eq!(*status, 202, "{body}");
        let recipient = herald_shared::email::ledger::record(
            &mut app.pool.acquire().await.expect("conn"),
            body["job_id"].as_str().expect("job id"),
        )
        .await
        .expect("query")
        .expect("ledger row")
        .recipient;
        assert_eq!(
            recipient,
            format!("c{i}@example.com"),
            "answered another request's job"
        );
    }
    assert_eq!(
        (answers[40].0, code(&answers[40].1)),
        (409, "recipient_suppressed")
    );
    assert_eq!(
        (answers[41].0, code(&answers[41].1)),
        (422, "validation_failed")
    );
    let keyed: Vec<&Value> = answers[42..]
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 202, "{b}");
            &b["job_id"]
        })
        .collect();
    assert!(keyed.iter().all(|id| *id == keyed[0]), "{keyed:?}");
    let jobs: i64 = job_count(&app.pool).await;
    assert_eq!(jobs, 41, "40 emails and one for the key");
}
