use herald_shared::maintenance::{Settings, tasks};
use sqlx::PgPool;

fn settings(batch: i64) -> Settings {
    Settings::from_source(&[
        ("EXPIRY_BATCH_SIZE", batch.to_string().as_str()),
        ("SEARCH_REFRESH_BATCH_SIZE", batch.to_string().as_str()),
        ("PRUNE_BATCH_SIZE", batch.to_string().as_str()),
    ])
    .expect("settings")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn expiry_deletes_expired_tokens_in_batches_and_keeps_valid_ones(pool: PgPool) {
    sqlx::query(
        "WITH u AS (SELECT id FROM users WHERE slug = 'system')
         , r1 AS (INSERT INTO refresh_tokens (user_id, token_hash, expires_at)
                  SELECT u.id, 'r-old-' || g, now() - interval '1 minute' FROM u, generate_series(1, 25) g)
         , r2 AS (INSERT INTO refresh_tokens (user_id, token_hash, expires_at)
                  SELECT u.id, 'r-new-' || g, now() + interval '7 days' FROM u, generate_series(1, 5) g)
         , v1 AS (INSERT INTO verification_tokens (user_id, token_hash, expires_at)
                  SELECT u.id, 'v-old-' || g, now() - interval '1 hour' FROM u, generate_series(1, 12) g)
         , v2 AS (INSERT INTO verification_tokens (user_id, token_hash, expires_at)
                  SELECT u.id, 'v-new-' || g, now() + interval '1 day' FROM u, generate_series(1, 3) g)
         , p1 AS (INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, created_at)
                  SELECT u.id, 'p-old-' || g, now() - interval '1 hour', now() - interval '2 hours' FROM u, generate_series(1, 7) g)
         , p2 AS (INSERT INTO password_reset_tokens (user_id, token_hash, expires_at)
                  SELECT u.id, 'p-new-' || g, now() + interval '1 hour' FROM u, generate_series(1, 2) g)
         , p3 AS (INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, created_at, used_at)
                  SELECT u.id, 'p-used-long-ago-' || g, now() + interval '1 hour', now() - interval '3 days', now() - interval '2 days'
                  FROM u, generate_series(1, 2) g)
         INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, used_at)
         SELECT u.id, 'p-used-now', now() + interval '1 hour', now() FROM u",
    )
    .execute(&pool)
    .await
    .expect("tokens");

    let report = tasks::expire_tokens(&pool, &settings(10))
        .await
        .expect("expire");
    assert_eq!(report.refresh_tokens, 25);
    assert_eq!(report.verification_tokens, 12);
    assert_eq!(
        report.password_reset_tokens, 9,
        "7 expired and 2 used long ago"
    );
    // 25 rows in batches of 10 take 3 statements, 12 take 2, 7 take 1, 2 take 1.
    assert_eq!(report.timing.statements, 7);
    assert!(report.timing.longest_statement_ms > 0.0);

    let left: Vec<String> = sqlx::query_scalar(
        "SELECT token_hash::text FROM refresh_tokens UNION ALL SELECT token_hash FROM verification_tokens
         UNION ALL SELECT token_hash FROM password_reset_tokens ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("left");
    let mut expected: Vec<String> = (1..=2).map(|g| format!("p-new-{g}")).collect();
    expected.push("p-used-now".into());
    expected.extend((1..=5).map(|g| format!("r-new-{g}")));
    expected.extend((1..=3).map(|g| format!("v-new-{g}")));
    expected.sort();
    assert_eq!(left, expected);

    let again = tasks::expire_tokens(&pool, &settings(10))
        .await
        .expect("expire again");
    assert_eq!(
        again.refresh_tokens + again.verification_tokens + again.password_reset_tokens,
        0
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn prune_removes_old_finished_jobs_and_events_in_batches_and_keeps_the_rest(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis");
    // (id, status, attempts, max_attempts, finished days ago)
    let jobs = [
        ("done-old-1", "Done", 1, 3, 10),
        ("done-old-2", "Done", 1, 3, 8),
        ("done-old-3", "Done", 1, 3, 30),
        ("done-recent", "Done", 1, 3, 1),
        ("killed-old", "Killed", 0, 3, 10),
        ("failed-old", "Failed", 3, 3, 40),
        ("failed-recent", "Failed", 3, 3, 10),
        ("retrying-old", "Failed", 1, 3, 40),
        ("pending", "Pending", 0, 3, 40),
    ];
    for (id, status, attempts, max, days) in jobs {
        sqlx::query(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, done_at)
             VALUES ('\\x7b7d', $1, 'test', $2, $3, $4, now() - make_interval(days => $5))",
        )
        .bind(id)
        .bind(status)
        .bind(attempts)
        .bind(max)
        .bind(days)
        .execute(&pool)
        .await
        .expect("job");
    }
    sqlx::query(
        "INSERT INTO email_feedback_events (event_type, recipient, occurred_at, created_at)
         SELECT 'delivery', 'a@b.c', now(), now() - make_interval(days => d) FROM unnest(ARRAY[100, 95, 91, 89, 1]) d",
    )
    .execute(&pool)
    .await
    .expect("events");

    let report = tasks::prune(&pool, &settings(2)).await.expect("prune");
    assert_eq!(report.finished_jobs, 4, "3 old Done and 1 old Killed");
    assert_eq!(
        report.failed_jobs, 1,
        "failed for good more than 30 days ago"
    );
    assert_eq!(report.feedback_events, 3);
    // 4 finished rows in batches of 2 take 3 statements (2, 2, 0); 1 failed: 1; 3 events: 2; 0 ledger: 1; 0 keys: 1;
    // 0 webhook events: 1; 0 attachments: 1.
    assert_eq!(report.timing.statements, 10);
    assert_eq!(report.webhook_events, 0);
    assert_eq!(report.attachments, 0);
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("left");
    assert_eq!(
        left,
        ["done-recent", "failed-recent", "pending", "retrying-old"]
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM email_feedback_events").await,
        2
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn search_refresh_repairs_missing_and_stale_vectors_and_leaves_correct_rows_untouched(
    pool: PgPool,
) {
    let owner: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE slug = 'system'")
        .fetch_one(&pool)
        .await
        .expect("owner");
    // Rows loaded with the triggers off: no vectors, or wrong ones.
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("ALTER TABLE users DISABLE TRIGGER users_search_vector_trigger")
        .execute(&mut *tx)
        .await
        .expect("off");
    sqlx::query("ALTER TABLE phrases DISABLE TRIGGER phrases_search_vector_trigger")
        .execute(&mut *tx)
        .await
        .expect("off");
    sqlx::query(
        "INSERT INTO users (email, password_hash, display_name, slug, search_vector)
         SELECT 'bulk' || g || '@example.com', 'x', 'Bulk User ' || g, 'bulk-' || g,
                CASE WHEN g % 2 = 0 THEN NULL ELSE to_tsvector('english', 'wrong') END
         FROM generate_series(1, 5) g",
    )
    .execute(&mut *tx)
    .await
    .expect("users");
    sqlx::query(
        "INSERT INTO phrases (phrase_text, created_by) SELECT 'Imported phrase about kayaks number ' || g, $1 FROM generate_series(1, 3) g",
    )
    .bind(owner)
    .execute(&mut *tx)
    .await
    .expect("phrases");
    sqlx::query("ALTER TABLE users ENABLE TRIGGER users_search_vector_trigger")
        .execute(&mut *tx)
        .await
        .expect("on");
    sqlx::query("ALTER TABLE phrases ENABLE TRIGGER phrases_search_vector_trigger")
        .execute(&mut *tx)
        .await
        .expect("on");
    tx.commit().await.expect("commit");

    let untouched_before: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, xmin::text FROM phrases WHERE search_vector = phrases_compute_search_vector(phrase_text) ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("xmins");
    assert_eq!(
        untouched_before.len(),
        20,
        "the seeded phrases are correct already"
    );

    let report = tasks::refresh_search_index(&pool, &settings(2))
        .await
        .expect("refresh");
    assert_eq!(report.users_fixed, 5);
    assert_eq!(report.phrases_fixed, 3);
    assert!(report.analyzed);
    assert!(report.reindexed.is_empty());

    let stale: i64 = count(
        &pool,
        "SELECT (SELECT count(*) FROM users WHERE search_vector IS DISTINCT FROM users_compute_search_vector(display_name, email, slug))
              + (SELECT count(*) FROM phrases WHERE search_vector IS DISTINCT FROM phrases_compute_search_vector(phrase_text))",
    )
    .await;
    assert_eq!(stale, 0);
    let hit: i64 = count(
        &pool,
        "SELECT count(*) FROM phrases WHERE search_vector @@ plainto_tsquery('english', 'kayak')",
    )
    .await;
    assert_eq!(hit, 3, "repaired phrases are searchable");
    let untouched_after: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, xmin::text FROM phrases WHERE id = ANY($1) ORDER BY id")
            .bind(
                untouched_before
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&pool)
            .await
            .expect("xmins");
    assert_eq!(
        untouched_after, untouched_before,
        "correct rows are not rewritten"
    );

    let second = tasks::refresh_search_index(&pool, &settings(2))
        .await
        .expect("again");
    assert_eq!(second.users_fixed + second.phrases_fixed, 0);
}
