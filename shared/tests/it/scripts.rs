//! The database scripts, run as a user would run them, each against a database of its own.
//!
//! Long on purpose: every script's test shares `ScriptDb` and the output helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A database name no other test uses; the scripts create it.
pub(crate) struct ScriptDb {
    pub(crate) url: String,
    name: String,
}

impl ScriptDb {
    pub(crate) fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let master = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let name = format!(
            "herald_script_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (base, _) = master.rsplit_once('/').expect("URL with a database");
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub(crate) fn run(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(repo_root().join("scripts").join(script));
        cmd.args(args)
            .env("DATABASE_URL", &self.url)
            .env("HERALD_MIGRATE_BIN", env!("CARGO_BIN_EXE_herald-migrate"))
            .env_remove("APP_ENV")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("script runs")
    }

    /// A connection to the server's `postgres` database, for creating and dropping ours.
    async fn maintenance(&self) -> PgConnection {
        let (base, _) = self.url.rsplit_once('/').expect("url");
        PgConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("maintenance connection")
    }

    pub(crate) async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    async fn counts(&self) -> Vec<(String, i64)> {
        let mut conn = self.connect().await;
        let mut out = Vec::new();
        for table in [
            "users",
            "roles",
            "phrases",
            "incident_timers",
            "email_suppressions",
        ] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(&mut conn)
                    .await
                    .expect("count");
            out.push((table.to_owned(), n));
        }
        out
    }

    async fn add_rows(&self) {
        let mut conn = self.connect().await;
        sqlx::query(
            "WITH u AS (INSERT INTO users (email, password_hash, display_name, slug)
                        SELECT 'u' || g || '@example.com', 'x', 'User ' || g, 'user-' || g
                        FROM generate_series(1, 3) g RETURNING id)
             INSERT INTO incident_timers (user_id) SELECT id FROM u",
        )
        .execute(&mut conn)
        .await
        .expect("users");
        sqlx::query("INSERT INTO email_suppressions (email, suppression_type) VALUES ('Gone@X.com', 'bounce')")
            .execute(&mut conn)
            .await
            .expect("suppression");
    }

    async fn drop_db_and_role(self, role: &str) {
        let mut conn = self.maintenance().await;
        self.drop_db().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS \"{role}\""
        )))
        .execute(&mut conn)
        .await
        .expect("drop role");
    }

    pub(crate) async fn drop_db(self) {
        let mut conn = self.maintenance().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop");
    }
}

pub(crate) fn migration_count() -> usize {
    herald_shared::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count()
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn assert_ok(output: &Output) -> String {
    let all = text(output);
    assert!(output.status.success(), "{all}");
    all
}

#[tokio::test]
async fn setup_twice_is_a_no_op_that_keeps_the_data() {
    let db = ScriptDb::new();
    let first = assert_ok(&db.run("setup-db.sh", &[], &[]));
    assert!(first.contains("created database"), "{first}");
    assert!(first.contains("applied 20251003192001"), "{first}");
    assert!(first.contains("job queue schema is current"), "{first}");
    db.add_rows().await;
    let before = db.counts().await;

    let second = assert_ok(&db.run("setup-db.sh", &[], &[]));
    assert!(second.contains("nothing to apply"), "{second}");
    assert!(!second.contains("created database"), "{second}");
    assert_eq!(db.counts().await, before);

    let verify = assert_ok(&db.run("setup-db.sh", &["--verify"], &[]));
    let total = migration_count();
    assert!(
        verify.contains(&format!("{total} applied, 0 pending")),
        "{verify}"
    );
    assert!(verify.contains("pg_trgm"), "{verify}");
    assert!(verify.contains("uuidv7:"), "{verify}");
    db.drop_db().await;
}

#[tokio::test]
async fn verify_reports_pending_migrations_and_changes_nothing() {
    let db = ScriptDb::new();
    let (base, _) = db.url.rsplit_once('/').expect("url");
    let mut conn = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{}\"",
        db.name
    )))
    .execute(&mut conn)
    .await
    .expect("create");
    let verify = db.run("setup-db.sh", &["--verify"], &[]);
    let all = text(&verify);
    assert_eq!(verify.status.code(), Some(3), "{all}");
    assert!(
        all.contains(&format!("0 applied, {} pending", migration_count())),
        "{all}"
    );
    let mut fresh = db.connect().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
    )
    .fetch_one(&mut fresh)
    .await
    .expect("count");
    assert_eq!(tables, 0, "--verify must not create anything");
    drop(fresh);
    db.drop_db().await;
}

