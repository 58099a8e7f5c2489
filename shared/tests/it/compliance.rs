use herald_shared::compliance::{self, Settings};
use herald_shared::email::Category;
use sqlx::PgPool;

fn settings(min_sends: i64) -> Settings {
    Settings {
        min_sends,
        ..Settings::default()
    }
}

/// `n` emails sent an hour ago in `category`, the first `bounces` bounced for good, the next
/// `complaints` drew a complaint.
async fn sends(pool: &PgPool, tag: &str, category: &str, n: i32, bounces: i32, complaints: i32) {
    sqlx::query(
        "INSERT INTO email_deliveries (job_id, recipient, template, category, status, ses_message_id, sent_at,
                                       bounce_type, bounced_at, complained_at)
         SELECT $1 || g, $1 || g || '@example.com', 'raw', $2, 'sent', $1 || '-ses-' || g, now() - interval '1 hour',
                CASE WHEN g <= $4 THEN 'Permanent' END, CASE WHEN g <= $4 THEN now() END,
                CASE WHEN g > $4 AND g <= $4 + $5 THEN now() END
         FROM generate_series(1, $3) g",
    )
    .bind(tag)
    .bind(category)
    .bind(n)
    .bind(bounces)
    .bind(complaints)
    .execute(pool)
    .await
    .expect("sends");
}

/// Whether the send rule holds each category (transactional, marketing).
async fn paused(pool: &PgPool) -> (bool, bool) {
    let mut conn = pool.acquire().await.expect("conn");
    let mut held = async |category| {
        herald_shared::email::ledger::send_blocker(&mut conn, "anyone@example.com", category)
            .await
            .expect("rule")
            == Some(herald_shared::email::ledger::Blocker::Held)
    };
    (
        held(Category::Transactional).await,
        held(Category::Marketing).await,
    )
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn below_the_minimum_sample_nothing_pauses(pool: PgPool) {
    sends(&pool, "few", "marketing", 50, 10, 2).await;
    let mut conn = pool.acquire().await.expect("conn");
    let report = compliance::check(&mut conn, &settings(100))
        .await
        .expect("check");
    assert!(
        report.paused.is_empty() && report.over.is_empty(),
        "{report:?}"
    );
    let rates = compliance::rates(&mut conn, &settings(100))
        .await
        .expect("rates");
    let m = rates
        .iter()
        .find(|r| r.window == "24h" && r.category == "marketing")
        .expect("rate");
    assert_eq!(
        (m.sends, m.bounces, m.complaints, m.counts),
        (50, 10, 2, false)
    );
    assert!((m.bounce_rate - 0.2).abs() < 1e-9);
    drop(conn);
    assert_eq!(paused(&pool).await, (false, false));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn crossing_the_marketing_threshold_pauses_marketing_only(pool: PgPool) {
    sends(&pool, "tx", "transactional", 300, 0, 0).await;
    // 9 % of marketing bounced; overall 18 / 500 = 3.6 %, under every threshold.
    sends(&pool, "mk", "marketing", 200, 18, 0).await;
    let mut conn = pool.acquire().await.expect("conn");
    let report = compliance::check(&mut conn, &settings(100))
        .await
        .expect("check");
    assert_eq!(report.paused, ["marketing"], "{report:?}");
    let states = compliance::pauses(&mut conn).await.expect("pauses");
    let marketing = states
        .iter()
        .find(|p| p.category == Category::Marketing)
        .expect("row");
    assert!(
        marketing
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("bounce rate 9.000%"),
        "{marketing:?}"
    );
    assert!(marketing.paused_at.is_some());
    drop(conn);
    assert_eq!(paused(&pool).await, (false, true));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn crossing_the_higher_line_pauses_transactional_too(pool: PgPool) {
    // 25 / 500 = 5 % overall, over the 4.5 % line.
    sends(&pool, "tx", "transactional", 400, 20, 0).await;
    sends(&pool, "mk", "marketing", 100, 5, 0).await;
    let mut conn = pool.acquire().await.expect("conn");
    let mut report = compliance::check(&mut conn, &settings(100))
        .await
        .expect("check");
    report.paused.sort();
    assert_eq!(report.paused, ["marketing", "transactional"]);
    drop(conn);
    assert_eq!(paused(&pool).await, (true, true));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn complaints_pause_at_their_own_thresholds(pool: PgPool) {
    // 1 complaint in 1000 = 0.1 %: over the 0.09 % line.
    sends(&pool, "tx", "transactional", 1000, 0, 1).await;
    let mut conn = pool.acquire().await.expect("conn");
    compliance::check(&mut conn, &settings(100))
        .await
        .expect("check");
    drop(conn);
    assert_eq!(paused(&pool).await, (true, true));
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn a_resume_holds_through_the_grace_period_and_auto_resume_needs_healthy_rates(pool: PgPool) {
    sends(&pool, "tx", "transactional", 300, 0, 0).await;
    sends(&pool, "mk", "marketing", 200, 18, 0).await;
    let mut conn = pool.acquire().await.expect("conn");
    compliance::check(&mut conn, &settings(100))
        .await
        .expect("check");
    let resumed = compliance::resume(&mut conn, &[Category::Marketing])
        .await
        .expect("resume");
    assert_eq!(resumed, ["marketing"]);
    let again = compliance::check(&mut conn, &settings(100))
        .await
        .expect("check again");
    assert!(
        again.paused.is_empty(),
        "no re-pause during the grace period: {again:?}"
    );
    drop(conn);
    assert_eq!(paused(&pool).await, (false, false));

    // With no grace the rate pauses again; auto-resume does nothing while it stays high.
    let strict = Settings {
        min_sends: 100,
        resume_grace_minutes: 0,
        auto_resume: true,
        ..Settings::default()
    };
    let mut conn = pool.acquire().await.expect("conn");
    let report = compliance::check(&mut conn, &strict).await.expect("check");
    assert_eq!(report.paused, ["marketing"]);
    assert!(report.resumed.is_empty());
    // Healthy again (many clean sends): auto-resume lifts the pause.
    drop(conn);
    sends(&pool, "clean", "marketing", 2000, 0, 0).await;
    let mut conn = pool.acquire().await.expect("conn");
    let report = compliance::check(&mut conn, &strict).await.expect("check");
    assert_eq!(report.resumed, ["marketing"], "{report:?}");
    drop(conn);
    assert_eq!(paused(&pool).await, (false, false));
}
