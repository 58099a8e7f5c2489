//! `email::group`: concurrent single enqueues share statements, and each keeps its own answer.

use herald_shared::db::Db;
use herald_shared::email::group::{EnqueueGroups, GroupError, GroupLimits, GroupedEmail};
use herald_shared::email::{Category, EmailContent, EmailJob, Queued};
use sqlx::PgPool;

fn email(to: &str, text: &str, key: Option<&str>) -> GroupedEmail {
    GroupedEmail {
        job: EmailJob {
            envelope: Default::default(),
            to: to.into(),
            category: Category::Transactional,
            content: EmailContent::Raw {
                subject: "Hi".into(),
                text: Some(text.into()),
                html: None,
            },
        },
        run_at: None,
        max_attempts: 3,
        // The hash stands for the request body.
        idempotency: key.map(|k| (k.to_owned(), format!("hash-of-{text}"))),
    }
}

async fn recipient_of(pool: &PgPool, job_id: &str) -> String {
    herald_shared::email::ledger::record(&mut pool.acquire().await.expect("conn"), job_id)
        .await
        .expect("query")
        .expect("ledger row")
        .recipient
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn concurrent_enqueues_share_statements_and_each_gets_its_own_answer(pool: PgPool) {
    crate::helpers::queue_with_suppressed_address(&pool).await;
    let groups = EnqueueGroups::start(
        Db::new(pool.clone(), std::time::Duration::from_secs(5)),
        GroupLimits {
            statements: 1,
            max_group: 100,
        },
    );
    // 60 distinct emails, 3 to a suppressed address, 4 repeats of one keyed request and 2 of
    // one key with two bodies, all at once.
    let mut asks: Vec<GroupedEmail> = (0..60)
        .map(|i| email(&format!("r{i}@example.com"), "x", None))
        .collect();
    asks.extend((0..3).map(|_| email("gone@example.com", "x", None)));
    asks.extend((0..4).map(|_| email("same@example.com", "same", Some("k-same"))));
    asks.push(email("two@example.com", "first", Some("k-two")));
    asks.push(email("two@example.com", "second", Some("k-two")));
    let answers = futures::future::join_all(asks.iter().cloned().map(|e| groups.queue(e))).await;
    let statements = groups.statements();
    assert!(
        statements < 20,
        "{} requests took {statements} statements: not grouped",
        asks.len()
    );
    let mut new_ids = std::collections::HashSet::new();
    for (ask, answer) in asks.iter().zip(&answers).take(60) {
        let Ok(Queued::New(id)) = answer else {
            panic!("{answer:?}")
        };
        assert!(new_ids.insert(*id), "one job id answered twice");
        // The answer went to the request it belongs to.
        assert_eq!(recipient_of(&pool, &id.to_string()).await, ask.job.to);
    }
    for answer in &answers[60..63] {
        assert!(matches!(answer, Ok(Queued::Suppressed)), "{answer:?}");
    }
    let same: Vec<String> = answers[63..67]
        .iter()
        .map(|a| match a {
            Ok(Queued::New(id)) => id.to_string(),
            Ok(Queued::Replayed(id)) => id.to_string(),
            other => panic!("a repeat of the same request: {other:?}"),
        })
        .collect();
    assert!(same.iter().all(|id| *id == same[0]), "{same:?}");
    let two: Vec<&Result<Queued, GroupError>> = answers[67..].iter().collect();
    assert!(
        matches!(two[0], Ok(Queued::New(_))) && matches!(two[1], Ok(Queued::KeyConflict)),
        "the first use of a key wins, the other body conflicts: {two:?}"
    );
    let (jobs, rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM apalis.jobs), (SELECT count(*) FROM email_deliveries)",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        (jobs, rows),
        (62, 62),
        "60 + one per key, nothing for the suppressed"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn an_email_the_database_refuses_fails_alone_and_its_group_is_queued(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis");
    let groups = EnqueueGroups::start(
        Db::new(pool.clone(), std::time::Duration::from_secs(5)),
        GroupLimits {
            statements: 1,
            max_group: 100,
        },
    );
    // The ledger's recipient is varchar(255): this one fails the statement it is in.
    let long = format!("{}@example.com", "a".repeat(300));
    let mut asks: Vec<GroupedEmail> = (0..20)
        .map(|i| email(&format!("ok{i}@example.com"), "x", None))
        .collect();
    asks.insert(10, email(&long, "x", None));
    let answers = futures::future::join_all(asks.iter().cloned().map(|e| groups.queue(e))).await;
    assert!(
        matches!(answers[10], Err(GroupError::Failed(_))),
        "{:?}",
        answers[10]
    );
    for (i, answer) in answers.iter().enumerate().filter(|(i, _)| *i != 10) {
        let Ok(Queued::New(id)) = answer else {
            panic!("email {i}: {answer:?}")
        };
        assert_eq!(recipient_of(&pool, &id.to_string()).await, asks[i].job.to);
    }
}