#[tokio::test]
async fn backup_then_reset_then_restore_gives_back_the_same_row_counts() {
    let db = ScriptDb::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let backup_env = [("BACKUP_DIR", dir.path().to_str().expect("utf-8 path"))];
    assert_ok(&db.run("setup-db.sh", &[], &[]));
    db.add_rows().await;
    let original = db.counts().await;

    let backup = db.run("backup-db.sh", &["backup"], &backup_env);
    assert_ok(&backup);
    let file = String::from_utf8_lossy(&backup.stdout).trim().to_owned();
    let file_name = Path::new(&file)
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let stamp = file_name
        .strip_prefix(&format!("{}_", db.name))
        .and_then(|s| s.strip_suffix(".dump"))
        .unwrap_or_else(|| panic!("unexpected backup name {file_name}"));
    assert_eq!(stamp.len(), "20261126T120000Z".len(), "{stamp}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{stamp}"
    );

    let reset = assert_ok(&db.run("reset-db.sh", &["--yes"], &[]));
    assert!(reset.contains("reset and migrated"), "{reset}");
    let after_reset = db.counts().await;
    assert_ne!(after_reset, original, "reset must drop the added rows");
    assert!(
        after_reset.contains(&("users".to_owned(), 1)),
        "{after_reset:?}"
    );

    assert_ok(&db.run("backup-db.sh", &["restore", &file, "--yes"], &backup_env));
    assert_eq!(db.counts().await, original);
    let mut conn = db.connect().await;
    let email: String = sqlx::query_scalar("SELECT email::text FROM email_suppressions")
        .fetch_one(&mut conn)
        .await
        .expect("restored suppression");
    assert_eq!(email, "gone@x.com");
    drop(conn);

    // The restore saved what it replaced, and `list` shows both files.
    let list = assert_ok(&db.run("backup-db.sh", &["list"], &backup_env));
    assert_eq!(list.matches(".dump").count(), 2, "{list}");
    db.drop_db().await;
}

#[tokio::test]
async fn backups_beyond_backup_keep_are_removed_oldest_first() {
    let db = ScriptDb::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("BACKUP_DIR", dir.path().to_str().expect("utf-8 path")),
        ("BACKUP_KEEP", "2"),
    ];
    assert_ok(&db.run("setup-db.sh", &[], &[]));
    let mut made = Vec::new();
    for _ in 0..3 {
        let out = db.run("backup-db.sh", &["backup"], &env);
        assert_ok(&out);
        made.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    assert!(
        !Path::new(&made[0]).exists(),
        "the oldest backup is removed"
    );
    assert!(Path::new(&made[1]).exists() && Path::new(&made[2]).exists());
    let bad = db.run("backup-db.sh", &["backup"], &[("BACKUP_KEEP", "zero")]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("BACKUP_KEEP"), "{}", text(&bad));
    db.drop_db().await;
}

#[tokio::test]
async fn reset_refuses_in_production_and_without_a_terminal_and_keeps_the_data() {
    let db = ScriptDb::new();
    assert_ok(&db.run("setup-db.sh", &[], &[]));
    db.add_rows().await;
    let before = db.counts().await;

    let production = db.run("reset-db.sh", &["--yes"], &[("APP_ENV", "production")]);
    assert!(!production.status.success(), "{}", text(&production));
    assert!(
        text(&production).contains("APP_ENV=production"),
        "{}",
        text(&production)
    );

    let no_terminal = db.run("reset-db.sh", &[], &[]);
    assert!(!no_terminal.status.success(), "{}", text(&no_terminal));
    assert!(
        text(&no_terminal).contains("not a terminal"),
        "{}",
        text(&no_terminal)
    );

    let restore = db.run("backup-db.sh", &["restore", "/nonexistent.dump"], &[]);
    assert!(!restore.status.success());

    assert_eq!(
        db.counts().await,
        before,
        "refusals must not touch the data"
    );
    db.drop_db().await;
}

