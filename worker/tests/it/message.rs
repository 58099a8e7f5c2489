//! The whole envelope end to end: the real binaries send one email with names, cc, bcc, a sender,
//! reply-to, custom headers and tags; the raw message the emulator stored is read with a MIME
//! parser and every header and part checked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::e2e::{Stack, feedback_queue, moto_message, unique};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2_10::Digest;
    sha2_10::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn an_email_with_the_whole_envelope_reaches_ses_as_one_raw_message_with_every_header() {
    let mut stack =
        Stack::start_with_api_env(&[("EMAIL_FROM_ALLOWED", "noreply@herald.test,@herald.test")])
            .await;
    // A feedback queue of this test's own, and a webhook receiver for bounces.
    let (sqs, queue_url) = feedback_queue("msg-fb").await;
    stack.spawn_worker(&[("SQS_FEEDBACK_QUEUE_URL", &queue_url)]);
    let (hook_url, received) = receiver().await;
    let (status, hook) = stack
        .post(
            "/v1/webhooks",
            json!({"url": hook_url, "events": ["email.bounced"]}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let tag = unique("env");
    // Bytes that are not text, so any re-encoding would show in the hash.
    let pdf: Vec<u8> = b"%PDF-1.4\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(70_000))
        .collect();
    let png: Vec<u8> = [0x89u8, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]
        .into_iter()
        .chain((0..=255u8).rev().cycle().take(3_000))
        .collect();
    let ada = format!("{tag}-ada@example.com");
    let grace = format!("{tag}-grace@example.com");
    // Another domain, so that the masked address in the webhook event tells it from the others.
    let zoe = format!("{tag}-zoe@cc.example.org");
    let audit = format!("{tag}-audit@example.com");
    let (status, queued) = stack
        .post(
            "/v1/emails",
            json!({
                "from": "Billing Team <billing@herald.test>",
                "to": [format!("Ada Lovelace <{ada}>"), {"email": grace, "name": "Grace Hopper"}],
                "cc": [format!("Zoë Ångström <{zoe}>")],
                "bcc": [audit],
                "reply_to": "Support <support@herald.test>",
                "headers": {"X-Campaign": "spring", "X-Entity-Ref-ID": "inv-42"},
                "tags": {"plan": "pro", "kind": "receipt"},
                "attachments": [
                    {"filename": "../invoice 42.pdf", "content": b64(&pdf), "content_type": "application/pdf"},
                    {"filename": "logo.png", "content": b64(&png), "content_id": "logo"}
                ],
                "category": "marketing",
                "subject": "Your receipt",
                "text": "Thanks for your order.",
                "html": "<html><body><p>Thanks for your order.</p><img src=\"cid:logo\"></body></html>"
            }),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let job_id = queued["job_id"].as_str().expect("id");
    let job = stack.wait_final(job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let m = moto_message(job["result"]["ses_message_id"].as_str().expect("id"))
        .await
        .expect("moto has the message");
    assert!(m.get("unparsable").is_none(), "{m}");
    assert_eq!(m["source"], "billing@herald.test");
    assert_eq!(
        m["from"],
        json!([{"email": "billing@herald.test", "name": "Billing Team"}])
    );
    assert_eq!(
        m["to"],
        json!([{"email": ada, "name": "Ada Lovelace"}, {"email": grace, "name": "Grace Hopper"}])
    );
    assert_eq!(m["cc"], json!([{"email": zoe, "name": "Zoë Ångström"}]));
    assert_eq!(
        m["reply_to"],
        json!([{"email": "support@herald.test", "name": "Support"}])
    );
    let raw = m["raw"].as_str().expect("raw");
    let head = raw.split("\r\n\r\n").next().expect("headers");
    assert!(
        head.is_ascii(),
        "non-ASCII names are RFC 2047 encoded: {head}"
    );
    assert_eq!(m["has_bcc_header"], false, "no Bcc header: {head}");
    assert!(
        !raw.contains(&audit),
        "the bcc address is nowhere in the message"
    );
    let envelope = m["envelope"].to_string();
    assert!(
        envelope.contains(&audit),
        "bcc is in SES's envelope: {envelope}"
    );
    assert_eq!(m["headers"]["X-Campaign"], "spring");
    assert_eq!(m["headers"]["X-Entity-Ref-ID"], "inv-42");
    let unsubscribe = m["headers"]["List-Unsubscribe"]
        .as_str()
        .unwrap_or_default();
    assert!(
        unsubscribe.starts_with(&format!("<{}/unsubscribe/", stack.public_url)),
        "{head}"
    );
    assert_eq!(
        m["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    assert_eq!(m["message_id"], format!("{job_id}@herald.test"));
    assert!(m["date"].is_string(), "{head}");
    assert_eq!(m["subject"], "Your receipt");
    assert!(
        m["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Thanks for your order."),
        "{m}"
    );
    assert!(
        m["html"]
            .as_str()
            .unwrap_or_default()
            .contains("<p>Thanks for your order.</p>"),
        "{m}"
    );
    assert!(
        head.contains("multipart/mixed")
            && raw.contains("multipart/related")
            && raw.contains("multipart/alternative"),
        "attachments, the inline image beside the HTML, text and HTML as alternatives: {head}"
    );
    let parts = m["attachments"].as_array().expect("attachments");
    let find = |name: &str| {
        parts
            .iter()
            .find(|p| p["content_type"] == name)
            .unwrap_or_else(|| panic!("no {name} part in {parts:?}"))
    };
    let pdf_part = find("application/pdf");
    assert_eq!(pdf_part["filename"], "invoice 42.pdf", "the path is gone");
    assert_eq!(pdf_part["sha256"], sha256_hex(&pdf));
    let png_part = find("image/png");
    assert_eq!(png_part["content_id"], "logo");
    assert_eq!(png_part["sha256"], sha256_hex(&png));

    // A hard bounce for the cc recipient only: it alone is suppressed, the email's timeline shows
    // it, and the webhook event names it and carries the tags.
    let message_id = m["id"].as_str().expect("ses id").to_owned();
    let bounce = json!({"notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "NoEmail", "feedbackId": unique("fb"),
                   "timestamp": chrono::Utc::now().to_rfc3339(), "bouncedRecipients": [{"emailAddress": zoe}]},
        "mail": {"messageId": message_id, "timestamp": chrono::Utc::now().to_rfc3339(),
                 "source": "billing@herald.test", "destination": [ada, grace, zoe, audit]}});
    let envelope = json!({"Type": "Notification", "MessageId": unique("sns"),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:herald-ses-feedback",
        "Message": bounce.to_string(), "Timestamp": chrono::Utc::now().to_rfc3339()});
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(envelope.to_string())
        .send()
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(60);
    let email = loop {
        let (status, email) = stack.get(&format!("/v1/emails/{job_id}")).await;
        assert_eq!(status, 200, "{email}");
        let bounced = email["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .any(|e| e["event"] == "bounce" && e["recipient"] == zoe.as_str());
        if bounced {
            break email;
        }
        assert!(
            Instant::now() < deadline,
            "no bounce in the timeline: {email}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(email["tags"], json!({"kind": "receipt", "plan": "pro"}));
    assert_eq!(email["status"], "sent");
    assert_eq!(stack.get(&format!("/v1/suppressions/{zoe}")).await.0, 200);
    for other in [&ada, &grace, &audit] {
        assert_eq!(
            stack.get(&format!("/v1/suppressions/{other}")).await.0,
            404,
            "{other} is not suppressed"
        );
    }
    let event = loop {
        let bodies = received.lock().expect("log").clone();
        if let Some(body) = bodies.first() {
            break serde_json::from_str::<serde_json::Value>(body).expect("json");
        }
        assert!(Instant::now() < deadline, "no webhook event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(event["type"], "email.bounced", "{event}");
    assert_eq!(event["data"]["job_id"], job_id, "{event}");
    assert_eq!(
        event["data"]["tags"],
        json!({"kind": "receipt", "plan": "pro"})
    );
    assert!(
        event["data"]["recipient"]
            .as_str()
            .unwrap_or_default()
            .ends_with("@cc.example.org"),
        "the event names the cc recipient: {event}"
    );
    stack.finish().await;
}

/// A receiver on 127.0.0.1 that answers 200 and keeps every body.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let shared = log.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let log = shared.clone();
        async move {
            log.lock().expect("log").push(body);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
    (url, log)
}
