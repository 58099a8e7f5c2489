//! Real clients agree with Herald: sqlx-cli reads and writes the same migration bookkeeping as
//! `scripts/setup-db.sh`. The tools are the pinned ones `scripts/test.sh` installs into `.local/tools`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use sqlx::Connection;

use crate::scripts::{ScriptDb, assert_ok, migration_count, repo_root, text};

/// A tool `scripts/test.sh` installed: `$env` if set, else `.local/tools/bin/<name>`.
pub(crate) fn tool(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(
        || repo_root().join(".local/tools/bin").join(name),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs it (or set {env})",
        path.display()
    );
    path
}

fn sqlx(db: &ScriptDb, args: &[&str]) -> Output {
    let source: &[&str] = if args.first() == Some(&"migrate") {
        &["--source", "migrations"]
    } else {
        &[]
    };
    Command::new(tool("sqlx", "HERALD_SQLX_CLI"))
        .args(args)
        .args(source)
        .args(["--database-url", &db.url])
        .current_dir(repo_root())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("sqlx runs")
}

/// `_sqlx_migrations` as it stands: every column that `sqlx migrate run` would touch.
async fn bookkeeping(db: &ScriptDb) -> Vec<(i64, Vec<u8>, String)> {
    let mut conn = db.connect().await;
    sqlx::query_as(
        "SELECT version, checksum, installed_on::text FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .expect("bookkeeping")
}

#[tokio::test]
async fn sqlx_cli_sees_every_migration_setup_db_applied_and_changes_nothing() {
    let db = ScriptDb::new();
    assert_ok(&db.run("setup-db.sh", &[], &[]));
    let before = bookkeeping(&db).await;
    assert_eq!(before.len(), migration_count());

    let info = assert_ok(&sqlx(&db, &["migrate", "info"]));
    let installed = info.lines().filter(|l| l.contains("/installed ")).count();
    assert_eq!(installed, migration_count(), "{info}");
    assert!(!info.contains("/pending "), "{info}");
    assert!(
        !info.to_lowercase().contains("checksum"),
        "sqlx-cli computes the same checksums: {info}"
    );

    let run = assert_ok(&sqlx(&db, &["migrate", "run"]));
    assert!(!run.contains("Applied"), "{run}");
    assert_eq!(bookkeeping(&db).await, before);
    db.drop_db().await;
}

#[tokio::test]
async fn a_database_migrated_by_sqlx_cli_passes_setup_db_verify() {
    let db = ScriptDb::new();
    assert_ok(&sqlx(&db, &["database", "create"]));
    let run = assert_ok(&sqlx(&db, &["migrate", "run"]));
    assert_eq!(run.matches("Applied").count(), migration_count(), "{run}");

    // Before Herald's queue-schema step, --verify says the job queue is missing.
    let missing = db.run("setup-db.sh", &["--verify"], &[]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    assert!(text(&missing).contains("NOT SET UP"), "{}", text(&missing));

    let queue = assert_ok(&db.run("setup-db.sh", &[], &[]));
    assert!(queue.contains("nothing to apply"), "{queue}");
    let verify = assert_ok(&db.run("setup-db.sh", &["--verify"], &[]));
    assert!(
        verify.contains(&format!("{} applied, 0 pending", migration_count())),
        "{verify}"
    );
    assert!(!verify.contains("EDITED"), "{verify}");
    let mut conn = db.connect().await;
    let ok: bool =
        sqlx::query_scalar("SELECT count(*) = 0 FROM _sqlx_migrations WHERE NOT success")
            .fetch_one(&mut conn)
            .await
            .expect("success column");
    assert!(ok);
    conn.close().await.expect("close");
    db.drop_db().await;
}
