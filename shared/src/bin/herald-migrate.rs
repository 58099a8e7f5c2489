//! Applies Herald's migrations or reports their status; small enough to build in seconds.

use std::process::ExitCode;

use herald_shared::{DbConfig, db, telemetry::error_chain};

const HELP: &str = "\
herald-migrate: apply or inspect Herald's database migrations

USAGE:
    herald-migrate [run]      create the database if missing, then apply pending migrations
    herald-migrate status     report server, extensions, applied and pending migrations
                              (exit 0 when current, 3 when migrations are pending)
    herald-migrate app-role NAME
                              create or update the data-only login role for the API and worker
                              (password: APP_DB_PASSWORD, if set); run as the owner, after `run`

ENVIRONMENT:
    DATABASE_URL (required), DB_MAX_CONNECTIONS, DB_MIN_CONNECTIONS, DB_ACQUIRE_TIMEOUT";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.as_slice() {
        [] => "run",
        [one] => one.as_str(),
        [cmd, role] if cmd == "app-role" => {
            return match app_role(role).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("herald-migrate: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {
            eprintln!("herald-migrate: expected at most one command\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match command {
        "-h" | "--help" | "help" => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        "run" | "status" => match execute(command).await {
            Ok(code) => code,
            Err(message) => {
                eprintln!("herald-migrate: {message}");
                ExitCode::FAILURE
            }
        },
        other => {
            eprintln!("herald-migrate: unknown command {other:?}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

async fn app_role(role: &str) -> Result<(), String> {
    let mut config = DbConfig::from_env().map_err(|e| error_chain(&e))?;
    config.min_connections = 0;
    let pool = db::connect(&config).await.map_err(|e| error_chain(&e))?;
    let password =
        herald_shared::config::Env::get(&herald_shared::config::ProcessEnv, "APP_DB_PASSWORD");
    db::grant_app_role(&pool, role, password.as_deref())
        .await
        .map_err(|e| error_chain(&e))?;
    println!("role {role} can read and write data but not change the schema");
    Ok(())
}

async fn execute(command: &str) -> Result<ExitCode, String> {
    let mut config = DbConfig::from_env().map_err(|e| error_chain(&e))?;
    // A one-shot command needs no idle connections kept open, and a migration may rightly run long.
    config.min_connections = 0;
    config.statement_timeout = std::time::Duration::ZERO;
    let database = config
        .pg_connect_options()
        .get_database()
        .unwrap_or("(default)")
        .to_owned();
    if command == "run"
        && db::create_database_if_missing(&config)
            .await
            .map_err(|e| error_chain(&e))?
    {
        println!("created database {database}");
    }
    let pool = db::connect(&config)
        .await
        .map_err(|e| format!("cannot connect to database {database}: {}", error_chain(&e)))?;
    if command == "run" {
        let mut conn = pool.acquire().await.map_err(|e| error_chain(&e))?;
        let before = db::migration_status(&mut conn)
            .await
            .map_err(|e| error_chain(&e))?;
        let pending: Vec<_> = before.pending().map(|m| m.version).collect();
        drop(conn);
        db::migrate(&pool).await.map_err(|e| error_chain(&e))?;
        if pending.is_empty() {
            println!("database {database} is up to date; nothing to apply");
        } else {
            for version in pending {
                println!("applied {version}");
            }
        }
        println!("job queue schema is current");
        return Ok(ExitCode::SUCCESS);
    }
    report(&pool, &database).await
}

async fn report(pool: &sqlx::PgPool, database: &str) -> Result<ExitCode, String> {
    let err = |e: db::DbError| error_chain(&e);
    let mut conn = pool.acquire().await.map_err(|e| error_chain(&e))?;
    let status = db::migration_status(&mut conn).await.map_err(err)?;
    println!(
        "server:     PostgreSQL {}",
        db::server_version(pool).await.map_err(err)?
    );
    println!("database:   {database}");
    println!(
        "uuidv7:     {}",
        db::uuid_v7_provider(pool).await.map_err(err)?
    );
    let extensions = db::installed_extensions(pool).await.map_err(err)?;
    let names: Vec<String> = extensions
        .iter()
        .map(|e| format!("{} {}", e.name, e.version))
        .collect();
    println!(
        "extensions: {}",
        if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        }
    );
    println!("migrations:");
    for m in &status.migrations {
        let state = match (m.applied, m.checksum_mismatch) {
            (true, false) => "applied ",
            (true, true) => "EDITED  ",
            (false, _) => "pending ",
        };
        println!("  {state} {} {}", m.version, m.description);
    }
    for version in &status.unknown_applied {
        println!("  unknown  {version} (applied by a newer Herald)");
    }
    if let Some(version) = status.dirty {
        println!("  FAILED   {version} (a failed attempt is recorded; fix it by hand)");
    }
    let queue = db::queue_schema_current(&mut conn).await.map_err(err)?;
    println!(
        "job queue:  {}",
        if queue {
            "current (schema apalis)"
        } else {
            "NOT SET UP"
        }
    );
    let applied = status.migrations.iter().filter(|m| m.applied).count();
    let pending = status.pending().count();
    println!("summary:    {applied} applied, {pending} pending");
    Ok(if status.is_current() && queue {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