#[test]
fn every_script_explains_itself_with_help() {
    let mut scripts: Vec<String> = std::fs::read_dir(repo_root().join("scripts"))
        .expect("scripts/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 10, "{scripts:?}");
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    for script in &scripts {
        assert!(
            readme.contains(&format!("`scripts/{script}`")),
            "scripts/{script} is not in the README's table"
        );
        let out = Command::new(repo_root().join("scripts").join(script))
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        assert!(out.status.success(), "{script}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("Usage: "),
            "{script}"
        );
    }
}

/// An embedded server of a throwaway clone, stopped and its files removed however the test ends.
struct ClonedServer {
    root: PathBuf,
    port: String,
    _dir: tempfile::TempDir,
}

impl ClonedServer {
    fn script(&self, args: &[&str]) -> Output {
        Command::new(self.root.join("scripts/pg-embedded.sh"))
            .args(args)
            .env("HERALD_PG_PORT", &self.port)
            .env_remove("HERALD_LOCAL")
            .env_remove("HERALD_PG_DATA")
            .stdin(Stdio::null())
            .output()
            .expect("pg-embedded.sh runs")
    }

    /// Where the scripts put the server's files, read back through the .local/pg17 link when the
    /// server lives outside the checkout.
    fn home(&self) -> PathBuf {
        std::fs::canonicalize(self.root.join(".local/pg17")).expect("pg17 home")
    }
}

impl Drop for ClonedServer {
    fn drop(&mut self) {
        let home = std::fs::canonicalize(self.root.join(".local/pg17")).ok();
        let _ = self.script(&["stop"]);
        if let Some(home) = home.filter(|h| !h.starts_with(&self.root)) {
            let _ = std::fs::remove_dir_all(home.parent().expect("per-checkout folder"));
        }
    }
}

#[tokio::test]
async fn the_embedded_server_starts_from_a_clone_in_a_private_folder() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let root = dir.path().join("herald");
    let clone = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(repo_root())
        .arg(&root)
        .output()
        .expect("git");
    assert!(clone.status.success(), "{}", text(&clone));
    // The scripts under test, committed or not.
    let copy = Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("scripts/."))
        .arg(root.join("scripts"))
        .output()
        .expect("cp");
    assert!(copy.status.success(), "{}", text(&copy));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
        .to_string();
    let server = ClonedServer {
        root: root.clone(),
        port: port.clone(),
        _dir: dir,
    };

    let start = assert_ok(&server.script(&["start"]));
    let home = server.home();
    let root_user = running_as_root();
    if root_user {
        assert!(
            home.starts_with("/var/tmp") && !home.starts_with(&root),
            "as root, a private checkout's server lives outside it: {}",
            home.display()
        );
        assert!(
            start.contains(&home.display().to_string()),
            "the script says where the data lives: {start}"
        );
    }
    assert!(home.join("data/PG_VERSION").exists());

    // Another script finds the same server again, and so does a second start.
    let status = assert_ok(&server.script(&["status"]));
    assert!(status.contains(&format!("127.0.0.1:{port}")), "{status}");
    let again = assert_ok(&server.script(&["start"]));
    assert!(again.contains("already running"), "{again}");
    assert!(
        !again.contains("lives in"),
        "the location is said once: {again}"
    );

    let url = String::from_utf8(server.script(&["url"]).stdout).expect("utf-8");
    let mut conn = PgConnection::connect(url.trim()).await.expect("connect");
    sqlx::query("CREATE TABLE used (n int)")
        .execute(&mut conn)
        .await
        .expect("create");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM used")
        .fetch_one(&mut conn)
        .await
        .expect("select");
    assert_eq!(n, 0);
    drop(conn);

    assert_ok(&server.script(&["stop"]));
    let stopped = server.script(&["status"]);
    assert_eq!(stopped.status.code(), Some(3), "{}", text(&stopped));
}

/// Whether this process runs as root (the embedded server then runs as a system user).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// What a role may do on every table of `public` and `apalis`, one line per table:
/// `table: SELECT, UPDATE(col, ...)`; `-` for nothing. Column lists appear where the role has a
/// privilege on some columns only.
async fn privileges_of(conn: &mut PgConnection, role: &str) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT format('%s.%s: %s', n.nspname, c.relname, coalesce((
                   SELECT string_agg(CASE WHEN has_table_privilege($1, c.oid, p.priv) THEN p.priv
                                          ELSE p.priv || '(' || cols || ')' END, ', ' ORDER BY p.ord)
                   FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER'])
                        WITH ORDINALITY AS p(priv, ord),
                        LATERAL (SELECT string_agg(a.attname, ', ' ORDER BY a.attnum) AS cols
                                 FROM pg_attribute a
                                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                   AND CASE WHEN p.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                                            THEN has_column_privilege($1, c.oid, a.attnum, p.priv)
                                            ELSE false END) pc
                   WHERE has_table_privilege($1, c.oid, p.priv) OR pc.cols IS NOT NULL), '-'))
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname IN ('public', 'apalis') AND c.relkind IN ('r', 'p', 'v', 'm')
           ORDER BY 1"#,
    )
    .bind(role)
    .fetch_all(conn)
    .await
    .expect("privileges")
}

