use herald_shared::phrases::{self, FULLTEXT_SQL, SearchMode, TRIGRAM_SQL};
use sqlx::PgPool;

async fn system_user(pool: &PgPool) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM users WHERE slug = 'system'")
        .fetch_one(pool)
        .await
        .expect("system user")
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn user_vectors_are_filled_on_insert_and_refreshed_when_a_searched_column_changes(
    pool: PgPool,
) {
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, display_name, slug)
         VALUES ('ada@example.com', 'x', 'Ada Lovelace', 'ada-lovelace') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("insert");
    let matches = |q: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT search_vector @@ plainto_tsquery('english', $2) FROM users WHERE id = $1",
            )
            .bind(id)
            .bind(q)
            .fetch_one(&pool)
            .await
            .expect("match")
        }
    };
    assert!(matches("lovelace").await);
    assert!(!matches("hopper").await);

    sqlx::query("UPDATE users SET display_name = 'Grace Hopper' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("rename");
    assert!(matches("hopper").await, "the vector follows display_name");

    sqlx::query("UPDATE users SET slug = 'rear-admiral' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("reslug");
    assert!(matches("admiral").await, "the vector follows slug");

    let equal: bool = sqlx::query_scalar(
        "SELECT search_vector = users_compute_search_vector(display_name, email, slug) FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("compare");
    assert!(equal);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn phrase_vectors_are_backfilled_and_follow_the_text(pool: PgPool) {
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM phrases WHERE search_vector IS NULL
            OR search_vector <> phrases_compute_search_vector(phrase_text)",
    )
    .fetch_one(&pool)
    .await
    .expect("seeded vectors");
    assert_eq!(missing, 0, "seeded phrases carry their vectors");

    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM phrases LIMIT 1")
        .fetch_one(&pool)
        .await
        .expect("phrase");
    sqlx::query("UPDATE phrases SET phrase_text = 'Zebras crossing quietly at dawn' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("edit");
    let hit: bool = sqlx::query_scalar(
        "SELECT search_vector @@ plainto_tsquery('english', 'zebra') FROM phrases WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("match");
    assert!(hit, "stemmed 'zebra' matches the new text");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn search_ranks_full_text_hits_newest_first_on_ties(pool: PgPool) {
    let owner = system_user(&pool).await;
    for (text, age_minutes) in [
        ("Lantern lantern lantern: light the lantern path", 30),
        ("A single lantern by the door", 20),
        ("Another lone lantern on the hill", 10),
    ] {
        sqlx::query(
            "INSERT INTO phrases (phrase_text, created_by, created_at)
             VALUES ($1, $2, now() - make_interval(mins => $3))",
        )
        .bind(text)
        .bind(owner)
        .bind(age_minutes)
        .execute(&pool)
        .await
        .expect("insert");
    }
    let mut conn = pool.acquire().await.expect("conn");
    let (mode, hits) = phrases::search(&mut conn, "lanterns", 10)
        .await
        .expect("search");
    assert_eq!(mode, SearchMode::FullText);
    let texts: Vec<&str> = hits.iter().map(|h| h.phrase_text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "Lantern lantern lantern: light the lantern path",
            "Another lone lantern on the hill",
            "A single lantern by the door",
        ],
        "most frequent term first, then newest first"
    );
    assert!(hits[0].rank > hits[1].rank);
    assert!(hits[1].rank > 0.0);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn search_falls_back_to_a_case_insensitive_substring_match(pool: PgPool) {
    let owner = system_user(&pool).await;
    sqlx::query(
        "INSERT INTO phrases (phrase_text, created_by) VALUES ('Keep the WORKSHOP tidy', $1)",
    )
    .bind(owner)
    .execute(&pool)
    .await
    .expect("insert");
    let mut conn = pool.acquire().await.expect("conn");
    // "orksho" is no English word, so full-text finds nothing; the substring does.
    let (mode, hits) = phrases::search(&mut conn, "orksho", 10)
        .await
        .expect("search");
    assert_eq!(mode, SearchMode::Substring);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].phrase_text, "Keep the WORKSHOP tidy");

    // Wildcards in the query are literal: '%' matches nothing here.
    let (_, hits) = phrases::search(&mut conn, "%", 10).await.expect("search");
    assert!(hits.is_empty(), "{hits:?}");

    // Inactive phrases are never found.
    sqlx::query("UPDATE phrases SET active = false WHERE phrase_text = 'Keep the WORKSHOP tidy'")
        .execute(&mut *conn)
        .await
        .expect("deactivate");
    let (_, hits) = phrases::search(&mut conn, "orksho", 10)
        .await
        .expect("search");
    assert!(hits.is_empty());
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn explain_shows_the_gin_indexes_serving_both_search_queries(pool: PgPool) {
    let owner = system_user(&pool).await;
    // Enough rows that an index is worth using; each phrase is unique so terms are selective.
    sqlx::query(
        "INSERT INTO phrases (phrase_text, created_by)
         SELECT 'generated phrase number ' || g || ' about item' || md5(g::text), $1
         FROM generate_series(1, 5000) g",
    )
    .bind(owner)
    .execute(&pool)
    .await
    .expect("bulk insert");
    // VACUUM flushes the GIN pending list, which the planner otherwise counts as cost.
    sqlx::query("VACUUM ANALYZE phrases")
        .execute(&pool)
        .await
        .expect("vacuum analyze");

    let mut conn = pool.acquire().await.expect("conn");
    let mut plans = Vec::new();
    for (sql, term) in [(FULLTEXT_SQL, "zanzibar"), (TRIGRAM_SQL, "zanzib")] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
            .bind(term)
            .bind(10_i64)
            .fetch_all(&mut *conn)
            .await
            .expect("explain");
        plans.push(rows.join("\n"));
    }
    assert!(
        plans[0].contains("idx_phrases_search_vector"),
        "full-text plan:\n{}",
        plans[0]
    );
    assert!(
        plans[1].contains("idx_phrases_phrase_text_trgm"),
        "trigram plan:\n{}",
        plans[1]
    );
}
