//! Integration tests against a real PostgreSQL: each `#[sqlx::test]` gets its own database on the
//! server named by `DATABASE_URL` (scripts/test.sh runs them on PostgreSQL 15 and 17).

mod catalog;
mod compliance;
mod docs;
mod enqueue_groups;
mod env_example;
mod helpers;
mod jobs;
mod layering;
mod ledger;
mod maintenance;
mod metrics_cache;
mod migrations;
mod outbox;
mod pool;
mod real_clients;
mod scripts;
mod search;
mod seeds;
mod suppressions;
mod triggers;
mod uuid_v7;
