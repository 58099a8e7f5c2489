//! Templates as data, end to end: the real binaries, moto, versions pinned at enqueue.

use std::time::Duration;

use serde_json::{Value, json};

use crate::e2e::{Stack, moto_message, moto_messages, unique};

async fn put(stack: &Stack, name: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .put(format!("{}/v1/templates/{name}", stack.api_url))
        .bearer_auth(crate::e2e::TOKEN)
        .json(&body)
        .send()
        .await
        .expect("put");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn order(locale: &str, subject: &str, greeting: &str) -> Value {
    json!({
        "locale": locale,
        "subject": subject,
        "text": format!("{greeting} {{{{ name }}}},\nOrder {{{{ order_id }}}}: {{{{ total }}}}"),
        "html": format!("<p>{greeting} {{{{ name }}}}</p><p>Order {{{{ order_id }}}}: {{{{ total }}}}</p>"),
        "sample_data": {"name": "Ada", "order_id": "A-1", "total": "5 €"},
    })
}

#[tokio::test]
async fn templates_are_stored_localised_checked_and_pinned_at_enqueue() {
    let mut stack = Stack::start().await;
    let name = format!(
        "order_confirmation_{}",
        unique("t").replace(['-', '.'], "_")
    )
    .to_lowercase();
    let (status, body) = put(
        &stack,
        &name,
        order("en", "Your order {{ order_id }}", "Hello"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["required_variables"],
        json!(["name", "order_id", "total"])
    );
    let (status, body) = put(
        &stack,
        &name,
        order("de", "Ihre Bestellung {{ order_id }}", "Hallo"),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // A syntax error names the part and the line; nothing is stored.
    let mut broken = order("en", "x", "Hello");
    broken["text"] = json!("first line\nsecond {{ oops");
    let (status, body) = put(&stack, &name, broken).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "template_invalid");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("text, line 2"), "{message}");
    // Sample data without a variable the sources use: named, with its line.
    let mut lacking = order("en", "x", "Hello");
    lacking["sample_data"] = json!({"name": "Ada", "order_id": "A-1"});
    let (status, body) = put(&stack, &name, lacking).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"total\""),
        "{body}"
    );

    // data lacking a required variable: 422 at enqueue, no job.
    let to = format!("{}@example.com", unique("buyer"));
    let (status, body) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "template": name, "data": {"name": "Ada", "order_id": "A-2"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "template_data_invalid");

    // de-AT falls back to de.
    stack.spawn_worker(&[]);
    let data = json!({"name": "Ada", "order_id": "A-3", "total": "9 €"});
    let (status, body) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "template": name, "locale": "de-AT", "data": data}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = stack
        .wait_final(
            body["job_id"].as_str().expect("id"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let sent = moto_message(job["result"]["ses_message_id"].as_str().expect("id"))
        .await
        .expect("moto has it");
    assert_eq!(sent["subject"], "Ihre Bestellung A-3");
    assert!(
        sent["body"]
            .as_str()
            .unwrap_or_default()
            .contains("Hallo Ada"),
        "{sent}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn emails_queued_before_a_new_version_go_out_with_the_version_they_were_queued_with() {
    let mut stack = Stack::start().await;
    let name = format!("receipt_{}", unique("t").replace(['-', '.'], "_")).to_lowercase();
    let (status, body) = put(
        &stack,
        &name,
        order("en", "Receipt v1 {{ order_id }}", "Hi"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // No worker yet: the sender is paused while 100 emails of version 1 queue up.
    let tag = unique("pin");
    let data = json!({"name": "Ada", "order_id": "A", "total": "1 €"});
    for i in 0..100 {
        let (status, body) = stack
            .post(
                "/v1/emails",
                json!({"to": format!("{tag}-{i}@example.com"), "template": name, "data": data}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = put(
        &stack,
        &name,
        order("en", "Receipt v2 {{ order_id }}", "Hi"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 2);
    let (status, next) = stack
        .post(
            "/v1/emails",
            json!({"to": format!("{tag}-next@example.com"), "template": name, "data": data}),
        )
        .await;
    assert_eq!(status, 202, "{next}");
    stack.spawn_worker(&[]);
    stack
        .wait_final(
            next["job_id"].as_str().expect("id"),
            Duration::from_secs(60),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let subjects = loop {
        let subjects: Vec<(String, String)> = moto_messages()
            .await
            .iter()
            .filter_map(|m| {
                let to = m["destinations"]["ToAddresses"][0].as_str()?;
                to.starts_with(&tag).then(|| {
                    (
                        to.to_owned(),
                        m["subject"].as_str().unwrap_or("").to_owned(),
                    )
                })
            })
            .collect();
        if subjects.len() >= 101 || std::time::Instant::now() > deadline {
            break subjects;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(subjects.len(), 101, "every email went out once");
    for (to, subject) in &subjects {
        let want = if to.starts_with(&format!("{tag}-next")) {
            "Receipt v2 A"
        } else {
            "Receipt v1 A"
        };
        assert_eq!(subject, want, "{to}");
    }
    stack.finish().await;
}
