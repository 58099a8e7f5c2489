//! Database-backed gauges are cached: scrapes within `GAUGE_REFRESH` of a refresh cost no query,
//! and many scrapers at once share one refresh.

use std::sync::Arc;

use herald_shared::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn scrapes_reuse_a_recent_refresh_and_share_one_in_flight(pool: PgPool) {
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    // A pool of one connection that gives up at once: forty scrapers at once would fail to get a
    // connection if each ran its own queries.
    let options = (*pool.connect_options()).clone();
    let tiny = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_millis(200))
        .connect_with(options)
        .await
        .expect("pool");
    let metrics = Arc::new(Metrics::default());
    let scrapes: Vec<_> = (0..40)
        .map(|_| {
            let (m, p) = (metrics.clone(), tiny.clone());
            tokio::spawn(async move { m.render(&p).await })
        })
        .collect();
    for s in scrapes {
        let text = s.await.expect("task").expect("scrape");
        assert!(text.contains("herald_queue_jobs"));
    }
    // Within the refresh interval, no query at all: it works with the pool closed.
    tiny.close().await;
    let cached = metrics.render(&tiny).await.expect("served from the cache");
    assert!(cached.contains("herald_suppressions"));
    tokio::time::sleep(herald_shared::metrics::GAUGE_REFRESH).await;
    assert!(
        metrics.render(&tiny).await.is_err(),
        "after the interval the gauges are read again"
    );
}
