//! The failure policy against a mocked SES, with real apalis workers on a real database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::operation::send_email::{SendEmailError, SendEmailOutput};
use aws_sdk_sesv2::types::error::{
    MessageRejected, SendingPausedException, TooManyRequestsException,
};
use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
use herald_shared::email::Category;
use herald_shared::jobs::JobStatus;
use sqlx::PgPool;

use crate::helpers::{
    RunningWorker, context, delivery, enqueue, setup_queue, status, wait_until_final, worker_config,
};

type Calls = Arc<Mutex<Vec<Instant>>>;

/// A mocked SES whose answer to each call is chosen by `decide(call_index, first_call_time)`.
fn mocked_ses(
    calls: Calls,
    decide: impl Fn(usize, Duration) -> Option<SendEmailError> + Send + Sync + 'static,
) -> Client {
    let rule = mock!(Client::send_email).then_compute_response(move |_req| {
        let mut calls = calls.lock().expect("lock");
        let now = Instant::now();
        let since_first = calls.first().map(|t| now - *t).unwrap_or_default();
        let index = calls.len();
        calls.push(now);
        match decide(index, since_first) {
            Some(err) => MockResponse::Error(err),
            None => MockResponse::Output(
                SendEmailOutput::builder()
                    .message_id(format!("mock-{index}"))
                    .build(),
            ),
        }
    });
    mock_client!(aws_sdk_sesv2, RuleMode::MatchAny, [&rule], |c| c
        .retry_config(RetryConfig::disabled()))
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_throttled_send_is_retried_once_after_the_backoff_delay(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |i, _| {
        (i == 0).then(|| {
            SendEmailError::TooManyRequestsException(
                TooManyRequestsException::builder()
                    .message("slow down")
                    .build(),
            )
        })
    });
    let config = worker_config(&pool, &[("EMAIL_BACKOFF_BASE_MS", "1000")]);
    let ids = enqueue(&pool, 1, "throttle", Category::Transactional).await;
    let worker = RunningWorker::start(config.clone(), &pool, context(&pool, client, &config));
    let outcome = wait_until_final(&pool, &ids, Duration::from_secs(20)).await;
    worker.stop().await;

    assert_eq!(outcome, [JobStatus::Succeeded]);
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "one throttled call, one successful call");
    let gap = calls[1] - calls[0];
    // Equal jitter: the first retry waits between half and all of the 1 s base.
    assert!(
        gap >= Duration::from_millis(500),
        "retried after only {gap:?}"
    );
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    let d = delivery(&pool, &ids[0]).await;
    assert_eq!(d.status, "sent");
    assert_eq!(d.ses_message_id.as_deref(), Some("mock-1"));
    assert_eq!(d.attempts, 2);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_permanent_rejection_sends_once_and_fails_at_once(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| {
        Some(SendEmailError::MessageRejected(
            MessageRejected::builder()
                .message("Email address is not verified")
                .build(),
        ))
    });
    let config = worker_config(&pool, &[("EMAIL_BACKOFF_BASE_MS", "100")]);
    let ids = enqueue(&pool, 1, "rejected", Category::Transactional).await;
    let worker = RunningWorker::start(config.clone(), &pool, context(&pool, client, &config));
    let outcome = wait_until_final(&pool, &ids, Duration::from_secs(20)).await;
    // Give a wrongly scheduled retry the time to happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    worker.stop().await;

    assert_eq!(outcome, [JobStatus::Failed]);
    assert_eq!(
        calls.lock().expect("lock").len(),
        1,
        "a rejected email is not retried"
    );
    let d = delivery(&pool, &ids[0]).await;
    assert_eq!(d.status, "failed");
    assert!(
        d.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("MessageRejected"),
        "{:?}",
        d.last_error
    );
    assert_eq!(status(&pool, &ids[0]).await, JobStatus::Failed);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_sending_pause_stops_every_worker_without_using_attempts(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    // The account is paused for the first second after the first call, as SES would be.
    let client = mocked_ses(calls.clone(), |_, since_first| {
        (since_first < Duration::from_secs(1)).then(|| {
            SendEmailError::SendingPausedException(
                SendingPausedException::builder().message("paused").build(),
            )
        })
    });
    let config = worker_config(
        &pool,
        &[("EMAIL_PAUSE_SECS", "3"), ("WORKER_CONCURRENCY", "2")],
    );
    let ids = enqueue(&pool, 4, "paused", Category::Transactional).await;
    let ctx = context(&pool, client, &config);
    let first = RunningWorker::start(config.clone(), &pool, ctx.clone());
    let second = RunningWorker::start(config.clone(), &pool, ctx);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused_until: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT paused_until FROM email_sending_control")
            .fetch_one(&pool)
            .await
            .expect("control");
    assert!(
        paused_until.is_some_and(|t| t > chrono::Utc::now()),
        "the pause is recorded for every worker"
    );
    for id in &ids {
        assert_eq!(
            status(&pool, id).await,
            JobStatus::Queued,
            "paused jobs wait, they do not fail"
        );
    }

    let outcome = wait_until_final(&pool, &ids, Duration::from_secs(20)).await;
    first.stop().await;
    second.stop().await;
    assert!(
        outcome.iter().all(|s| *s == JobStatus::Succeeded),
        "{outcome:?}"
    );

    let calls = calls.lock().expect("lock").clone();
    let start = calls[0];
    // Calls made during the pause window (after SES's first answer had time to land) would be a bug.
    let during_pause: Vec<Duration> = calls
        .iter()
        .map(|t| *t - start)
        .filter(|d| *d > Duration::from_millis(500) && *d < Duration::from_millis(2900))
        .collect();
    assert!(
        during_pause.is_empty(),
        "SES was called during the pause: {during_pause:?}"
    );
    // A paused run is refunded: no job lost budget to the pause.
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE max_attempts - attempts < 8 - 1",
    )
    .fetch_one(&pool)
    .await
    .expect("budget");
    assert_eq!(lost, 0, "a pause must not use up attempts");
}
