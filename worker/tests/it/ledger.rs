//! The grouped claim: one statement moves only the rows nothing holds back to `sending`.

use std::collections::HashMap;

use herald_shared::email::{self, Category};
use sqlx::PgPool;

use crate::helpers::{delivery, enqueue, setup_queue};

async fn claim(
    pool: &PgPool,
    jobs: &[(&str, String, Category)],
) -> HashMap<String, email::ledger::Claim> {
    let ids: Vec<String> = jobs.iter().map(|(id, _, _)| (*id).to_owned()).collect();
    let emails: Vec<String> = jobs.iter().map(|(_, to, _)| to.clone()).collect();
    let categories: Vec<String> = jobs.iter().map(|(_, _, c)| c.as_str().to_owned()).collect();
    let mut conn = pool.acquire().await.expect("conn");
    email::ledger::claim_clear_many(
        &mut conn,
        &ids,
        &emails,
        &categories,
        email::ledger::LockWait::Session,
    )
    .await
    .expect("claim")
    .into_iter()
    .collect()
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_grouped_claim_takes_only_what_nothing_holds_back(pool: PgPool) {
    setup_queue(&pool).await;
    let tx = enqueue(&pool, 5, "claim", Category::Transactional).await;
    let mk = enqueue(&pool, 1, "promo", Category::Marketing).await;
    let (clear, unsure, sent, suppressed, held) = (&tx[0], &tx[1], &tx[2], &tx[3], &mk[0]);
    let unknown = &tx[4];
    sqlx::query("UPDATE email_deliveries SET status = 'sending', attempts = 1 WHERE job_id = $1")
        .bind(unsure)
        .execute(&pool)
        .await
        .expect("sending");
    sqlx::query(
        "UPDATE email_deliveries SET attempts = 1, outcome_unknown = true WHERE job_id = $1",
    )
    .bind(unknown)
    .execute(&pool)
    .await
    .expect("outcome unknown");
    sqlx::query("UPDATE email_deliveries SET status = 'sent', attempts = 1 WHERE job_id = $1")
        .bind(sent)
        .execute(&pool)
        .await
        .expect("sent");
    herald_shared::suppressions::raise(
        &mut pool.acquire().await.expect("conn"),
        &herald_shared::suppressions::Raise::new(
            "Claim-3@Example.com",
            herald_shared::suppressions::SuppressionType::Bounce,
            true,
            true,
        ),
    )
    .await
    .expect("suppress");
    herald_shared::compliance::pause(
        &mut pool.acquire().await.expect("conn"),
        herald_shared::email::Category::Marketing,
        "test",
    )
    .await
    .expect("hold marketing");

    let to = |i: usize| format!("claim-{i}@example.com");
    let t = Category::Transactional;
    let claimed = claim(
        &pool,
        &[
            (clear, to(0), t),
            (unsure, to(1), t),
            (sent, to(2), t),
            (suppressed, to(3), t),
            (held, "promo-0@example.com".into(), Category::Marketing),
            (unknown, to(4), t),
            ("no-such-job", "x@example.com".into(), t),
        ],
    )
    .await;

    let keys: Vec<_> = claimed.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![clear.clone()],
        "only the clear pending row is claimed; a crash's 'sending' row and an unknown outcome go the long way"
    );
    let first = &claimed[clear];
    assert_eq!(
        (
            first.before.status.as_str(),
            first.before.attempts,
            first.before.uncertain_resends,
            first.before.outcome_unknown
        ),
        ("pending", 0, 0, false),
        "the claim reports the row as it was"
    );

    let row = delivery(&pool, clear).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.uncertain_resends),
        ("sending", 1, 0)
    );
    for (id, status, attempts) in [
        (unsure, "sending", 1),
        (sent, "sent", 1),
        (suppressed, "pending", 0),
        (held, "pending", 0),
        (unknown, "pending", 1),
    ] {
        let row = delivery(&pool, id).await;
        assert_eq!(
            (row.status.as_str(), row.attempts, row.uncertain_resends),
            (status, attempts, 0),
            "{id} untouched"
        );
    }

    // A pause of every worker holds everything back.
    herald_shared::email::pause_sending(
        &mut pool.acquire().await.expect("conn"),
        chrono::Utc::now() + chrono::Duration::hours(1),
        "test",
    )
    .await
    .expect("pause");
    sqlx::query("UPDATE email_deliveries SET status = 'pending' WHERE job_id = $1")
        .bind(clear)
        .execute(&pool)
        .await
        .expect("reset");
    assert!(
        claim(&pool, &[(clear, to(0), t)]).await.is_empty(),
        "nothing is claimed during a pause"
    );
    assert_eq!(delivery(&pool, clear).await.status, "pending");
}
