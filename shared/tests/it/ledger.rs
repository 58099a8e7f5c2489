//! The send ledger's state machine: every transition from every status, legal and illegal, and
//! the one send rule (`email_send_blocker`).

use herald_shared::email::Category;
use herald_shared::email::ledger::{self, Blocker, RetryAnswer, Status};
use sqlx::{PgConnection, PgPool};

async fn row_in(conn: &mut PgConnection, status: Status) -> String {
    let id = format!("job-{}", ulid::Ulid::generate());
    assert!(
        ledger::insert(
            conn,
            &id,
            "Ada@Example.com",
            "welcome",
            Category::Transactional
        )
        .await
        .expect("insert")
    );
    sqlx::query("UPDATE email_deliveries SET status = $2 WHERE job_id = $1")
        .bind(&id)
        .bind(status.as_str())
        .execute(&mut *conn)
        .await
        .expect("set status");
    id
}

async fn status_of(conn: &mut PgConnection, id: &str) -> Status {
    ledger::find(conn, id)
        .await
        .expect("find")
        .expect("row")
        .status
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Claim,
    Release,
    KeepUnknown,
    Fail,
    Suppress,
    Cancel,
    MarkSent,
}

async fn apply(conn: &mut PgConnection, step: Step, id: &str) -> bool {
    let done = match step {
        Step::Claim => ledger::claim(conn, id, None).await,
        Step::Release => ledger::release(conn, id, "throttled").await,
        Step::KeepUnknown => ledger::keep_unknown(conn, id, "timeout").await,
        Step::Fail => ledger::fail(conn, id, "rejected", false).await,
        Step::Suppress => ledger::suppress(conn, id).await,
        Step::Cancel => ledger::cancel(conn, id).await,
        Step::MarkSent => ledger::mark_sent_many(
            conn,
            &ledger::Accepted::many(&[id.to_owned()], &[Some(format!("ses-{id}"))]),
            ledger::LockWait::Session,
        )
        .await
        .map(|n| n == 1),
    };
    done.expect("transition")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn every_transition_happens_only_from_its_allowed_states(pool: PgPool) {
    use Status::*;
    let mut conn = pool.acquire().await.expect("conn");
    // (step, the statuses it leaves from, where it goes)
    let table: [(Step, &[Status], Status); 7] = [
        (Step::Claim, &[Pending, Sending], Sending),
        (Step::Release, &[Pending, Sending], Pending),
        (Step::KeepUnknown, &[Sending], Sending),
        (Step::Fail, &[Pending, Sending], Failed),
        (Step::Suppress, &[Pending, Sending], Suppressed),
        (Step::Cancel, &[Pending, Sending], Cancelled),
        (Step::MarkSent, &[Pending, Sending, Failed, Cancelled], Sent),
    ];
    for (step, allowed, to) in table {
        for from in Status::ALL {
            let id = row_in(&mut conn, from).await;
            let happened = apply(&mut conn, step, &id).await;
            let legal = allowed.contains(&from);
            assert_eq!(happened, legal, "{step:?} from {from}");
            let now = status_of(&mut conn, &id).await;
            assert_eq!(now, if legal { to } else { from }, "{step:?} from {from}");
        }
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn sent_never_changes_and_keeps_its_first_message_id(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let id = row_in(&mut conn, Status::Sending).await;
    assert!(apply(&mut conn, Step::MarkSent, &id).await);
    let again = ledger::mark_sent_many(
        &mut conn,
        &ledger::Accepted::many(std::slice::from_ref(&id), &[Some("another-id".into())]),
        ledger::LockWait::Session,
    )
    .await
    .expect("again");
    assert_eq!(again, 0);
    assert!(
        !ledger::mark_sent_without_id(&mut conn, &id, "note")
            .await
            .expect("note")
    );
    assert_eq!(
        ledger::operator_retry(&mut conn, &id).await.expect("retry"),
        RetryAnswer::AlreadySent
    );
    let row = ledger::find(&mut conn, &id)
        .await
        .expect("find")
        .expect("row");
    assert_eq!(row.status, Status::Sent);
    assert_eq!(row.ses_message_id, Some(format!("ses-{id}")));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_2xx_without_a_message_id_still_counts_as_sent(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let id = row_in(&mut conn, Status::Sending).await;
    let n = ledger::mark_sent_many(
        &mut conn,
        &ledger::Accepted::many(std::slice::from_ref(&id), &[None]),
        ledger::LockWait::Session,
    )
    .await
    .expect("sent");
    assert_eq!(n, 1);
    let row = ledger::find(&mut conn, &id)
        .await
        .expect("find")
        .expect("row");
    assert_eq!((row.status, row.ses_message_id), (Status::Sent, None));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn resends_after_an_unknown_outcome_are_counted(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let id = row_in(&mut conn, Status::Pending).await;
    assert!(ledger::claim(&mut conn, &id, None).await.expect("first"));
    assert!(
        ledger::keep_unknown(&mut conn, &id, "timeout")
            .await
            .expect("unknown")
    );
    assert!(ledger::claim(&mut conn, &id, None).await.expect("second"));
    let row = ledger::find(&mut conn, &id)
        .await
        .expect("find")
        .expect("row");
    assert_eq!((row.attempts, row.uncertain_resends), (2, 1));
    assert!(!row.outcome_unknown, "a claim clears the flag");

    // Failed for good after an unknown outcome: an operator's retry goes back to `sending`, so
    // the next claim counts the resend.
    assert!(
        ledger::keep_unknown(&mut conn, &id, "timeout")
            .await
            .expect("unknown")
    );
    assert!(
        ledger::fail(&mut conn, &id, "timeout", true)
            .await
            .expect("fail")
    );
    assert_eq!(
        ledger::operator_retry(&mut conn, &id).await.expect("retry"),
        RetryAnswer::RequeuedUncertain
    );
    assert_eq!(status_of(&mut conn, &id).await, Status::Sending);
    assert!(ledger::claim(&mut conn, &id, None).await.expect("third"));
    let row = ledger::find(&mut conn, &id)
        .await
        .expect("find")
        .expect("row");
    assert_eq!((row.attempts, row.uncertain_resends), (3, 2));

    // A clean failure goes back to `pending`.
    let clean = row_in(&mut conn, Status::Failed).await;
    assert_eq!(
        ledger::operator_retry(&mut conn, &clean)
            .await
            .expect("retry"),
        RetryAnswer::Requeued
    );
    assert_eq!(status_of(&mut conn, &clean).await, Status::Pending);
    let pending = row_in(&mut conn, Status::Pending).await;
    assert_eq!(
        ledger::operator_retry(&mut conn, &pending)
            .await
            .expect("retry"),
        RetryAnswer::InFlight
    );
    assert_eq!(
        ledger::operator_retry(&mut conn, "no-such-job")
            .await
            .expect("retry"),
        RetryAnswer::NoRow
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn retention_prunes_cancelled_rows_like_finished_ones(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let mut ids = Vec::new();
    for status in Status::ALL {
        ids.push((status, row_in(&mut conn, status).await));
    }
    sqlx::query("UPDATE email_deliveries SET created_at = now() - interval '60 days'")
        .execute(&mut *conn)
        .await
        .expect("age");
    let pruned = ledger::prune(&pool, chrono::Utc::now() - chrono::Duration::days(30), 100)
        .await
        .expect("prune");
    assert_eq!(pruned, 4);
    for (status, id) in ids {
        let kept = ledger::find(&mut conn, &id).await.expect("find").is_some();
        assert_eq!(
            kept,
            matches!(status, Status::Pending | Status::Sending),
            "{status}"
        );
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_send_rule_names_what_blocks_an_email_suppression_first(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let blocker = async |conn: &mut PgConnection, to: &str, category: Category| {
        ledger::send_blocker(conn, to, category)
            .await
            .expect("rule")
    };
    assert_eq!(
        blocker(&mut conn, "a@example.com", Category::Marketing).await,
        None
    );

    herald_shared::suppressions::raise(
        &mut conn,
        &herald_shared::suppressions::Raise::new(
            "unsub@example.com",
            herald_shared::suppressions::SuppressionType::Unsubscribe,
            false,
            true,
        ),
    )
    .await
    .expect("suppress");
    assert_eq!(
        blocker(&mut conn, " Unsub@Example.COM ", Category::Marketing).await,
        Some(Blocker::Suppressed)
    );
    assert_eq!(
        blocker(&mut conn, "unsub@example.com", Category::Transactional).await,
        None
    );

    herald_shared::compliance::pause(&mut conn, herald_shared::email::Category::Marketing, "test")
        .await
        .expect("hold");
    assert_eq!(
        blocker(&mut conn, "a@example.com", Category::Marketing).await,
        Some(Blocker::Held)
    );
    assert_eq!(
        blocker(&mut conn, "a@example.com", Category::Transactional).await,
        None
    );

    herald_shared::email::pause_sending(
        &mut conn,
        chrono::Utc::now() + chrono::Duration::hours(1),
        "test",
    )
    .await
    .expect("pause");
    assert_eq!(
        blocker(&mut conn, "a@example.com", Category::Transactional).await,
        Some(Blocker::Paused)
    );
    assert_eq!(
        blocker(&mut conn, "a@example.com", Category::Marketing).await,
        Some(Blocker::Paused)
    );
    // Suppression is final and comes first, whatever else holds.
    assert_eq!(
        blocker(&mut conn, "unsub@example.com", Category::Marketing).await,
        Some(Blocker::Suppressed)
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_send_rule_is_inlined_where_a_statement_joins_it(pool: PgPool) {
    // A scalar SQL function with subqueries runs its own executor per row; the set-returning
    // form is planned into the statement (no function scan), which is what the grouped claim uses.
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (VERBOSE, COSTS OFF)
         SELECT v.email FROM unnest('{a@example.com,b@example.com}'::text[]) AS v(email)
         CROSS JOIN LATERAL email_send_blocks(v.email, 'marketing') AS rule
         WHERE rule.blocker IS NULL",
    )
    .fetch_all(&pool)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(!plan.contains("email_send_blocks"), "not inlined:\n{plan}");
    assert!(
        plan.contains("email_suppressions") && plan.contains("compliance_pauses"),
        "the rule's lookups are in the plan:\n{plan}"
    );
    // The scalar form answers from the same rule.
    let mut conn = pool.acquire().await.expect("conn");
    herald_shared::suppressions::raise(
        &mut conn,
        &herald_shared::suppressions::Raise::new(
            "b@example.com",
            herald_shared::suppressions::SuppressionType::Manual,
            false,
            true,
        ),
    )
    .await
    .expect("suppress");
    let answers: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT v.email, rule.blocker, email_send_blocker(v.email, 'marketing')
         FROM unnest('{a@example.com,B@Example.com}'::text[]) AS v(email)
         CROSS JOIN LATERAL email_send_blocks(v.email, 'marketing') AS rule ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("answers");
    let suppressed = Some("suppressed".to_owned());
    assert_eq!(
        answers,
        [
            ("B@Example.com".to_owned(), suppressed.clone(), suppressed),
            ("a@example.com".to_owned(), None, None),
        ]
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_grouped_statement_gives_up_on_a_held_row_lock_and_leaves_the_session_as_it_was(
    pool: PgPool,
) {
    use std::time::{Duration, Instant};
    let mut conn = pool.acquire().await.expect("conn");
    // Pending: the only state both grouped statements take a row from.
    let id = row_in(&mut conn, Status::Pending).await;
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM email_deliveries WHERE job_id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut *holder)
        .await
        .expect("lock");

    let started = Instant::now();
    let err = ledger::mark_sent_many(
        &mut conn,
        &ledger::Accepted::many(std::slice::from_ref(&id), &[Some("ses-1".into())]),
        ledger::LockWait::AtMost(Duration::from_millis(200)),
    )
    .await
    .expect_err("the row is locked elsewhere");
    let waited = started.elapsed();
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(
        code.as_deref(),
        Some("55P03"),
        "lock_not_available, got {err}"
    );
    assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");

    let claim = ledger::claim_clear_many(
        &mut conn,
        std::slice::from_ref(&id),
        &["ada@example.com".into()],
        &["transactional".into()],
        ledger::LockWait::AtMost(Duration::from_millis(200)),
    )
    .await
    .expect_err("still locked");
    assert_eq!(
        claim.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55P03")
    );

    // The bound lived only as long as the statement.
    let after: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *conn)
        .await
        .expect("show");
    assert_eq!(after, "0");
    holder.rollback().await.expect("rollback");
    let n = ledger::mark_sent_many(
        &mut conn,
        &ledger::Accepted::many(std::slice::from_ref(&id), &[Some("ses-1".into())]),
        ledger::LockWait::AtMost(Duration::from_millis(200)),
    )
    .await
    .expect("sent once the lock is gone");
    assert_eq!(n, 1);
    assert_eq!(status_of(&mut conn, &id).await, Status::Sent);
}