/// The application role's rights, listed table by table, then tried: what Herald needs works,
/// the rest (password hashes, role assignments, rewriting the audit trail, temporary tables, DDL)
/// is refused with 42501. Run on PostgreSQL 15 and 17 by scripts/test.sh.
#[tokio::test]
async fn the_app_role_has_exactly_the_rights_herald_needs_and_no_more() {
    let db = ScriptDb::new();
    let role = format!("{}_app", db.name.replace("herald_script_", "h"));
    let out = db.run("setup-db.sh", &["--app-role", &role], &[]);
    let all = assert_ok(&out);
    assert!(
        all.contains(&format!("role {role} can read and write data")),
        "{all}"
    );
    let bad = db.run(
        "setup-db.sh",
        &["--app-role", "Robert'); DROP TABLE users;--"],
        &[],
    );
    assert!(!bad.status.success(), "odd role names are refused");

    let mut owner = PgConnection::connect(&db.url).await.expect("owner");
    // A role an older Herald granted everything is narrowed by running the script again.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO \"{role}\"; GRANT TEMPORARY ON DATABASE \"{}\" TO \"{role}\"",
        db.name
    )))
    .execute(&mut owner)
    .await
    .expect("widen");
    assert_ok(&db.run("setup-db.sh", &["--app-role", &role], &[]));

    let listed = privileges_of(&mut owner, &role).await;
    let expected = [
        "apalis._sqlx_migrations: SELECT",
        "apalis.jobs: SELECT, INSERT, UPDATE, DELETE",
        "apalis.workers: SELECT, INSERT, UPDATE, DELETE",
        "public._sqlx_migrations: SELECT",
        "public.admin_sessions: SELECT, INSERT, UPDATE, DELETE",
        "public.api_idempotency_keys: SELECT, INSERT, DELETE",
        "public.compliance_pauses: SELECT, UPDATE",
        "public.email_attachment_blobs: SELECT, INSERT, UPDATE, DELETE",
        "public.email_deliveries: SELECT, INSERT, UPDATE, DELETE",
        "public.email_feedback_events: SELECT, INSERT",
        "public.email_sending_control: SELECT, UPDATE",
        "public.email_suppressions: SELECT, INSERT, UPDATE, DELETE",
        "public.email_templates: SELECT, INSERT, DELETE",
        "public.feedback_queue_depths: SELECT, INSERT, UPDATE",
        "public.feedback_rejections: SELECT, INSERT, UPDATE",
        "public.incident_timers: -",
        "public.maintenance_schedules: SELECT, INSERT, UPDATE",
        "public.password_reset_tokens: SELECT(id, user_id, expires_at, used_at), INSERT, DELETE",
        "public.phrase_suggestions: -",
        "public.phrases: SELECT(id, phrase_text, active, search_vector), UPDATE(search_vector)",
        "public.refresh_tokens: SELECT(id, expires_at), DELETE",
        "public.roles: -",
        "public.user_excluded_phrases: -",
        "public.user_roles: -",
        "public.users: SELECT(id, email, display_name, slug, active, search_vector), UPDATE(search_vector)",
        "public.verification_tokens: SELECT(id, user_id, expires_at), INSERT, DELETE",
        "public.webhook_attempts: SELECT, INSERT, DELETE",
        "public.webhook_deliveries: SELECT, INSERT, UPDATE, DELETE",
        "public.webhook_endpoints: SELECT, INSERT, UPDATE, DELETE",
        "public.webhook_events: SELECT, INSERT, UPDATE, DELETE",
    ];
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|e| !listed.contains(&(**e).to_owned()))
        .collect();
    let extra: Vec<&String> = listed
        .iter()
        .filter(|l| !expected.contains(&l.as_str()))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the role's rights differ from the list\nexpected but not granted: {missing:#?}\ngranted but not listed: {extra:#?}"
    );

    let user: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO users (email, display_name, slug, password_hash)
         VALUES ('role-test@example.com', 'R', 'role-test', 'secret-hash') RETURNING id",
    )
    .fetch_one(&mut owner)
    .await
    .expect("user");
    sqlx::query(
        "INSERT INTO refresh_tokens (user_id, token_hash, expires_at)
         VALUES ($1, 'h1', now() - interval '1 hour')",
    )
    .bind(user)
    .execute(&mut owner)
    .await
    .expect("refresh token");
    sqlx::query(
        "INSERT INTO email_feedback_events (event_type, recipient, occurred_at, created_at)
         VALUES ('suppression_added', 'old@example.com', now(), now() - interval '3 days')",
    )
    .execute(&mut owner)
    .await
    .expect("old event");

    let (base, _) = db.url.rsplit_once('/').expect("url");
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let as_app = format!("postgres://{role}@{host}/{}", db.name);
    let mut app = PgConnection::connect(&as_app)
        .await
        .expect("the app role can log in");
    let can = [
        "INSERT INTO email_suppressions (email, suppression_type) VALUES ('a@b.cd', 'manual')",
        "SELECT count(*) FROM apalis.jobs",
        "SELECT count(*) FROM public._sqlx_migrations",
        "SELECT id, email, display_name, slug, active FROM users",
        "UPDATE users SET search_vector = NULL WHERE false",
        "INSERT INTO email_feedback_events (event_type, recipient, occurred_at) VALUES ('suppression_removed', 'a@b.cd', now())",
        "DELETE FROM refresh_tokens WHERE expires_at < now()",
        "SELECT prune_email_feedback_events(now() - interval '2 days', 100)",
    ];
    for sql in can {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut app)
            .await
            .unwrap_or_else(|e| panic!("the role may: {sql}: {e}"));
    }
    let verified: bool = sqlx::query_scalar("SELECT user_email_verified($1)")
        .bind(user)
        .fetch_one(&mut app)
        .await
        .expect("the verified check goes through its function");
    assert!(!verified);
    let refused = [
        "SELECT password_hash FROM users",
        "SELECT * FROM users",
        "UPDATE users SET email = 'x@y.z'",
        "UPDATE users SET password_hash = 'x'",
        "SELECT count(*) FROM user_roles",
        "INSERT INTO user_roles (user_id, role_id) SELECT id, id FROM users",
        "SELECT count(*) FROM roles",
        "SELECT token_hash FROM refresh_tokens",
        "UPDATE refresh_tokens SET expires_at = now() + interval '1 year'",
        "INSERT INTO refresh_tokens (user_id, token_hash, expires_at) SELECT id, 'x', now() FROM users",
        "SELECT token_hash FROM verification_tokens",
        "UPDATE email_feedback_events SET recipient = 'someone@else.com'",
        "DELETE FROM email_feedback_events",
        "TRUNCATE email_feedback_events",
        "CREATE TEMPORARY TABLE scratch (id int)",
        "CREATE TABLE public.intruder (id int)",
        "DROP TABLE users",
        "ALTER TABLE users ADD COLUMN x int",
        "CREATE TABLE apalis.intruder (id int)",
        "DELETE FROM public._sqlx_migrations",
        "UPDATE apalis._sqlx_migrations SET success = false",
    ];
    for sql in refused {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut app)
            .await
            .expect_err(sql);
        let code = crate::helpers::sqlstate(&err);
        assert!(matches!(code.as_deref(), Some("42501")), "{sql}: {err}");
    }
    // The one way to delete audit rows keeps the last day's.
    let err = sqlx::query("SELECT prune_email_feedback_events(now(), 100)")
        .execute(&mut app)
        .await
        .expect_err("recent events stay");
    assert_eq!(
        crate::helpers::sqlstate(&err).as_deref(),
        Some("22023"),
        "{err}"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_feedback_events WHERE recipient = 'old@example.com'",
    )
    .fetch_one(&mut owner)
    .await
    .expect("count");
    assert_eq!(left, 0, "the three-day-old event was pruned");
    drop(app);

    // The maintenance jobs run as the role, as the worker runs them.
    let app_pool = sqlx::PgPool::connect(&as_app).await.expect("app pool");
    let settings = herald_shared::maintenance::Settings::from_source(&[("PRUNE_BATCH_SIZE", "10")])
        .expect("settings");
    use herald_shared::maintenance::tasks;
    tasks::expire_tokens(&app_pool, &settings)
        .await
        .expect("token expiry as the app role");
    tasks::refresh_search_index(&app_pool, &settings)
        .await
        .expect("search repair as the app role");
    tasks::prune(&app_pool, &settings)
        .await
        .expect("retention as the app role");
    app_pool.close().await;
    drop(owner);
    db.drop_db_and_role(&role).await;
}

