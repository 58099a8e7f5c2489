//! The job adapter driven deterministically: `job::drain` runs every due job in the test's own
//! task, so these tests wait for nothing.

use std::sync::Arc;

use herald_shared::email::{Category, EmailJob};
use herald_shared::jobs::JobStatus;
use herald_worker::job::{Drained, drain};
use herald_worker::ses::RecordingSender;
use sqlx::PgPool;

use crate::helpers::{context_with_sender, delivery, enqueue, setup_queue, status, worker_config};

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn draining_sends_every_due_email_once_and_leaves_nothing_behind(pool: PgPool) {
    setup_queue(&pool).await;
    let ids = enqueue(&pool, 3, "drain", Category::Transactional).await;
    let sender = Arc::new(RecordingSender::default());
    let ctx = context_with_sender(&pool, sender.clone(), &worker_config(&pool, &[]));
    let drained = drain::<EmailJob>(ctx.clone()).await.expect("drain");
    assert_eq!(
        drained,
        Drained {
            finished: 3,
            deferred: 0
        }
    );
    assert_eq!(sender.sent().len(), 3);
    for id in &ids {
        assert_eq!(status(&pool, id).await, JobStatus::Succeeded);
        assert_eq!(delivery(&pool, id).await.status, "sent");
    }
    assert_eq!(
        drain::<EmailJob>(ctx).await.expect("again"),
        Drained::default()
    );
    assert_eq!(sender.sent().len(), 3, "nothing is sent twice");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_held_job_resumes_with_its_attempts_unchanged(pool: PgPool) {
    setup_queue(&pool).await;
    let ids = enqueue(&pool, 1, "held", Category::Marketing).await;
    herald_shared::compliance::pause(
        &mut pool.acquire().await.expect("conn"),
        Category::Marketing,
        "test",
    )
    .await
    .expect("hold marketing");
    let sender = Arc::new(RecordingSender::default());
    let ctx = context_with_sender(&pool, sender.clone(), &worker_config(&pool, &[]));
    let budget = async |pool: &PgPool| -> (i32, i32, String) {
        let job = herald_shared::jobs::find(&mut pool.acquire().await.expect("conn"), &ids[0])
            .await
            .expect("query")
            .expect("job");
        (job.attempts, job.max_attempts, job.raw_status)
    };
    let before = budget(&pool).await;

    let drained = drain::<EmailJob>(ctx.clone()).await.expect("drain");
    assert_eq!(
        drained,
        Drained {
            finished: 0,
            deferred: 1
        }
    );
    assert!(sender.sent().is_empty());
    let held = budget(&pool).await;
    assert_eq!(
        held,
        (before.0, before.1, "Pending".to_owned()),
        "held, not failed"
    );
    assert_eq!(status(&pool, &ids[0]).await, JobStatus::Queued);
    assert_eq!(delivery(&pool, &ids[0]).await.status, "pending");

    herald_shared::compliance::resume(
        &mut pool.acquire().await.expect("conn"),
        &[Category::Marketing],
    )
    .await
    .expect("resume");
    // The hold's recheck time, brought forward instead of waited for.
    sqlx::query("UPDATE apalis.jobs SET run_at = now() - interval '1 second' WHERE id = $1")
        .bind(&ids[0])
        .execute(&pool)
        .await
        .expect("due now");
    let drained = drain::<EmailJob>(ctx).await.expect("drain");
    assert_eq!(drained.finished, 1);
    assert_eq!(sender.sent().len(), 1);
    let after = budget(&pool).await;
    assert_eq!(
        after,
        (before.0 + 1, before.1, "Done".to_owned()),
        "one run on its record, the budget untouched"
    );
}
