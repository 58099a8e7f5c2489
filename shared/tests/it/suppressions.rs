use sqlx::PgPool;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_mixed_case_address_cannot_be_inserted_beside_its_lower_case_twin(pool: PgPool) {
    sqlx::query(
        "INSERT INTO email_suppressions (email, suppression_type) VALUES ('gone@x.com', 'bounce')",
    )
    .execute(&pool)
    .await
    .expect("first");
    let err = sqlx::query(
        "INSERT INTO email_suppressions (email, suppression_type) VALUES ('Gone@X.com', 'bounce')",
    )
    .execute(&pool)
    .await
    .expect_err("case-insensitive duplicate");
    let code = crate::helpers::sqlstate(&err);
    assert_eq!(code.as_deref(), Some("23505"), "{err}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn addresses_are_stored_trimmed_and_lower_case_so_lookups_ignore_case(pool: PgPool) {
    let stored: String = sqlx::query_scalar(
        "INSERT INTO email_suppressions (email, suppression_type) VALUES ('  Mixed.Case@Example.COM ', 'complaint')
         RETURNING email::text",
    )
    .fetch_one(&pool)
    .await
    .expect("insert");
    assert_eq!(stored, "mixed.case@example.com");
    let found: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_suppressions WHERE email = lower(btrim($1))",
    )
    .bind("MIXED.case@example.com")
    .fetch_one(&pool)
    .await
    .expect("lookup");
    assert_eq!(found, 1);
    let renamed: String = sqlx::query_scalar(
        "UPDATE email_suppressions SET email = 'Other@Example.com' RETURNING email::text",
    )
    .fetch_one(&pool)
    .await
    .expect("update");
    assert_eq!(renamed, "other@example.com");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_new_suppression_defaults_to_marketing_only(pool: PgPool) {
    let (transactional, marketing, bounces): (bool, bool, i32) = sqlx::query_as(
        "INSERT INTO email_suppressions (email, suppression_type) VALUES ('u@example.com', 'unsubscribe')
         RETURNING suppress_transactional, suppress_marketing, bounce_count",
    )
    .fetch_one(&pool)
    .await
    .expect("insert");
    assert!(!transactional);
    assert!(marketing);
    assert_eq!(bounces, 0);
}
