use sqlx::PgPool;

/// Tables with an `updated_at` column, read from the catalog.
async fn tables_with_updated_at(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
           AND a.attname = 'updated_at' AND NOT a.attisdropped ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn every_updated_at_table_has_the_trigger_and_no_trigger_lacks_the_column(pool: PgPool) {
    let with_column = tables_with_updated_at(&pool).await;
    assert_eq!(
        with_column,
        [
            "compliance_pauses",
            "email_deliveries",
            "email_sending_control",
            "email_suppressions",
            "email_templates",
            "incident_timers",
            "maintenance_schedules",
            "phrase_suggestions",
            "phrases",
            "refresh_tokens",
            "roles",
            "users",
            "webhook_deliveries",
            "webhook_endpoints"
        ]
    );
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, t.tgname::text FROM pg_trigger t
         JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE NOT t.tgisinternal AND p.proname = 'update_updated_at_column'
           -- BEFORE (bit 1), ROW (bit 0), UPDATE (bit 4) and nothing else
           AND t.tgtype = 19
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("triggers");
    let expected: Vec<(String, String)> = with_column
        .iter()
        .map(|t| (t.clone(), format!("update_{t}_updated_at")))
        .collect();
    assert_eq!(triggers, expected);

    let any_use: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE p.proname = 'update_updated_at_column'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        any_use,
        expected.len() as i64,
        "no other trigger may call update_updated_at_column"
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_updated_at_trigger_stamps_every_update_on_every_table(pool: PgPool) {
    // One row in each table that has no seed row yet.
    sqlx::query(
        "WITH u AS (SELECT id FROM users WHERE slug = 'system')
         , t AS (INSERT INTO incident_timers (user_id) SELECT id FROM u)
         , r AS (INSERT INTO refresh_tokens (user_id, token_hash, expires_at)
                 SELECT id, 'hash', now() + interval '7 days' FROM u)
         , s AS (INSERT INTO phrase_suggestions (user_id, phrase_text) SELECT id, 'idea' FROM u)
         , m AS (INSERT INTO maintenance_schedules (name, cron) VALUES ('test', '* * * * *'))
         , d AS (INSERT INTO email_deliveries (job_id, recipient, template, category)
                 VALUES ('01JOB', 'a@example.com', 'welcome', 'transactional'))
         , w AS (INSERT INTO webhook_endpoints (url, events, secret)
                 VALUES ('http://127.0.0.1/h', '{email.sent}', 'c2VjcmV0') RETURNING id)
         , e AS (INSERT INTO webhook_events (event_type, data) VALUES ('email.sent', '{}') RETURNING id)
         , wd AS (INSERT INTO webhook_deliveries (event_id, endpoint_id) SELECT e.id, w.id FROM e, w)
         INSERT INTO email_suppressions (email, suppression_type) VALUES ('x@example.com', 'manual')",
    )
    .execute(&pool)
    .await
    .expect("rows");
    for table in tables_with_updated_at(&pool).await {
        // The trigger overwrites even an explicit value, so an old date must not survive.
        let sql = format!(
            "UPDATE {table} SET updated_at = '2000-01-01T00:00:00Z' RETURNING updated_at > now() - interval '1 hour'"
        );
        let fresh: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .expect("update");
        assert!(!fresh.is_empty(), "{table} has no row to update");
        assert!(
            fresh.iter().all(|f| *f),
            "{table}: updated_at was not stamped"
        );
    }
}