#[tokio::test]
async fn pruning_touches_only_this_database_s_own_dumps_and_backups_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let db = ScriptDb::new();
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("backups");
    let env = [
        ("BACKUP_DIR", dir.to_str().expect("utf-8 path")),
        ("BACKUP_KEEP", "1"),
    ];
    assert_ok(&db.run("setup-db.sh", &[], &[]));
    std::fs::create_dir(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // Another database whose name starts with ours, and names that only look like ours: with the
    // old glob the first sorted as "newest" and the dump just written was deleted.
    let strangers = [
        format!("{}_test_20991231T235959Z.dump", db.name),
        format!("{}_20991231T235959Z.dump.bak", db.name),
        format!("{}_not-a-stamp.dump", db.name),
    ];
    for s in &strangers {
        std::fs::write(dir.join(s), b"not ours").expect("write");
    }
    let path_of = |out: &Output| {
        assert_ok(out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let first = path_of(&db.run("backup-db.sh", &["backup"], &env));
    let second = path_of(&db.run("backup-db.sh", &["backup"], &env));
    assert!(Path::new(&second).exists(), "the newest dump is kept");
    assert!(
        !Path::new(&first).exists(),
        "the older one of ours is pruned"
    );
    for s in &strangers {
        assert!(dir.join(s).exists(), "{s} is not ours and stays");
    }
    let mode = std::fs::metadata(&second)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "dumps are private");
    // A folder the script creates is private too.
    let fresh = parent.path().join("fresh");
    let out = db.run(
        "backup-db.sh",
        &["backup"],
        &[("BACKUP_DIR", fresh.to_str().expect("utf-8"))],
    );
    assert_ok(&out);
    let mode = std::fs::metadata(&fresh)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the backup folder is private");
    db.drop_db().await;
}

#[test]
fn the_password_leaves_the_url_for_pgpassword_and_bad_names_and_remote_resets_are_refused() {
    let script = repo_root().join("scripts/lib/common.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; DATABASE_URL='postgres://herald:s%40cret@db.example:5432/herald?sslmode=verify-full'; hide_password; echo \"$DATABASE_URL|$PGPASSWORD\"",
            script.display()
        ))
        .output()
        .expect("bash");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "postgres://herald@db.example:5432/herald?sslmode=verify-full|s@cret"
    );
    let db = ScriptDb::new();
    for (name, bad) in [("slash", "a%2Fb"), ("dots", "..x"), ("glob", "a*")] {
        let url = format!("{}/{bad}", db.url.rsplit_once('/').expect("url").0);
        let mut cmd = Command::new(repo_root().join("scripts/backup-db.sh"));
        let out = cmd
            .arg("backup")
            .env("DATABASE_URL", &url)
            .env("BACKUP_DIR", std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .expect("script");
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(
            text(&out).contains("refusing database name"),
            "{name}: {}",
            text(&out)
        );
    }
    let remote = Command::new(repo_root().join("scripts/reset-db.sh"))
        .arg("--yes")
        .env("DATABASE_URL", "postgres://u@10.255.255.1:5432/herald")
        .env_remove("APP_ENV")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    assert!(!remote.status.success());
    assert!(
        text(&remote).contains("--allow-remote"),
        "{}",
        text(&remote)
    );
}

#[tokio::test]
async fn a_secret_can_come_from_a_file_named_by_its_file_variable() {
    let db = ScriptDb::new();
    assert_ok(&db.run("setup-db.sh", &[], &[]));
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("database_url");
    // As compose writes secrets: the value and a newline.
    std::fs::write(&secret, format!("{}\n", db.url)).expect("write");
    let status = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_herald-migrate"))
            .arg("status")
            .env_remove("DATABASE_URL")
            .env("DATABASE_URL_FILE", file)
            .stdin(Stdio::null())
            .output()
            .expect("herald-migrate")
    };
    let out = status(&secret);
    assert!(out.status.success(), "{}", text(&out));
    let missing = status(&dir.path().join("nope"));
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("DATABASE_URL_FILE"),
        "{}",
        text(&missing)
    );
    db.drop_db().await;
}
