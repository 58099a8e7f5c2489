//! Webhook delivery end to end: the real binaries, moto, and a receiver this test runs. Signed
//! events arrive (checked with Python's hmac, not Herald's code), 5xx is retried with growing delays
//! under the same `webhook-id`, 410 fails at once, a worker killed mid-delivery loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::e2e::{Stack, moto_sqs, unique};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

type Log = Arc<Mutex<HashMap<String, Vec<Received>>>>;

/// A receiver on 127.0.0.1: `/flaky` answers 500 to its first two requests, `/gone` 410, `/slow`
/// sleeps 6 s on its first request; everything else (and later requests) 200.
async fn receiver() -> (String, Log) {
    let log: Log = Arc::default();
    let shared = log.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
            let log = shared.clone();
            async move {
                let header = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let path = uri.path().to_owned();
                let n = {
                    let mut log = log.lock().expect("log");
                    let seen = log.entry(path.clone()).or_default();
                    seen.push(Received {
                        at: Instant::now(),
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body,
                    });
                    seen.len()
                };
                match (path.as_str(), n) {
                    ("/flaky", 1 | 2) => (StatusCode::INTERNAL_SERVER_ERROR, "not now"),
                    ("/gone", _) => (StatusCode::GONE, "this endpoint is gone"),
                    ("/slow", 1) => {
                        tokio::time::sleep(Duration::from_secs(6)).await;
                        (StatusCode::OK, "late")
                    }
                    _ => (StatusCode::OK, "ok"),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
    (url, log)
}

fn requests(log: &Log, path: &str) -> Vec<Received> {
    log.lock()
        .expect("log")
        .get(path)
        .cloned()
        .unwrap_or_default()
}

async fn wait_for(log: &Log, path: &str, n: usize, what: &str) -> Vec<Received> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        let got = requests(log, path);
        if got.len() >= n {
            eprintln!("{what}: {:?}", start.elapsed());
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} got {} of {n}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Verifies a request's signature with Python's hmac module, independent of Herald's code.
fn verify_with_python(secret: &str, r: &Received) -> bool {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys\n\
             key=base64.b64decode(sys.argv[1].removeprefix('whsec_'))\n\
             mac=hmac.new(key,(sys.argv[2]+'.'+sys.argv[3]+'.'+sys.argv[4]).encode(),hashlib.sha256).digest()\n\
             expected='v1,'+base64.b64encode(mac).decode()\n\
             sys.exit(0 if any(hmac.compare_digest(expected,s) for s in sys.argv[5].split(' ')) else 1)",
            secret,
            &r.id,
            &r.timestamp,
            &r.body,
            &r.signature,
        ])
        .status()
        .expect("python3 runs");
    out.success()
}

/// Queues a raw email to a fresh address; its `POST /v1/emails` answer.
async fn send_email(stack: &Stack, prefix: &str) -> Value {
    let to = format!("{}@example.com", unique(prefix));
    let (status, body) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body
}

/// Polls an endpoint's deliveries (every 100 ms, 60 s at most) until `done` holds for them.
async fn wait_deliveries(stack: &Stack, hook: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, listed) = stack.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
        if done(&listed) {
            return listed;
        }
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts SES's JSON on the feedback queue in an SNS envelope (unsigned: the stack's worker runs with
/// `SNS_VERIFY_SIGNATURES=false`, as moto's SNS signs nothing).
async fn feed(sqs: &aws_sdk_sqs::Client, queue: &str, ses: &Value) {
    let envelope = json!({"Type": "Notification", "MessageId": unique("sns"),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:herald-ses-feedback",
        "Message": ses.to_string(), "Timestamp": chrono::Utc::now().to_rfc3339()});
    sqs.send_message()
        .queue_url(queue)
        .message_body(envelope.to_string())
        .send()
        .await
        .expect("send");
}

async fn register(stack: &Stack, url: &str, events: &[&str]) -> (String, String) {
    let (status, body) = stack
        .post("/v1/webhooks", json!({"url": url, "events": events}))
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().expect("id").to_owned(),
        body["secret"].as_str().expect("secret").to_owned(),
    )
}

