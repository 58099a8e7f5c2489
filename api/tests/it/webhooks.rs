//! Webhook endpoints over HTTP: registration and its checks (https and no internal hosts in
//! production), secrets shown once, rotation with an overlap, signatures checked by an
//! independent implementation (Python's hmac).

use serde_json::json;
use sqlx::PgPool;

use crate::api::TestApp;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn endpoints_are_registered_changed_rotated_and_deleted(pool: PgPool) {
    let app = TestApp::spawn(pool, true).await;
    let (status, created) = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9000/hooks", "events": ["email.sent", "email.bounced", "email.sent"],
                   "description": "local receiver"}),
        )
        .await;
    assert_eq!(
        status, 201,
        "development allows a local http receiver: {created}"
    );
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 30,
        "{secret}"
    );
    assert_eq!(created["events"], json!(["email.sent", "email.bounced"]));
    assert_eq!(created["enabled"], true);
    let id = created["id"].as_str().expect("id").to_owned();

    let (_, listed) = app.send("GET", "/v1/webhooks", None, &[]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(listed[0].get("secret").is_none(), "never listed: {listed}");
    let (status, one) = app
        .send("GET", &format!("/v1/webhooks/{id}"), None, &[])
        .await;
    assert_eq!(status, 200);
    assert!(one.get("secret").is_none());

    for (body, why) in [
        (
            json!({"url": "http://127.0.0.1/x", "events": ["email.viewed"]}),
            "unknown event",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": []}),
            "no event",
        ),
        (
            json!({"url": "ftp://example.com/x", "events": ["email.sent"]}),
            "scheme",
        ),
        (
            json!({"url": "https://u:p@example.com/x", "events": ["email.sent"]}),
            "credentials",
        ),
        (
            json!({"url": "not a url", "events": ["email.sent"]}),
            "not a URL",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": ["email.sent"], "secret": "mine"}),
            "unknown field",
        ),
    ] {
        let (status, answer) = app.post("/v1/webhooks", body).await;
        assert_eq!(status, 422, "{why}: {answer}");
    }

    // Rotation: a new secret, shown once; the old one signs beside it for 24 hours.
    let (status, rotated) = app
        .send(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(&json!({"rotate_secret": true, "enabled": false}).to_string()),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated["enabled"], false);
    assert_eq!(rotated["disabled_reason"], "disabled by an operator");
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_secret_expires_at"]
        .as_str()
        .expect("overlap")
        .parse()
        .expect("time");
    let hours = (until - chrono::Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "{hours} h");
    let mut conn = app.pool.acquire().await.expect("conn");
    let signing = herald_shared::webhooks::signing_secrets(&mut conn, id.parse().expect("uuid"))
        .await
        .expect("secrets");
    assert_eq!(
        signing
            .iter()
            .map(|s| format!("whsec_{s}"))
            .collect::<Vec<_>>(),
        vec![new_secret.clone(), secret.clone()],
        "both sign during the overlap, the new one first"
    );

    // A signature made with the secret as the API gave it, checked by Python's hmac module.
    let body = r#"{"type":"email.sent","timestamp":"2026-12-02T05:00:00Z","data":{"job_id":"x"}}"#;
    let signature =
        herald_shared::webhooks::sign(&new_secret, "msg_2Qx", 1_764_651_600, body.as_bytes())
            .expect("signature");
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys\n\
             key=base64.b64decode(sys.argv[1].removeprefix('whsec_'))\n\
             mac=hmac.new(key,(sys.argv[2]+'.'+sys.argv[3]+'.'+sys.argv[4]).encode(),hashlib.sha256).digest()\n\
             print('v1,'+base64.b64encode(mac).decode())",
            &new_secret,
            "msg_2Qx",
            "1764651600",
            body,
        ])
        .output()
        .expect("python3 runs");
    assert!(check.status.success(), "{check:?}");
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), signature);

    let (status, _) = app
        .send(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(r#"{"events": ["email.viewed"]}"#),
            &[],
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = app
        .send("DELETE", &format!("/v1/webhooks/{id}"), None, &[])
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .send("GET", &format!("/v1/webhooks/{id}"), None, &[])
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.send("GET", "/v1/webhooks/not-a-uuid", None, &[]).await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn production_refuses_http_and_internal_hosts(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        true,
        &[
            ("APP_ENV", "production"),
            ("WEBHOOK_ALLOW_PRIVATE_URLS", ""),
        ],
    )
    .await;
    for url in [
        "http://hooks.example.com/x",
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]:8443/hook",
        "https://localhost/hook",
        "https://[::ffff:192.168.1.1]/hook",
    ] {
        let (status, answer) = app
            .post(
                "/v1/webhooks",
                json!({"url": url, "events": ["email.sent"]}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {answer}");
    }
    let (status, answer) = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://93.184.216.34/hook", "events": ["email.sent"]}),
        )
        .await;
    assert_eq!(status, 201, "a public address: {answer}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_guard_is_on_without_app_env_and_every_internal_destination_is_refused(pool: PgPool) {
    // No APP_ENV, no WEBHOOK_ALLOW_PRIVATE_URLS: development, guard on.
    let app = TestApp::spawn_with(pool, true, &[("WEBHOOK_ALLOW_PRIVATE_URLS", "")]).await;
    for url in herald_shared::outbound::REFUSED_EXAMPLES {
        let (status, answer) = app
            .post(
                "/v1/webhooks",
                json!({"url": url, "events": ["email.sent"]}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        // The example names (*.test) do not resolve here: refused as unresolvable instead.
        assert!(
            message.contains("internal address") || message.contains("does not resolve"),
            "{url}: {answer}"
        );
    }
    let (status, answer) = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://169.254.169.254/latest/meta-data/", "events": ["email.sent"]}),
        )
        .await;
    assert_eq!(status, 422, "cloud metadata: {answer}");
    let (_, listed) = app.send("GET", "/v1/webhooks", None, &[]).await;
    assert_eq!(listed, json!([]), "nothing registered");
    let (status, answer) = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://93.184.216.34/hook", "events": ["email.sent"]}),
        )
        .await;
    assert_eq!(
        status, 201,
        "a public address, http allowed outside production: {answer}"
    );
}

#[test]
fn private_targets_cannot_be_allowed_in_production() {
    let err = herald_api::config::ApiConfig::from_source(&[
        ("APP_ENV", "production"),
        ("WEBHOOK_ALLOW_PRIVATE_URLS", "true"),
        ("API_TOKEN", "5b1e9c3a7f2d4e6b8a0c1e3f5a7b9d1c"),
        ("FRONTEND_URL", "https://app.example.com"),
        ("EMAIL_FROM", "noreply@herald.test"),
        ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
        ("MARKETING_EMAIL_ENABLED", "false"),
    ])
    .expect_err("refused");
    assert!(
        err.to_string().starts_with("WEBHOOK_ALLOW_PRIVATE_URLS"),
        "{err}"
    );
}
