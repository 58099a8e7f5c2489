use herald_shared::db::{self, MIGRATOR};
use sqlx::PgPool;

use crate::helpers::{assert_same_lines, schema_snapshot, snapshot_with_seeds};

fn versions() -> Vec<i64> {
    MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect()
}

#[test]
fn the_spec_migrations_come_first_with_their_file_stems_and_all_are_reversible() {
    let stems: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| format!("{}_{}", m.version, m.description.replace(' ', "_")))
        .collect();
    assert_eq!(
        stems[..5],
        [
            "20250914134643_initial_schema",
            "20250914134654_add_refresh_tokens_and_user_active",
            "20250914134703_add_phrases_system",
            "20250927212836_add_search_and_performance_optimization",
            "20251003192001_add_auth_and_compliance_features",
        ]
    );
    let downs = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_down_migration())
        .count();
    assert_eq!(downs, stems.len(), "every migration needs a .down.sql");
}

#[sqlx::test(migrations = false)]
async fn up_then_down_then_up_gives_back_the_same_schema_and_seeds(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    assert!(
        schema_snapshot(&mut conn).await.is_empty(),
        "a new database starts empty"
    );

    MIGRATOR.run(&pool).await.expect("up");
    let first = snapshot_with_seeds(&mut conn).await;
    assert!(
        first.len() > 100,
        "the schema has substance: {} lines",
        first.len()
    );

    MIGRATOR.undo(&pool, 0).await.expect("down");
    let after_down = schema_snapshot(&mut conn).await;
    assert!(
        after_down.is_empty(),
        "down left objects behind: {after_down:#?}"
    );

    MIGRATOR.run(&pool).await.expect("up again");
    let second = snapshot_with_seeds(&mut conn).await;
    assert_same_lines(&second, &first, "schemas after up and after up-down-up");
}

#[sqlx::test(migrations = false)]
async fn each_down_migration_undoes_exactly_its_own_up_migration(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let mut previous = 0_i64;
    for version in versions() {
        let before = snapshot_with_seeds(&mut conn).await;
        MIGRATOR.run_to(version, &pool).await.expect("up one");
        let after_up = snapshot_with_seeds(&mut conn).await;
        assert_ne!(before, after_up, "migration {version} changed nothing");

        MIGRATOR.undo(&pool, previous).await.expect("down one");
        let after_down = snapshot_with_seeds(&mut conn).await;
        assert_same_lines(
            &after_down,
            &before,
            &format!("schema before and after {version} up+down"),
        );

        MIGRATOR.run_to(version, &pool).await.expect("up again");
        previous = version;
    }
}

#[sqlx::test(migrations = false)]
async fn status_reports_pending_migrations_without_creating_the_bookkeeping_table(pool: PgPool) {
    let status = db::migration_status(&mut pool.acquire().await.expect("conn"))
        .await
        .expect("status");
    assert_eq!(status.pending().count(), versions().len());
    assert!(!status.is_current());
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text")
            .fetch_one(&pool)
            .await
            .expect("regclass");
    assert_eq!(table, None, "reading the status must not create anything");
    assert!(
        db::ensure_current(&mut pool.acquire().await.expect("conn"))
            .await
            .is_err()
    );
}

#[sqlx::test(migrations = false)]
async fn migrating_records_each_version_in_the_sqlx_cli_table_and_is_idempotent(pool: PgPool) {
    db::migrate(&pool).await.expect("first run");
    db::migrate(&pool).await.expect("second run is a no-op");
    let recorded: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM public._sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .expect("bookkeeping");
    let expected: Vec<(i64, bool)> = versions().into_iter().map(|v| (v, true)).collect();
    assert_eq!(recorded, expected);
    let status = db::migration_status(&mut pool.acquire().await.expect("conn"))
        .await
        .expect("status");
    assert!(status.is_current());
    assert!(status.unknown_applied.is_empty());
    db::ensure_current(&mut pool.acquire().await.expect("conn"))
        .await
        .expect("current");
}

#[sqlx::test(migrations = false)]
async fn an_edited_migration_is_reported_as_not_current(pool: PgPool) {
    db::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "UPDATE public._sqlx_migrations SET checksum = '\\x00' WHERE version = 20250914134703",
    )
    .execute(&pool)
    .await
    .expect("tamper");
    let status = db::migration_status(&mut pool.acquire().await.expect("conn"))
        .await
        .expect("status");
    assert!(!status.is_current());
    let edited: Vec<i64> = status
        .migrations
        .iter()
        .filter(|m| m.checksum_mismatch)
        .map(|m| m.version)
        .collect();
    assert_eq!(edited, [20250914134703]);
}
