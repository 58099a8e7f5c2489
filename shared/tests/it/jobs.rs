use herald_shared::email::{self, Category, EmailContent, EmailJob};
use herald_shared::jobs::{self, EnqueueOptions, JobStatus};
use sqlx::PgPool;

fn job() -> EmailJob {
    EmailJob {
        envelope: Default::default(),
        to: "tx@example.com".into(),
        category: Category::Transactional,
        content: EmailContent::Raw {
            subject: "s".into(),
            text: Some("t".into()),
            html: None,
        },
    }
}

/// Sets up apalis's tables; the options the tests enqueue with.
async fn with_apalis(pool: &PgPool) -> EnqueueOptions {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .expect("apalis");
    EnqueueOptions {
        max_attempts: 3,
        run_at: None,
        idempotency_key: None,
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_rolled_back_transaction_drops_the_job_and_its_ledger_row(pool: PgPool) {
    let options = with_apalis(&pool).await;

    let mut tx = pool.begin().await.expect("tx");
    let dropped = email::enqueue(&mut tx, &job(), options.clone())
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!(count(&pool, "SELECT count(*) FROM apalis.jobs").await, 0);
    assert_eq!(
        herald_shared::email::ledger::totals(&pool)
            .await
            .expect("totals")
            .rows,
        0
    );

    let mut tx = pool.begin().await.expect("tx");
    let kept = email::enqueue(&mut tx, &job(), options)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_ne!(dropped, kept);
    let mut conn = pool.acquire().await.expect("conn");
    let row = jobs::find(&mut conn, &kept.to_string())
        .await
        .expect("find")
        .expect("committed job");
    assert_eq!(row.queue, email::EMAIL_QUEUE);
    assert_eq!(row.max_attempts, 3);
    assert_eq!(row.status(), JobStatus::Queued);
    // The id is a ULID, which apalis-postgres requires.
    assert_eq!(row.id.parse::<jobs::JobId>().expect("ulid"), kept);
    let delivery = email::ledger::find(&mut conn, &kept.to_string())
        .await
        .expect("q")
        .expect("ledger row");
    assert_eq!(delivery.status, "pending");
}

/// The columns apalis-postgres reads of a job, as text, for comparing two jobs.
async fn job_shape(pool: &PgPool, id: &str) -> Vec<Option<String>> {
    let row: (Vec<Option<String>>,) = sqlx::query_as(
        "SELECT ARRAY[status, attempts::text, max_attempts::text, priority::text, metadata::text,
                      idempotency_key, lock_at::text, lock_by, done_at::text, last_result::text,
                      (run_at <= now())::text]
         FROM apalis.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("job");
    row.0
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn enqueue_emails_writes_a_job_as_apalis_own_push_does(pool: PgPool) {
    let options = with_apalis(&pool).await;
    let mut conn = pool.acquire().await.expect("conn");
    // The SQL function's job beside one pushed through apalis-postgres's own push_tasks.
    let ours = email::enqueue(&mut conn, &job(), options.clone())
        .await
        .expect("enqueue");
    let theirs = match jobs::enqueue(&mut conn, &job(), options)
        .await
        .expect("push")
    {
        jobs::Enqueued::New(id) => id,
        jobs::Enqueued::Duplicate => panic!("no key, no duplicate"),
    };
    let (a, b) = (
        job_shape(&pool, &ours.to_string()).await,
        job_shape(&pool, &theirs.to_string()).await,
    );
    assert_eq!(a, b, "the two jobs differ");
    assert_eq!(a[0].as_deref(), Some("Pending"));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn enqueue_many_answers_keys_and_suppressions_per_email_and_queues_the_rest(pool: PgPool) {
    crate::helpers::queue_with_suppressed_address(&pool).await;
    let mut gone = job();
    gone.to = "Gone@Example.com".into();
    let fine = job();
    let item = |job, key| email::NewEmail {
        job,
        run_at: None,
        max_attempts: 3,
        idempotency: key,
    };
    let mut conn = pool.acquire().await.expect("conn");
    let first = email::enqueue_many(
        &mut conn,
        &[
            item(&fine, Some(("k1", "h1"))),
            item(&gone, None),
            item(&fine, None),
        ],
        true,
    )
    .await
    .expect("enqueue");
    let email::Queued::New(keyed) = first[0] else {
        panic!("{first:?}")
    };
    assert_eq!(first[1], email::Queued::Suppressed);
    assert!(matches!(first[2], email::Queued::New(_)), "{first:?}");
    let again = email::enqueue_many(
        &mut conn,
        &[
            item(&fine, Some(("k1", "h1"))),
            item(&fine, Some(("k1x", "h1"))),
        ],
        true,
    )
    .await
    .expect("again");
    assert_eq!(again[0], email::Queued::Replayed(keyed));
    assert!(matches!(again[1], email::Queued::New(_)));
    let other_body = email::enqueue_many(&mut conn, &[item(&fine, Some(("k1", "h2")))], true)
        .await
        .expect("conflict");
    assert_eq!(other_body, vec![email::Queued::KeyConflict]);
    // One email takes the function's plain path: the same answers.
    let one_replayed = email::enqueue_many(&mut conn, &[item(&fine, Some(("k1", "h1")))], true)
        .await
        .expect("replay one");
    assert_eq!(one_replayed, vec![email::Queued::Replayed(keyed)]);
    let one_suppressed = email::enqueue_many(&mut conn, &[item(&gone, Some(("k9", "h9")))], true)
        .await
        .expect("suppressed one");
    assert_eq!(one_suppressed, vec![email::Queued::Suppressed]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM api_idempotency_keys WHERE idempotency_key = 'k9'"
        )
        .await,
        0,
        "a refused email keeps no key"
    );
    // Without the suppression check (schedules, account mail) the worker's gate decides later.
    let queued_anyway = email::enqueue_many(&mut conn, &[item(&gone, None)], false)
        .await
        .expect("unchecked");
    assert!(matches!(queued_anyway[0], email::Queued::New(_)));
    assert_eq!(count(&pool, "SELECT count(*) FROM apalis.jobs").await, 4);
    assert_eq!(
        herald_shared::email::ledger::totals(&pool)
            .await
            .expect("totals")
            .rows,
        4
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM email_deliveries WHERE recipient = 'gone@example.com'"
        )
        .await,
        1,
        "recipients are stored normalised"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_sent_write_records_running_jobs_as_apalis_would_and_leaves_ended_ones(pool: PgPool) {
    let options = with_apalis(&pool).await;
    let mut tx = pool.begin().await.expect("tx");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = email::enqueue(&mut tx, &job(), options.clone())
            .await
            .expect("enqueue");
        ids.push(id.to_string());
    }
    tx.commit().await.expect("commit");
    let (running, cancelled, sent_before) = (&ids[0], &ids[1], &ids[2]);
    let mut conn = pool.acquire().await.expect("conn");
    jobs::register_worker(&mut conn, "w", email::EMAIL_QUEUE)
        .await
        .expect("worker");
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Queued', lock_by = 'w', lock_at = now()
         WHERE id = ANY($1)",
    )
    .bind([running, sent_before])
    .execute(&pool)
    .await
    .expect("fetched");
    assert!(jobs::cancel(&mut conn, cancelled).await.expect("cancel"));
    sqlx::query(
        "UPDATE email_deliveries SET status = 'sent', ses_message_id = 'earlier' WHERE job_id = $1",
    )
    .bind(sent_before)
    .execute(&pool)
    .await
    .expect("sent earlier");

    let mut rows =
        email::ledger::Accepted::many(&ids, &[Some("m-0".into()), Some("m-1".into()), None]);
    rows[2].run = 2;
    let recorded = email::ledger::mark_sent_and_record_runs(
        &mut conn,
        &rows,
        email::ledger::LockWait::Session,
    )
    .await
    .expect("record");
    assert_eq!(
        recorded,
        std::slice::from_ref(running),
        "only the job still running"
    );

    // As apalis's own ack writes a successful run, in the same transaction as the ledger's `sent`.
    let (status, attempts, result, same_instant): (String, i32, serde_json::Value, bool) =
        sqlx::query_as(
            "SELECT j.status, j.attempts, j.last_result, j.done_at = d.sent_at
             FROM apalis.jobs j JOIN email_deliveries d ON d.job_id = j.id WHERE j.id = $1",
        )
        .bind(running)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!((status.as_str(), attempts, same_instant), ("Done", 1, true));
    assert_eq!(
        result,
        serde_json::json!({"Ok": email::ledger::job_result(email::ledger::Status::Sent, Some("m-0"))}),
        "the SQL builds the answer job_result builds"
    );
    // A cancelled job stays cancelled, though SES's acceptance reaches the ledger.
    let row = jobs::find(&mut conn, cancelled)
        .await
        .expect("find")
        .expect("job");
    assert_eq!(row.status(), JobStatus::Cancelled);
    let ledger = email::ledger::find(&mut conn, cancelled)
        .await
        .expect("q")
        .expect("row");
    assert_eq!(
        (ledger.status.as_str(), ledger.ses_message_id.as_deref()),
        ("sent", Some("m-1"))
    );
    // A row sent earlier keeps its message id, and its job is left to apalis's own ack.
    let row = jobs::find(&mut conn, sent_before)
        .await
        .expect("find")
        .expect("job");
    assert_eq!(row.status(), JobStatus::Running);
    let ledger = email::ledger::find(&mut conn, sent_before)
        .await
        .expect("q")
        .expect("row");
    assert_eq!(ledger.ses_message_id.as_deref(), Some("earlier"));
}

/// `mark_sent_and_record_runs` writes the ledger's `sent` as `mark_sent_many` does (one statement
/// text carries both; this keeps it so), from every state a row can be in.
#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_grouped_sent_write_moves_ledger_rows_as_mark_sent_many_does(pool: PgPool) {
    let options = with_apalis(&pool).await;
    let states = [
        "pending",
        "sending",
        "failed",
        "cancelled",
        "sent",
        "suppressed",
    ];
    let mut tx = pool.begin().await.expect("tx");
    let mut pairs = Vec::new();
    for _ in states {
        let a = email::enqueue(&mut tx, &job(), options.clone())
            .await
            .expect("a");
        let b = email::enqueue(&mut tx, &job(), options.clone())
            .await
            .expect("b");
        pairs.push((a.to_string(), b.to_string()));
    }
    tx.commit().await.expect("commit");
    for (state, (a, b)) in states.iter().zip(&pairs) {
        sqlx::query(
            "UPDATE email_deliveries SET status = $1, last_error = 'earlier', outcome_unknown = true
             WHERE job_id = ANY($2)",
        )
        .bind(state)
        .bind([a, b])
        .execute(&pool)
        .await
        .expect("state");
    }
    let (a_ids, b_ids): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let mut conn = pool.acquire().await.expect("conn");
    let a_msgs: Vec<Option<String>> = (0..a_ids.len()).map(|i| Some(format!("m-{i}"))).collect();
    let b_msgs: Vec<Option<String>> = (0..b_ids.len()).map(|i| Some(format!("n-{i}"))).collect();
    email::ledger::mark_sent_many(
        &mut conn,
        &email::ledger::Accepted::many(&a_ids, &a_msgs),
        email::ledger::LockWait::Session,
    )
    .await
    .expect("mark_sent_many");
    email::ledger::mark_sent_and_record_runs(
        &mut conn,
        &email::ledger::Accepted::many(&b_ids, &b_msgs),
        email::ledger::LockWait::Session,
    )
    .await
    .expect("mark_sent_and_record_runs");
    let row = "SELECT status, replace(replace(ses_message_id, 'n-', ''), 'm-', ''), last_error,
                      outcome_unknown, sent_at IS NOT NULL, attempts
               FROM email_deliveries WHERE job_id = $1";
    type Row = (String, Option<String>, Option<String>, bool, bool, i32);
    for (state, (a, b)) in states.iter().zip(&pairs) {
        let left: Row = sqlx::query_as(row)
            .bind(a)
            .fetch_one(&pool)
            .await
            .expect("a");
        let right: Row = sqlx::query_as(row)
            .bind(b)
            .fetch_one(&pool)
            .await
            .expect("b");
        assert_eq!(left, right, "from {state}");
    }
}