#[tokio::test]
async fn events_arrive_signed_are_retried_with_backoff_and_survive_a_killed_worker() {
    let mut stack = Stack::start().await;
    let (base, log) = receiver().await;
    let (flaky, secret) = register(
        &stack,
        &format!("{base}/flaky"),
        &["email.sent", "email.bounced"],
    )
    .await;
    let (gone, _) = register(&stack, &format!("{base}/gone"), &["email.sent"]).await;
    let (slow, _) = register(&stack, &format!("{base}/slow"), &["email.sent"]).await;
    let sqs = moto_sqs().await;
    let feedback = sqs
        .create_queue()
        .queue_name(unique("wh-fb"))
        // A message a killed worker's long poll took comes back after 2 s, not SQS's 30.
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "2",
        )
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let worker_env = [
        ("SQS_FEEDBACK_QUEUE_URL", feedback.as_str()),
        ("WEBHOOK_BACKOFF_BASE_MS", "1000"),
    ];
    stack.spawn_worker(&worker_env);

    let to = format!("{}@example.com", unique("hooked"));
    let (status, body) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().expect("id").to_owned();
    let job = stack.wait_final(&job_id, Duration::from_secs(30)).await;
    let message_id = job["result"]["ses_message_id"]
        .as_str()
        .expect("sent")
        .to_owned();

    // 410: failed at once, one attempt, visible in the deliveries (awaited before the kill below,
    // which could otherwise land between the POST and its record, and send it again).
    let listed = wait_deliveries(&stack, &gone, |l| l[0]["status"] == "failed").await;
    assert_eq!(listed[0]["attempts"], 1, "{listed}");
    assert_eq!(listed[0]["attempt_log"][0]["status_code"], 410, "{listed}");
    assert_eq!(
        listed[0]["attempt_log"][0]["response"], "this endpoint is gone",
        "{listed}"
    );

    // The slow receiver holds the first POST; the worker is killed while it waits.
    wait_for(&log, "/slow", 1, "the slow POST started").await;
    stack.kill_worker();
    stack.spawn_worker(&worker_env);

    // 500, 500, then 200: the same webhook-id each time, the delays growing.
    let tries = wait_for(&log, "/flaky", 3, "three attempts").await;
    let sent: Value = serde_json::from_str(&tries[2].body).expect("json");
    assert_eq!(sent["type"], "email.sent", "{sent}");
    assert_eq!(sent["data"]["job_id"], job_id.as_str());
    assert_eq!(sent["data"]["ses_message_id"], message_id.as_str());
    assert_eq!(sent["data"]["sequence"], 1);
    assert!(
        !tries[2].body.contains(&to),
        "no full address unless asked: {}",
        tries[2].body
    );
    assert!(
        tries
            .iter()
            .all(|t| t.id == tries[0].id && t.id.starts_with("msg_"))
    );
    assert!(
        tries.iter().all(|t| verify_with_python(&secret, t)),
        "every attempt is signed"
    );
    let first_gap = tries[1].at - tries[0].at;
    let second_gap = tries[2].at - tries[1].at;
    assert!(
        first_gap >= Duration::from_millis(450) && second_gap >= Duration::from_millis(950),
        "backoff 1 s doubling with equal jitter: {first_gap:?}, {second_gap:?}"
    );

    // A bounce for the email, through the feedback queue, is the second event.
    let bounce = json!({"notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "NoEmail", "feedbackId": unique("fb"),
                   "timestamp": chrono::Utc::now().to_rfc3339(), "bouncedRecipients": [{"emailAddress": to}]},
        "mail": {"messageId": message_id, "timestamp": chrono::Utc::now().to_rfc3339(), "source": "noreply@herald.test", "destination": [to]}});
    feed(&sqs, &feedback, &bounce).await;
    let tries = wait_for(&log, "/flaky", 4, "the bounce").await;
    let bounced: Value = serde_json::from_str(&tries[3].body).expect("json");
    assert_eq!(bounced["type"], "email.bounced", "{bounced}");
    assert_eq!(bounced["data"]["hard"], true);
    assert_eq!(bounced["data"]["sequence"], 2);
    assert_ne!(tries[3].id, tries[0].id, "another event, another id");
    assert!(verify_with_python(&secret, &tries[3]));

    assert_eq!(requests(&log, "/gone").len(), 1, "not retried");

    // The killed worker's delivery was sent again by the next worker and delivered.
    let slow_tries = wait_for(&log, "/slow", 2, "the killed delivery again").await;
    assert_eq!(slow_tries[0].id, slow_tries[1].id);
    wait_deliveries(&stack, &slow, |l| l[0]["status"] == "delivered").await;
    let (_, flaky_deliveries) = stack.get(&format!("/v1/webhooks/{flaky}/deliveries")).await;
    let statuses: Vec<&str> = flaky_deliveries
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert_eq!(statuses, ["delivered", "delivered"], "{flaky_deliveries}");
    stack.finish().await;
}

