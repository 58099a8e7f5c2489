//! Every table has one owner: the module that writes it, named in docs/architecture.md ("Every
//! table and its owner"), which this test reads. SQL text that writes a table outside its owner,
//! or reads it outside its owner and the readers the document names, fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex_lite::Regex;

use crate::scripts::repo_root;

/// A table's row in the document.
#[derive(Debug)]
struct Owner {
    /// The only source file that writes it (`migrations/` for the application's tables Herald
    /// never writes).
    writer: String,
    /// Other files that may read it (read models, joins for one view).
    readers: Vec<String>,
}

fn architecture() -> String {
    std::fs::read_to_string(repo_root().join("docs/architecture.md")).expect("docs/architecture.md")
}

/// The "Every table and its owner" table: `| `table` | `owner` | `reader`, … | what |`.
fn owners() -> BTreeMap<String, Owner> {
    let doc = architecture();
    let section = doc
        .split("\n## Every table and its owner")
        .nth(1)
        .expect("docs/architecture.md has a section \"Every table and its owner\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let code = Regex::new(r"`([^`]+)`").expect("regex");
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let names = |cell: &str| -> Vec<String> {
            code.captures_iter(cell).map(|c| c[1].to_owned()).collect()
        };
        let table = names(cells[1]).pop().expect("a table name");
        let writer = names(cells[2]).pop().expect("an owner");
        let readers = names(cells[3]);
        assert!(
            out.insert(table.clone(), Owner { writer, readers })
                .is_none(),
            "{table} is listed twice"
        );
    }
    out
}

/// Tables the migrations create, and apalis-postgres's.
fn tables_created() -> BTreeSet<String> {
    let create = Regex::new(r"(?i)CREATE TABLE (?:IF NOT EXISTS )?([a-z_.]+)").expect("regex");
    let mut out: BTreeSet<String> = ["apalis.jobs", "apalis.workers"].map(str::to_owned).into();
    for entry in std::fs::read_dir(repo_root().join("migrations")).expect("migrations") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().ends_with(".up.sql") {
            let sql = std::fs::read_to_string(&path).expect("migration");
            out.extend(create.captures_iter(&sql).map(|c| c[1].to_lowercase()));
        }
    }
    out
}

/// The source files under `dirs` (Rust and SQL), relative to the repository, with their text
/// minus whole-line comments (prose may name a table; only code counts).
fn sources(dirs: &[&str]) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
                let text = std::fs::read_to_string(&path).expect("source");
                let code: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect();
                let relative = path.strip_prefix(repo_root()).expect("in the repository");
                out.push((relative.display().to_string(), code.join("\n")));
            }
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        walk(&repo_root().join(dir), &mut out);
    }
    out.sort();
    out
}

/// Where SQL in `text` writes (`true`) or reads (`false`) one of `tables`.
fn statements(text: &str, tables: &BTreeSet<String>) -> Vec<(bool, String)> {
    let write = Regex::new(
        r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(?:ONLY\s+)?(?:public\.)?([a-z_]+(?:\.[a-z_]+)?)\b",
    )
    .expect("regex");
    let read =
        Regex::new(r"\b(?:FROM|JOIN)\s+(?:public\.)?([a-z_]+(?:\.[a-z_]+)?)\b").expect("regex");
    let mut out = Vec::new();
    for (is_write, rx) in [(true, &write), (false, &read)] {
        for c in rx.captures_iter(text) {
            if tables.contains(&c[1]) {
                out.push((is_write, c[1].to_owned()));
            }
        }
    }
    out
}

/// SQL kept in `shared/queries/` belongs to the module that includes it.
fn attributed(path: &str, all: &[(String, String)]) -> String {
    if !path.starts_with("shared/queries/") {
        return path.to_owned();
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    all.iter()
        .find(|(p, text)| p.ends_with(".rs") && text.contains(&format!("queries/{name}")))
        .map_or_else(|| path.to_owned(), |(p, _)| p.clone())
}

/// What the product's code does that its owners table forbids, one line each.
fn violations(files: &[(String, String)], owners: &BTreeMap<String, Owner>) -> Vec<String> {
    let tables: BTreeSet<String> = owners.keys().cloned().collect();
    let mut out = Vec::new();
    for (path, text) in files {
        let module = attributed(path, files);
        for (is_write, table) in statements(text, &tables) {
            let owner = &owners[&table];
            let allowed = module == owner.writer || (!is_write && owner.readers.contains(&module));
            if !allowed {
                out.push(format!(
                    "{path} {} {table}, which {} owns{}",
                    if is_write { "writes" } else { "reads" },
                    owner.writer,
                    if is_write {
                        String::new()
                    } else {
                        format!(" (readers: {:?})", owner.readers)
                    }
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_table_is_in_the_owners_table_and_every_owner_exists() {
    let owners = owners();
    let created = tables_created();
    let listed: BTreeSet<String> = owners
        .keys()
        .filter(|t| !t.contains("_sqlx_migrations"))
        .cloned()
        .collect();
    assert_eq!(
        listed, created,
        "docs/architecture.md lists exactly the tables the migrations (and apalis) create"
    );
    for (table, owner) in &owners {
        for path in std::iter::once(&owner.writer).chain(&owner.readers) {
            assert!(
                repo_root().join(path).exists(),
                "{table}: {path} does not exist"
            );
        }
    }
}

#[test]
fn only_a_tables_owner_writes_it_and_only_named_readers_read_it() {
    let owners = owners();
    let files = sources(&["api/src", "worker/src", "shared/src", "shared/queries"]);
    assert!(files.len() > 50, "the sources were found");
    assert_eq!(violations(&files, &owners), Vec::<String>::new());
}

#[test]
fn a_misplaced_query_is_caught() {
    // The rule itself, on a file that is not the owner of what it touches.
    let owners = owners();
    let files = vec![(
        "api/src/routes/health.rs".to_owned(),
        r#"sqlx::query!("UPDATE email_deliveries SET status = 'sent' WHERE job_id = $1", id);
           sqlx::query!("SELECT count(*) FROM webhook_events");"#
            .to_owned(),
    )];
    assert_eq!(
        violations(&files, &owners),
        [
            "api/src/routes/health.rs reads webhook_events, which shared/src/webhooks/outbox.rs owns (readers: [\"shared/src/webhooks/deliveries.rs\"])",
            "api/src/routes/health.rs writes email_deliveries, which shared/src/email/ledger.rs owns",
        ]
    );
}

/// Raw SQL on owned tables in tests and benches, per file, at most: tests should use the owners'
/// helpers. Files about the SQL itself (the catalog, triggers, migrations, scripts, search, seeds,
/// UUIDs) are exempt; the rest may only go down.
const TEST_SQL_AT_MOST: &[(&str, usize)] = &[
    ("api/tests/it/admin.rs", 1),
    ("api/tests/it/api.rs", 6),
    ("api/tests/it/console.rs", 1),
    ("api/tests/it/hardening.rs", 2),
    ("shared/tests/it/compliance.rs", 1),
    ("shared/tests/it/enqueue_groups.rs", 2),
    ("shared/tests/it/helpers.rs", 3),
    ("shared/tests/it/jobs.rs", 6),
    ("shared/tests/it/outbox.rs", 2),
    ("shared/tests/it/real_clients.rs", 2),
    ("worker/benches/console.rs", 6),
    ("worker/benches/expiry.rs", 7),
    ("worker/benches/feedback.rs", 2),
    ("worker/benches/pipeline.rs", 2),
    ("worker/benches/webhooks.rs", 15),
    ("worker/tests/it/backend.rs", 2),
    ("worker/tests/it/chaos.rs", 3),
    ("worker/tests/it/drain.rs", 1),
    ("worker/tests/it/e2e.rs", 12),
    ("worker/tests/it/feedback.rs", 2),
    ("worker/tests/it/maintenance.rs", 1),
    ("worker/tests/it/retry_policy.rs", 9),
    ("worker/tests/it/sns_trust.rs", 1),
    ("worker/tests/it/unsubscribe.rs", 1),
];

/// Test files that are an owner's own tests (as a module's unit tests would be): their SQL on the
/// tables those owners write checks what the owner's statements left behind, so it is not counted.
/// SQL there on anyone else's table still is.
const OWNERS_OWN_TESTS: &[(&str, &[&str])] = &[
    ("shared/tests/it/jobs.rs", &["shared/src/jobs.rs"]),
    ("shared/tests/it/ledger.rs", &["shared/src/email/ledger.rs"]),
    ("worker/tests/it/ledger.rs", &["shared/src/email/ledger.rs"]),
    (
        "shared/tests/it/suppressions.rs",
        &["shared/src/suppressions.rs"],
    ),
    (
        "shared/tests/it/compliance.rs",
        &["shared/src/compliance.rs"],
    ),
    (
        "shared/tests/it/outbox.rs",
        &[
            "shared/src/webhooks/endpoints.rs",
            "shared/src/webhooks/outbox.rs",
            "shared/src/webhooks/deliveries.rs",
        ],
    ),
    ("worker/tests/it/feedback.rs", &["shared/src/feedback.rs"]),
    (
        "worker/tests/it/maintenance.rs",
        &["shared/src/maintenance/mod.rs"],
    ),
    // The maintenance tasks are these owners' expiry, retention and search-refresh statements.
    (
        "shared/tests/it/maintenance.rs",
        &[
            "shared/src/tokens.rs",
            "shared/src/users.rs",
            "shared/src/phrases.rs",
            "shared/src/jobs.rs",
            "shared/src/feedback.rs",
        ],
    ),
    ("worker/tests/it/sns_trust.rs", &["shared/src/feedback.rs"]),
];

const ABOUT_THE_SQL: &[&str] = &[
    "shared/tests/it/catalog.rs",
    "shared/tests/it/migrations.rs",
    "shared/tests/it/scripts.rs",
    "shared/tests/it/search.rs",
    "shared/tests/it/seeds.rs",
    "shared/tests/it/triggers.rs",
    "shared/tests/it/uuid_v7.rs",
    "shared/tests/it/layering.rs",
];

#[test]
fn tests_and_benches_use_raw_sql_less_and_less() {
    let owners = owners();
    let tables: BTreeSet<String> = owners.keys().cloned().collect();
    let files = sources(&[
        "api/tests",
        "worker/tests",
        "shared/tests",
        "worker/benches",
        "api/benches",
        "shared/benches",
    ]);
    let limits: BTreeMap<&str, usize> = TEST_SQL_AT_MOST.iter().copied().collect();
    let own: BTreeMap<&str, &[&str]> = OWNERS_OWN_TESTS.iter().copied().collect();
    let mut over = Vec::new();
    let mut counts = Vec::new();
    for (path, text) in &files {
        if ABOUT_THE_SQL.contains(&path.as_str()) {
            continue;
        }
        let tested = own.get(path.as_str()).copied().unwrap_or_default();
        let n = statements(text, &tables)
            .iter()
            .filter(|(_, table)| !tested.contains(&owners[table].writer.as_str()))
            .count();
        if n > 0 {
            counts.push(format!("(\"{path}\", {n}),"));
        }
        let limit = limits.get(path.as_str()).copied().unwrap_or(0);
        if n > limit {
            over.push(format!(
                "{path}: {n} raw SQL references to owned tables (at most {limit})"
            ));
        }
    }
    assert!(
        over.is_empty(),
        "use the owners' helpers in tests: {over:#?}\ncurrent counts:\n{}",
        counts.join("\n")
    );
}
