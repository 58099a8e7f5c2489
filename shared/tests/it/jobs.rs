use herald_shared::email::{self, Category, EmailContent, EmailJob};
use herald_shared::jobs::{self, EnqueueOptions, JobStatus};
use sqlx::PgPool;

fn job() -> EmailJob {
    EmailJob {
        to: "tx@example.com".into(),
        category: Category::Transactional,
        content: EmailContent::Raw {
            subject: "s".into(),
            text: Some("t".into()),
            html: None,
        },
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
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis");
    let options = EnqueueOptions {
        max_attempts: 3,
        run_at: None,
        idempotency_key: None,
    };

    let mut tx = pool.begin().await.expect("tx");
    let dropped = email::enqueue(&mut tx, &job(), options.clone())
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!(count(&pool, "SELECT count(*) FROM apalis.jobs").await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM email_deliveries").await,
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
    assert_eq!(row.id.parse::<ulid::Ulid>().expect("ulid"), kept);
    let delivery = email::ledger::find(&mut conn, &kept.to_string())
        .await
        .expect("q")
        .expect("ledger row");
    assert_eq!(delivery.status, "pending");
}