/// SES's opens and clicks, through the feedback queue of the real worker: signed `email.opened`
/// and `email.clicked` (with the link) at the receiver, and both on the email's timeline.
#[tokio::test]
async fn opens_and_clicks_from_ses_arrive_as_signed_webhooks_and_on_the_timeline() {
    let mut stack = Stack::start().await;
    let (base, log) = receiver().await;
    let (_, secret) = register(
        &stack,
        &format!("{base}/engaged"),
        &["email.opened", "email.clicked"],
    )
    .await;
    let (sqs, feedback) = crate::e2e::feedback_queue("wh-eng").await;
    stack.spawn_worker(&[("SQS_FEEDBACK_QUEUE_URL", feedback.as_str())]);
    let to = format!("{}@example.com", unique("engaged"));
    let (status, body) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "subject": "Hi", "html": "<p><a href=\"https://app.example.com/welcome?step=1\">Go</a></p>",
                   "tags": {"campaign": "welcome"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().expect("id").to_owned();
    let job = stack.wait_final(&id, Duration::from_secs(30)).await;
    let message = job["result"]["ses_message_id"]
        .as_str()
        .expect("sent")
        .to_owned();
    for kind in ["Open", "Click"] {
        let record = crate::engagement::sample(kind, &message, &to);
        feed(&sqs, &feedback, &record).await;
    }
    let got = wait_for(&log, "/engaged", 2, "the open and the click").await;
    let mut bodies: Vec<Value> = got
        .iter()
        .map(|r| {
            assert!(verify_with_python(&secret, r), "signed: {}", r.body);
            serde_json::from_str(&r.body).expect("json")
        })
        .collect();
    bodies.sort_by_key(|b| b["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(bodies[0]["type"], "email.clicked", "{bodies:?}");
    assert_eq!(
        bodies[0]["data"]["link"],
        "https://app.example.com/welcome?step=1"
    );
    assert_eq!(bodies[1]["type"], "email.opened", "{bodies:?}");
    for b in &bodies {
        assert_eq!(b["data"]["job_id"], id.as_str());
        assert_eq!(b["data"]["tags"], json!({"campaign": "welcome"}));
    }
    let (status, email) = stack.get(&format!("/v1/emails/{id}")).await;
    assert_eq!(status, 200, "{email}");
    let events: Vec<&str> = email["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(
        events.contains(&"open") && events.contains(&"click"),
        "{email}"
    );
    stack.finish().await;
}

/// A receiver whose first answer is 200 and every later one a 500 with a 200 MB body, streamed
/// for as long as the client reads; counts the body bytes it managed to write.
async fn huge_receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const BODY: usize = 200 * 1024 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/huge", listener.local_addr().expect("addr"));
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            n += 1;
            let count = count.clone();
            tokio::spawn(async move {
                let mut request = vec![0_u8; 64 * 1024];
                let _ = socket.read(&mut request).await;
                if n == 1 {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let head =
                    format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {BODY}\r\n\r\n");
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut mine = 0;
                while mine < BODY {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                    mine += chunk.len();
                    count.fetch_add(chunk.len(), Ordering::SeqCst);
                }
            });
        }
    });
    (url, written)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_receiver_answering_200_mb_costs_the_worker_less_than_10_mb_and_the_attempt_is_recorded()
{
    let mut stack = Stack::start().await;
    let (url, written) = huge_receiver().await;
    let (hook, _) = register(&stack, &url, &["email.sent"]).await;
    // One attempt per delivery within the test.
    stack.spawn_worker(&[("WEBHOOK_BACKOFF_BASE_MS", "600000")]);
    let pid = stack.workers[0].id();
    let attempted = |want: usize| {
        move |l: &Value| {
            l.as_array().map_or(0, |l| {
                l.iter()
                    .filter(|d| d["attempts"].as_i64() >= Some(1))
                    .count()
            }) >= want
        }
    };
    // The first email's event is delivered (200): the worker's paths are warm.
    send_email(&stack, "huge1").await;
    wait_deliveries(&stack, &hook, attempted(1)).await;
    let before = rss_kib(pid);
    // The second's answer is a 500 with 200 MB behind it.
    send_email(&stack, "huge2").await;
    let listed = wait_deliveries(&stack, &hook, attempted(2)).await;
    let after = rss_kib(pid);
    let failed = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["attempt_log"][0]["status_code"] == 500)
        .unwrap_or_else(|| panic!("the 500 is recorded: {listed}"));
    let excerpt = failed["attempt_log"][0]["response"]
        .as_str()
        .expect("excerpt");
    assert_eq!(excerpt.len(), 512, "the first 512 characters are kept");
    assert!(
        after.saturating_sub(before) < 10 * 1024,
        "worker RSS {before} KiB -> {after} KiB"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < 32 * 1024 * 1024,
        "the receiver wrote {sent} bytes: the read did not stop"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_stored_internal_url_is_refused_by_the_worker_at_once_and_not_retried() {
    let mut stack = Stack::start().await;
    // Registered while private targets were allowed (the stack's API allows them)…
    let (hook, _) = register(
        &stack,
        "http://169.254.169.254/latest/meta-data/",
        &["email.sent"],
    )
    .await;
    // …delivered by a worker with the guard on, as every production worker has it.
    stack.spawn_worker(&[("WEBHOOK_ALLOW_PRIVATE_URLS", "false")]);
    send_email(&stack, "guarded").await;
    let listed = wait_deliveries(&stack, &hook, |l| l[0]["status"] == "failed").await;
    assert_eq!(
        listed[0]["attempts"], 1,
        "failed at once, not retried: {listed}"
    );
    let error = listed[0]["attempt_log"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("URL rule") && error.contains("169.254.169.254"),
        "{listed}"
    );
    assert!(
        listed[0]["attempt_log"][0]["status_code"].is_null(),
        "nothing was called"
    );
    stack.finish().await;
}

#[tokio::test]
async fn eight_200_mb_answers_in_a_row_are_read_no_further_than_their_excerpts() {
    use herald_shared::outbound::{SystemLookup, UrlPolicy};
    use herald_worker::outbound::{EXCERPT_CHARS, Outbound};
    let (url, written) = huge_receiver().await;
    let local = UrlPolicy {
        allow_private: true,
        require_https: false,
    };
    let out =
        Outbound::new(Duration::from_secs(30), local, Arc::new(SystemLookup)).expect("client");
    // Once (the receiver's 200), so that the client's own set-up is not counted.
    let _ = out.post(&url, &[], Vec::new()).await;
    let before = rss_kib(std::process::id());
    for _ in 0..8 {
        let (code, excerpt) = out.post(&url, &[], Vec::new()).await.expect("answer");
        assert_eq!(code, 500);
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS);
    }
    let grown = rss_kib(std::process::id()).saturating_sub(before);
    assert!(grown < 10 * 1024, "RSS grew by {grown} KiB");
    // Eight answers of 200 MB: what the receiver got to write is what socket buffers hold.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < 8 * 16 * 1024 * 1024,
        "the receiver wrote {sent} bytes"
    );
}

