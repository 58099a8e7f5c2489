//! Dispatch failures over real sockets: a refused connection is a clean retry (nothing was sent); a
//! connection cut after the request was written is an unknown outcome (SES may have accepted it);
//! every send names its category's configuration set.

use std::time::Duration;

use aws_sdk_sesv2::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use herald_shared::email::Category;
use herald_worker::ses::{ConfigurationSets, OutgoingEmail, SendError, SesSender};
use tokio::io::AsyncReadExt;

fn sender(endpoint: &str) -> SesSender {
    sender_with(endpoint, ConfigurationSets::default())
}

fn sender_with(endpoint: &str, sets: ConfigurationSets) -> SesSender {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_sesv2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .http_client(http)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build();
    SesSender::new(
        aws_sdk_sesv2::Client::from_conf(config),
        "noreply@herald.test".into(),
        sets,
    )
}

fn email() -> OutgoingEmail {
    OutgoingEmail {
        to: "ada@example.com".into(),
        subject: "Hi".into(),
        text: Some("Hello".into()),
        html: None,
        headers: Vec::new(),
        job_id: "job-1".into(),
        envelope: Default::default(),
        attachment_bytes: Vec::new(),
        category: Category::Transactional,
    }
}

/// An SES stand-in that keeps each `SendEmail` body and accepts it.
async fn recording_ses() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let kept = bodies.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let kept = kept.clone();
        async move {
            kept.lock()
                .expect("bodies")
                .push(serde_json::from_str(&body).unwrap_or_default());
            (
                [("content-type", "application/json")],
                r#"{"MessageId":"m-1"}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

#[tokio::test]
async fn every_send_names_its_category_s_configuration_set_or_the_default() {
    let (url, bodies) = recording_ses().await;
    let sets = ConfigurationSets {
        default: Some("herald".into()),
        transactional: None,
        marketing: Some("herald-marketing".into()),
    };
    let with_sets = sender_with(&url, sets);
    let mut marketing = email();
    marketing.category = Category::Marketing;
    for e in [email(), marketing] {
        assert_eq!(with_sets.send(&e).await, Ok(Some("m-1".into())));
    }
    assert_eq!(sender(&url).send(&email()).await, Ok(Some("m-1".into())));
    let names: Vec<serde_json::Value> = bodies
        .lock()
        .expect("bodies")
        .iter()
        .map(|b| b["ConfigurationSetName"].clone())
        .collect();
    assert_eq!(
        names,
        [
            serde_json::json!("herald"),
            serde_json::json!("herald-marketing"),
            serde_json::Value::Null
        ],
        "none named when none is configured"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_clean_retry() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    // The listener is gone: nothing accepts on that port.
    let result = sender(&format!("http://127.0.0.1:{port}"))
        .send(&email())
        .await;
    assert!(matches!(result, Err(SendError::Retryable(_))), "{result:?}");
}

#[tokio::test]
async fn a_connection_cut_after_the_request_was_written_is_an_unknown_outcome() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        // Read the whole request (headers and body), then hang up without an answer.
        let mut seen = Vec::new();
        let mut buf = [0_u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("ada@example.com") {
            let n = socket.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen.len()
    });
    let result = sender(&format!("http://{addr}")).send(&email()).await;
    let read = server.await.expect("server");
    assert!(read > 0, "the request reached the server");
    assert!(matches!(result, Err(SendError::Unknown(_))), "{result:?}");
}
