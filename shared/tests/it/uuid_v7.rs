use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn generated_ids_have_version_7_and_variant_10(pool: PgPool) {
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT uuid_generate_v7() FROM generate_series(1, 2000)")
            .fetch_all(&pool)
            .await
            .expect("ids");
    for id in &ids {
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        // Variant 10: the two top bits of byte 8.
        assert_eq!(id.as_bytes()[8] >> 6, 0b10, "{id}");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids must not repeat");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn ids_sort_by_creation_time_across_milliseconds(pool: PgPool) {
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id: Uuid = sqlx::query_scalar("SELECT uuid_generate_v7() FROM pg_sleep(0.002)")
            .fetch_one(&pool)
            .await
            .expect("id");
        ids.push(id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "later ids must sort after earlier ones");
    // The same holds in SQL's own uuid ordering, which the primary-key index uses.
    let in_sql_order: Vec<Uuid> =
        sqlx::query_scalar("SELECT u FROM unnest($1::uuid[]) u ORDER BY u")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .expect("order");
    assert_eq!(in_sql_order, ids);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_timestamp_round_trips_through_the_id(pool: PgPool) {
    let (inside, exact, zeroed): (bool, bool, String) = sqlx::query_as(
        "WITH t AS (SELECT date_trunc('milliseconds', clock_timestamp()) AS before),
              g AS (SELECT before, uuid_generate_v7() AS id FROM t),
              a AS (SELECT *, clock_timestamp() AS after FROM g)
         SELECT uuid_v7_to_timestamptz(id) BETWEEN before AND after,
                uuid_v7_to_timestamptz(uuid_timestamptz_to_v7('2025-03-04T05:06:07.089Z'))
                    = '2025-03-04T05:06:07.089Z'::timestamptz,
                uuid_timestamptz_to_v7('2025-03-04T05:06:07.089Z', true)::text
         FROM a",
    )
    .fetch_one(&pool)
    .await
    .expect("round trip");
    assert!(
        inside,
        "the id's time must lie between the times read before and after"
    );
    assert!(exact, "a millisecond timestamp must round-trip exactly");
    let zeroed = Uuid::parse_str(&zeroed).expect("uuid");
    assert_eq!(zeroed.get_version_num(), 7);
    assert_eq!(
        &zeroed.as_bytes()[6..],
        &[0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]
    );
    // 2025-03-04T05:06:07.089Z is 1741064767089 ms since the epoch.
    assert_eq!(
        &zeroed.as_bytes()[..6],
        &1_741_064_767_089_u64.to_be_bytes()[2..]
    );
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn table_keys_default_to_uuid_v7(pool: PgPool) {
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO roles (name, description) VALUES ('tester', 'test') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("insert");
    assert_eq!(id.get_version_num(), 7);
}
