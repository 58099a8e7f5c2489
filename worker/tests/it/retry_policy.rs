//! The failure policy against a mocked SES, with real apalis workers on a real database.
//!
//! Long on purpose: each failure class shares the mocked SES and the running-worker helpers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::operation::send_email::{SendEmailError, SendEmailOutput};
use aws_sdk_sesv2::types::error::{
    MessageRejected, SendingPausedException, TooManyRequestsException,
};
use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
use herald_shared::email::{Category, EmailJob};
use herald_shared::jobs::JobStatus;
use herald_worker::job::drain;
use sqlx::PgPool;

use crate::helpers::{
    RunningWorker, context, delivery, drain_to_end, enqueue, setup_queue, status, wait_until_final,
    worker_config,
};

type Calls = Arc<Mutex<Vec<Instant>>>;
/// Header or tag names and values of one request.
type Pairs = Vec<(String, String)>;

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

/// A mocked SES that accepts every email with the same answer: `message_id`, or none at all.
fn accepting_ses(calls: Calls, message_id: Option<&'static str>) -> Client {
    let rule = mock!(Client::send_email).then_compute_response(move |_| {
        calls.lock().expect("lock").push(Instant::now());
        MockResponse::Output(
            SendEmailOutput::builder()
                .set_message_id(message_id.map(str::to_owned))
                .build(),
        )
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
    let worker = RunningWorker::start(config.clone(), &pool, context(&pool, client, &config)).await;
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
                .message("Email address is not verified. The following identities failed the check in region US-EAST-1: rejected-0@example.com")
                .build(),
        ))
    });
    let config = worker_config(&pool, &[("EMAIL_BACKOFF_BASE_MS", "100")]);
    let ids = enqueue(&pool, 1, "rejected", Category::Transactional).await;
    let outcome = drain_to_end(context(&pool, client, &config), &pool, &ids).await;

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
    // SES named the recipient; what Herald stores (and logs, and shows) has it masked.
    let stored = d.last_error.unwrap_or_default();
    assert!(
        stored.contains("r***@example.com") && !stored.contains("rejected-0@"),
        "{stored}"
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
    let first = RunningWorker::start(config.clone(), &pool, ctx.clone()).await;
    let second = RunningWorker::start(config.clone(), &pool, ctx).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused_until =
        herald_shared::email::sending_pause(&mut pool.acquire().await.expect("conn"))
            .await
            .expect("control")
            .map(|p| p.until);
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
    // A held run is not a run: each job ends with the one run that sent it on its record and its
    // budget untouched (no refunds).
    let off: Vec<(i32, i32)> = sqlx::query_as(
        "SELECT attempts, max_attempts FROM apalis.jobs WHERE attempts <> 1 OR max_attempts <> 8",
    )
    .fetch_all(&pool)
    .await
    .expect("budget");
    assert_eq!(off, [], "a pause must not use up attempts");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_send_rate_holds_across_worker_processes_together(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[("WORKER_CONCURRENCY", "8")]);
    let ids = enqueue(&pool, 11, "rate", Category::Transactional).await;
    // Two workers with their own contexts, as two processes would have, sharing 5 emails/s.
    let mut first_ctx = context(&pool, client.clone(), &config);
    let mut second_ctx = context(&pool, client, &config);
    Arc::get_mut(&mut first_ctx).expect("unique").send_rate = 5.0;
    Arc::get_mut(&mut second_ctx).expect("unique").send_rate = 5.0;
    let first = RunningWorker::start(config.clone(), &pool, first_ctx).await;
    let second = RunningWorker::start(config.clone(), &pool, second_ctx).await;
    let outcome = wait_until_final(&pool, &ids, Duration::from_secs(30)).await;
    first.stop().await;
    second.stop().await;
    assert!(
        outcome.iter().all(|s| *s == JobStatus::Succeeded),
        "{outcome:?}"
    );
    let mut calls = calls.lock().expect("lock").clone();
    calls.sort();
    assert_eq!(calls.len(), 11);
    // 11 sends at 5/s need at least 2 s between the first and the last; allow scheduling slack.
    let span = calls[10] - calls[0];
    assert!(
        span >= Duration::from_millis(1900),
        "11 sends took only {span:?} at 5/s"
    );
    for pair in calls.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "two sends {:?} apart at 5/s",
            pair[1] - pair[0]
        );
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn marketing_mail_carries_one_click_unsubscribe_headers_and_the_job_tag(pool: PgPool) {
    setup_queue(&pool).await;
    let seen: Arc<Mutex<Vec<(Pairs, Pairs)>>> = Arc::default();
    let record = seen.clone();
    let rule = mock!(Client::send_email).then_compute_response(move |req| {
        // The raw message as SES gets it, read with a MIME parser: the List-* headers, unfolded.
        let raw = req
            .content()
            .and_then(|c| c.raw())
            .map(|r| r.data().as_ref().to_vec())
            .unwrap_or_default();
        let parsed = mail_parser::MessageParser::default()
            .parse(&raw)
            .expect("a MIME message");
        let headers = parsed
            .headers_raw()
            .filter(|(name, _)| name.starts_with("List-"))
            .map(|(name, value)| (name.to_owned(), value.replace("\r\n", "").trim().to_owned()))
            .collect();
        let tags = req
            .email_tags()
            .iter()
            .map(|t| (t.name().to_owned(), t.value().to_owned()))
            .collect();
        let mut record = record.lock().expect("lock");
        record.push((headers, tags));
        MockResponse::Output(
            SendEmailOutput::builder()
                .message_id(format!("m-{}", record.len()))
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_sesv2, RuleMode::MatchAny, [&rule], |c| c
        .retry_config(RetryConfig::disabled()));
    let config = worker_config(&pool, &[("UNSUBSCRIBE_MAILTO", "unsubscribe@herald.test")]);
    let mut ids = enqueue(&pool, 1, "news", Category::Marketing).await;
    ids.extend(enqueue(&pool, 1, "receipt", Category::Transactional).await);
    drain::<EmailJob>(context(&pool, client, &config))
        .await
        .expect("drain");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    let marketing = seen
        .iter()
        .find(|(h, _)| !h.is_empty())
        .expect("one message has headers");
    let unsubscribe = marketing
        .0
        .iter()
        .find(|(n, _)| n == "List-Unsubscribe")
        .expect("List-Unsubscribe");
    // `<PUBLIC_URL/unsubscribe/TOKEN>, <mailto:…>`: the token names the recipient, not the job.
    let prefix = format!("<{}/unsubscribe/", crate::helpers::PUBLIC_URL);
    let (token, mailto) = unsubscribe
        .1
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once(">, "))
        .unwrap_or_else(|| panic!("List-Unsubscribe: {}", unsubscribe.1));
    assert_eq!(
        mailto,
        "<mailto:unsubscribe@herald.test?subject=unsubscribe>"
    );
    assert!(ids.iter().all(|id| !token.contains(id.as_str())));
    let signer = herald_shared::unsubscribe::Signer::from_list(crate::helpers::UNSUBSCRIBE_SECRET)
        .expect("signer");
    let claim = signer
        .verify(token)
        .expect("a token signed with UNSUBSCRIBE_SECRETS");
    assert_eq!(claim.email, "news-0@example.com");
    assert_eq!(claim.category, Category::Marketing);
    assert!(marketing.0.contains(&(
        "List-Unsubscribe-Post".into(),
        "List-Unsubscribe=One-Click".into()
    )));
    assert_eq!(
        seen.iter().filter(|(h, _)| h.is_empty()).count(),
        1,
        "transactional mail has no unsubscribe headers"
    );
    for (_, tags) in &seen {
        let tag = tags
            .iter()
            .find(|(n, _)| n == "herald_job_id")
            .expect("job tag");
        assert!(ids.contains(&tag.1), "tag {} names a job", tag.1);
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn an_accepted_email_whose_message_id_cannot_be_stored_is_still_never_resent(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    // Two acceptances with the same id: the ledger's unique constraint refuses the second.
    let client = accepting_ses(calls.clone(), Some("same-id"));
    let config = worker_config(&pool, &[("WORKER_CONCURRENCY", "1")]);
    let ids = enqueue(&pool, 2, "dup", Category::Transactional).await;
    let outcome = drain_to_end(context(&pool, client, &config), &pool, &ids).await;
    assert_eq!(outcome, [JobStatus::Succeeded, JobStatus::Succeeded]);
    assert_eq!(
        calls.lock().expect("lock").len(),
        2,
        "each job called SES once"
    );
    let mut notes = Vec::new();
    for id in &ids {
        let d = delivery(&pool, id).await;
        assert_eq!(d.status, "sent");
        notes.extend(d.last_error);
    }
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("could not be stored"), "{notes:?}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_compliance_pause_holds_marketing_on_every_worker_until_resume(pool: PgPool) {
    setup_queue(&pool).await;
    herald_shared::compliance::pause(
        &mut pool.acquire().await.expect("conn"),
        herald_shared::email::Category::Marketing,
        "test",
    )
    .await
    .expect("pause marketing");
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[]);
    let marketing = enqueue(&pool, 3, "news", Category::Marketing).await;
    let transactional = enqueue(&pool, 2, "receipt", Category::Transactional).await;
    let ctx = context(&pool, client, &config);
    let first = RunningWorker::start(config.clone(), &pool, ctx.clone()).await;
    let second = RunningWorker::start(config.clone(), &pool, ctx).await;

    let outcome = wait_until_final(&pool, &transactional, Duration::from_secs(20)).await;
    assert!(
        outcome.iter().all(|s| *s == JobStatus::Succeeded),
        "{outcome:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &marketing {
        // A held job looks again every 500 ms here, so it may be caught running its check.
        let now = status(&pool, id).await;
        assert!(
            matches!(now, JobStatus::Queued | JobStatus::Running),
            "marketing waits while paused, got {now:?}"
        );
        let d = delivery(&pool, id).await;
        assert_eq!(
            d.status, "pending",
            "a held email is never claimed for sending"
        );
        assert!(
            d.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("compliance"),
            "{:?}",
            d.last_error
        );
    }
    assert_eq!(
        calls.lock().expect("lock").len(),
        2,
        "only transactional mail reached SES"
    );

    let mut conn = pool.acquire().await.expect("conn");
    herald_shared::compliance::resume(&mut conn, &[Category::Marketing])
        .await
        .expect("resume");
    drop(conn);
    let outcome = wait_until_final(&pool, &marketing, Duration::from_secs(20)).await;
    first.stop().await;
    second.stop().await;
    assert!(
        outcome.iter().all(|s| *s == JobStatus::Succeeded),
        "held jobs are sent after resume: {outcome:?}"
    );
    assert_eq!(calls.lock().expect("lock").len(), 5);
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE max_attempts - attempts < 8 - 1",
    )
    .fetch_one(&pool)
    .await
    .expect("budget");
    assert_eq!(lost, 0, "waiting out a pause uses no attempts");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_2xx_without_a_message_id_counts_as_sent_and_is_not_resent(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = accepting_ses(calls.clone(), None);
    let config = worker_config(&pool, &[]);
    let ids = enqueue(&pool, 1, "noid", Category::Transactional).await;
    let outcome = drain_to_end(context(&pool, client, &config), &pool, &ids).await;
    assert_eq!(outcome, [JobStatus::Succeeded]);
    assert_eq!(calls.lock().expect("lock").len(), 1, "sent once");
    let d = delivery(&pool, &ids[0]).await;
    assert_eq!((d.status.as_str(), d.ses_message_id), ("sent", None));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_rescued_run_that_meets_a_sent_row_finishes_as_sent_without_calling_ses(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[]);
    let ids = enqueue(&pool, 1, "rescued", Category::Transactional).await;
    // An earlier run got SES's acceptance recorded, then died before apalis heard of it.
    sqlx::query(
        "UPDATE email_deliveries SET status = 'sent', attempts = 1, ses_message_id = 'first-run', sent_at = now()
         WHERE job_id = $1",
    )
    .bind(&ids[0])
    .execute(&pool)
    .await
    .expect("sent earlier");
    let outcome = drain_to_end(context(&pool, client, &config), &pool, &ids).await;
    assert_eq!(outcome, [JobStatus::Succeeded]);
    assert!(calls.lock().expect("lock").is_empty(), "SES was not called");
    let d = delivery(&pool, &ids[0]).await;
    assert_eq!(
        (d.status.as_str(), d.attempts, d.ses_message_id.as_deref()),
        ("sent", 1, Some("first-run"))
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_row_a_crash_left_sending_or_with_an_unknown_outcome_is_sent_once_and_counted(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[]);
    let ids = enqueue(&pool, 3, "uncertain", Category::Transactional).await;
    // An earlier run died during its SES call; another timed out and left its outcome unknown.
    sqlx::query("UPDATE email_deliveries SET status = 'sending', attempts = 1 WHERE job_id = $1")
        .bind(&ids[0])
        .execute(&pool)
        .await
        .expect("sending");
    sqlx::query(
        "UPDATE email_deliveries SET attempts = 1, outcome_unknown = true WHERE job_id = $1",
    )
    .bind(&ids[1])
    .execute(&pool)
    .await
    .expect("unknown");
    let outcome = drain_to_end(context(&pool, client, &config), &pool, &ids).await;
    assert_eq!(outcome, [JobStatus::Succeeded; 3]);
    assert_eq!(calls.lock().expect("lock").len(), 3, "one call each");
    let mut rows = Vec::new();
    for id in &ids {
        let d = delivery(&pool, id).await;
        rows.push((
            d.status.as_str().to_owned(),
            d.attempts,
            d.uncertain_resends,
            d.outcome_unknown,
        ));
    }
    let sent = |attempts, uncertain| ("sent".to_owned(), attempts, uncertain, false);
    assert_eq!(
        rows,
        [sent(2, 1), sent(2, 0), sent(1, 0)],
        "the crash's resend is counted as uncertain; the others are not"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_grouped_claim_blocked_by_a_row_lock_falls_back_and_the_other_emails_go_out(
    pool: PgPool,
) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[("WORKER_CONCURRENCY", "8")]);
    let ids = enqueue(&pool, 4, "locked", Category::Transactional).await;
    // Someone else holds the first email's ledger row.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM email_deliveries WHERE job_id = $1 FOR UPDATE")
        .bind(&ids[0])
        .execute(&mut *holder)
        .await
        .expect("lock");
    let started = Instant::now();
    let worker = RunningWorker::start(config.clone(), &pool, context(&pool, client, &config)).await;
    let others = wait_until_final(&pool, &ids[1..], Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(others, [JobStatus::Succeeded; 3]);
    assert!(
        took < Duration::from_secs(8),
        "the others went out in {took:?}"
    );
    assert_ne!(status(&pool, &ids[0]).await, JobStatus::Succeeded);
    holder.rollback().await.expect("release");
    let first = wait_until_final(&pool, &ids[..1], Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(first, [JobStatus::Succeeded]);
    assert_eq!(calls.lock().expect("lock").len(), 4, "each email sent once");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_database_error_in_a_job_backs_off_instead_of_spending_attempts_at_once(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[("EMAIL_BACKOFF_BASE_MS", "20000")]);
    let ids = enqueue(&pool, 1, "dberr", Category::Transactional).await;
    // Every claim of this row fails inside the database.
    sqlx::query(
        "CREATE FUNCTION refuse_claim() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'simulated database failure'; END $$",
    )
    .execute(&pool)
    .await
    .expect("function");
    sqlx::query(
        "CREATE TRIGGER refuse_claim BEFORE UPDATE ON email_deliveries
         FOR EACH ROW WHEN (NEW.status = 'sending') EXECUTE FUNCTION refuse_claim()",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    let worker = RunningWorker::start(config.clone(), &pool, context(&pool, client, &config)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (attempts, wait) = loop {
        let row: (i32, f64) = sqlx::query_as(
            "SELECT attempts, EXTRACT(EPOCH FROM run_at - now())::float8 FROM apalis.jobs WHERE id = $1",
        )
        .bind(&ids[0])
        .fetch_one(&pool)
        .await
        .expect("job");
        if row.0 >= 1 || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attempts, 1, "the failed run was recorded");
    // Half the base at least (equal jitter), not an immediate re-fetch.
    assert!(wait > 5.0, "next run in {wait} s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = herald_shared::jobs::find(&mut pool.acquire().await.expect("conn"), &ids[0])
        .await
        .expect("query")
        .expect("job")
        .attempts;
    worker.stop().await;
    assert_eq!(again, 1, "no burst of attempts");
    assert!(calls.lock().expect("lock").is_empty());
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_sent_email_s_job_is_recorded_by_its_sent_write_and_acked_no_second_time(pool: PgPool) {
    setup_queue(&pool).await;
    let calls: Calls = Arc::default();
    let client = mocked_ses(calls.clone(), |_, _| None);
    let config = worker_config(&pool, &[]);
    let ids = enqueue(&pool, 40, "recorded", Category::Transactional).await;
    let ctx = context(&pool, client, &config);
    let worker = RunningWorker::start(config.clone(), &pool, ctx.clone()).await;
    let outcome = wait_until_final(&pool, &ids, Duration::from_secs(30)).await;
    worker.stop().await;
    assert!(
        outcome.iter().all(|s| *s == JobStatus::Succeeded),
        "{outcome:?}"
    );
    assert_eq!(calls.lock().expect("lock").len(), 40, "each sent once");
    // Recorded in the `sent` statement's transaction (same `now()`), as apalis records a run; an
    // ack written after it would have moved `done_at`.
    let recorded: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM apalis.jobs j JOIN email_deliveries d ON d.job_id = j.id
           WHERE j.id = ANY($1) AND j.status = 'Done' AND j.attempts = 1 AND j.done_at = d.sent_at
             AND d.ses_message_id LIKE 'mock-%'
             AND j.last_result = jsonb_build_object('Ok', jsonb_build_object(
                 'outcome', 'sent', 'ses_message_id', d.ses_message_id))"#,
    )
    .bind(&ids)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(recorded, 40);
    assert!(
        ctx.ledger.acked.is_empty(),
        "every recorded job's ack arrived and was left out"
    );
}