#[path = "../../examples/webhook_receiver.rs"]
#[allow(dead_code)]
mod receiver_example;

#[test]
fn the_documented_receiver_accepts_herald_signatures_and_refuses_forgeries() {
    use herald_shared::webhooks::{new_secret, sign};
    use receiver_example::verify;
    let secret = format!("whsec_{}", new_secret().expect("secret"));
    let old = format!("whsec_{}", new_secret().expect("secret"));
    let body = br#"{"type":"email.sent","timestamp":"2026-12-02T05:40:20.400Z","data":{}}"#;
    let (id, ts) = ("msg_0193a1b2c3d4", 1_764_654_020_i64);
    let t = ts.to_string();
    let good = sign(&secret, id, ts, body).expect("sign");
    assert!(verify(&secret, id, &t, &good, body, ts));
    // During a rotation Herald sends both signatures; either secret verifies.
    let both = format!("{} {good}", sign(&old, id, ts, body).expect("sign"));
    assert!(verify(&secret, id, &t, &both, body, ts + 60));
    assert!(verify(&old, id, &t, &both, body, ts - 60));
    // Forged and malformed deliveries.
    let other = format!("whsec_{}", new_secret().expect("secret"));
    // (secret, id, timestamp, signatures, body, now)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [u8], i64);
    let cases: [Case<'_>; 9] = [
        (&secret, id, &t, &good, b"{\"type\":\"email.failed\"}", ts),
        (&secret, "msg_other", &t, &good, body, ts),
        (&other, id, &t, &good, body, ts),
        (&secret, id, &t, &good, body, ts + 301),
        (&secret, id, &t, &good, body, ts - 301),
        (&secret, id, "soon", &good, body, ts),
        (&secret, id, &t, good.trim_start_matches("v1,"), body, ts),
        (&secret, id, &t, "v1,not-base64!", body, ts),
        ("whsec_%%%", id, &t, &good, body, ts),
    ];
    for (n, (key, id, t, sig, body, now)) in cases.into_iter().enumerate() {
        assert!(!verify(key, id, t, sig, body, now), "case {n} was accepted");
    }
}

#[test]
fn the_docs_show_the_receiver_as_it_is_compiled() {
    let docs = include_str!("../../../docs/webhooks.md");
    let example = include_str!("../../examples/webhook_receiver.rs");
    assert!(
        docs.contains(example.trim()),
        "docs/webhooks.md must show worker/examples/webhook_receiver.rs as it is"
    );
}
