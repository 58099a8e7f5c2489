//! The operator's console in a real browser against the real binaries: find an email by its
//! recipient, read its attempts, retry it after it failed for good and watch it succeed with its
//! SES message id and feedback; add and remove a suppression; a screenshot of every page.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

#[path = "../../../api/tests/it/browser.rs"]
mod browser;

use crate::e2e::{Stack, TOKEN, moto_sqs, unique};
use browser::Browser;

/// Where the screenshots go: `HERALD_SCREENSHOTS`, or the test's own folder under target/.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("HERALD_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test]
async fn an_operator_finds_an_email_retries_it_and_manages_suppressions_in_a_real_browser() {
    // One run per email: the first worker cannot reach SES, so the email fails for good at once.
    let mut stack = Stack::start_with_api_env(&[("EMAIL_MAX_ATTEMPTS", "1")]).await;
    let sqs = moto_sqs().await;
    let dlq = sqs
        .create_queue()
        .queue_name(unique("console-dlq"))
        .send()
        .await
        .expect("dlq")
        .queue_url
        .expect("url");
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("arn")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("arn");
    let feedback = sqs
        .create_queue()
        .queue_name(unique("console-fb"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}).to_string(),
        )
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    stack.spawn_worker(&[
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("SQS_FEEDBACK_QUEUE_URL", &feedback),
    ]);
    let to = format!("{}@example.com", unique("operator"));
    let (status, body) = stack
        .post(
            "/v1/emails",
            json!({"to": to, "subject": "Your reset link", "text": "Hello"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().expect("id").to_owned();
    let job = stack.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed", "{job}");
    stack.kill_worker();
    // Token expiry every second, so the schedules page has runs and reports to show.
    stack.spawn_worker(&[
        ("SQS_FEEDBACK_QUEUE_URL", &feedback),
        ("EXPIRE_TOKENS_CRON", "* * * * * *"),
    ]);

    let shots = screenshot_dir();
    let browser = Browser::start().await;
    browser.goto(&format!("{}/admin", stack.api_url)).await;
    browser.wait_for_url("/admin/login").await;
    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/admin").await;
    browser
        .wait_for_text("<h1>Herald queues</h1>", false, 10)
        .await;
    browser.screenshot(&shots.join("01-overview.png")).await;

    // Find the email by its recipient, typed as an operator would (another case).
    browser.goto(&format!("{}/admin/jobs", stack.api_url)).await;
    browser
        .type_into("input[name=recipient]", &to.to_uppercase())
        .await;
    browser.click("form.filters button[type=submit]").await;
    // The unfiltered list the filter was typed into shows the job too: wait for the filtered one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !browser.current_url().await.contains("recipient=") {
        assert!(
            std::time::Instant::now() < deadline,
            "the filter was not submitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = browser
        .wait_for_text(&format!("data-job=\"{id}\""), false, 10)
        .await;
    assert_eq!(list.matches("<tr class=\"job\"").count(), 1, "{list}");
    assert!(!list.contains(&to), "the address is masked: {list}");
    browser
        .screenshot(&shots.join("02-jobs-by-recipient.png"))
        .await;

    browser
        .click(&format!("a[href=\"/admin/jobs/{id}\"]"))
        .await;
    browser.wait_for_url(&format!("/admin/jobs/{id}")).await;
    let failed = browser.wait_for_text("id=\"timeline\"", false, 10).await;
    assert!(failed.contains(r#"id="job-state">failed<"#), "{failed}");
    assert!(failed.contains("Your reset link"), "the subject: {failed}");
    assert!(
        failed.contains("class=\"attempt\""),
        "the attempt is listed: {failed}"
    );
    browser.screenshot(&shots.join("03-job-failed.png")).await;

    browser.click("#retry").await;
    browser.wait_for_text("id=\"confirm\"", false, 10).await;
    browser
        .screenshot(&shots.join("04-confirm-retry.png"))
        .await;
    browser.click("#confirm").await;
    browser.wait_for_url(&format!("/admin/jobs/{id}")).await;
    let sent = browser
        .wait_for_text(r#"id="job-state">succeeded<"#, true, 60)
        .await;
    let (_, job) = stack.get(&format!("/v1/jobs/{id}")).await;
    let message_id = job["result"]["ses_message_id"]
        .as_str()
        .expect("sent")
        .to_owned();
    assert!(
        sent.contains(&message_id),
        "the SES message id is shown: {sent}"
    );
    assert!(sent.contains(r#"data-event="sent""#), "{sent}");
    assert!(sent.contains(r#"data-event="retried""#), "{sent}");

    // SES reports the delivery; a garbage message is refused and counted.
    let delivery = json!({"notificationType": "Delivery",
        "delivery": {"timestamp": chrono::Utc::now().to_rfc3339(), "recipients": [to], "smtpResponse": "250 ok"},
        "mail": {"messageId": message_id, "timestamp": chrono::Utc::now().to_rfc3339(), "source": "noreply@herald.test", "destination": [to]}});
    let envelope = json!({"Type": "Notification", "MessageId": unique("sns"), "TopicArn": "arn:aws:sns:us-east-1:123456789012:herald-ses-feedback",
        "Message": delivery.to_string(), "Timestamp": chrono::Utc::now().to_rfc3339()});
    for body in [envelope.to_string(), "not json at all".to_owned()] {
        sqs.send_message()
            .queue_url(&feedback)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }
    browser
        .wait_for_text(r#"class="feedback" data-type="delivery""#, true, 60)
        .await;
    browser
        .screenshot(&shots.join("05-job-sent-and-delivered.png"))
        .await;

    // A suppression added and removed, each with its reason in the audit trail.
    let other = format!("{}@example.com", unique("suppress"));
    browser
        .goto(&format!("{}/admin/suppressions", stack.api_url))
        .await;
    browser.type_into("#add input[name=email]", &other).await;
    browser
        .type_into("#add input[name=reason]", "asked us by phone")
        .await;
    browser.click("#add button[type=submit]").await;
    let listed = browser
        .wait_for_text("manual: asked us by phone (via console)", false, 10)
        .await;
    assert_eq!(
        listed.matches("<tr class=\"suppression\"").count(),
        1,
        "{listed}"
    );
    let (status, _) = stack.get(&format!("/v1/suppressions/{other}")).await;
    assert_eq!(status, 200, "added");
    browser.screenshot(&shots.join("06-suppressions.png")).await;
    browser
        .type_into("#suppressions input[name=reason]", "wrong address")
        .await;
    browser.click("#suppressions form button").await;
    browser
        .wait_for_text("removed because wrong address", true, 10)
        .await;
    let (status, _) = stack.get(&format!("/v1/suppressions/{other}")).await;
    assert_eq!(status, 404, "removed");

    browser
        .goto(&format!("{}/admin/schedules", stack.api_url))
        .await;
    let schedules = browser
        .wait_for_text("verification_tokens 0", true, 30)
        .await;
    assert!(
        schedules.contains("id=\"schedule-expire_tokens\""),
        "{schedules}"
    );
    browser.screenshot(&shots.join("07-schedules.png")).await;

    browser
        .goto(&format!("{}/admin/feedback", stack.api_url))
        .await;
    let page = browser
        .wait_for_text(r#"data-reason="poison""#, true, 60)
        .await;
    assert!(
        page.contains(r#"data-queue="dead_letter""#),
        "the DLQ depth: {page}"
    );
    assert!(page.contains(r#"data-type="delivery""#), "{page}");
    browser.screenshot(&shots.join("08-feedback.png")).await;

    browser.resize(390, 844).await;
    browser.goto(&format!("{}/admin", stack.api_url)).await;
    browser
        .wait_for_text("<h1>Herald queues</h1>", false, 10)
        .await;
    browser
        .screenshot(&shots.join("09-overview-phone.png"))
        .await;
    drop(browser);
    eprintln!("console screenshots in {}", shots.display());
    stack.finish().await;
}
