//! `.env.example` documents exactly the variables Herald reads: every one the code or the scripts
//! read is there, and every one there is read by something.

use std::collections::BTreeSet;
use std::path::Path;

use crate::scripts::repo_root;

/// Names like `DB_MAX_CONNECTIONS` quoted in the Rust sources of the three crates.
fn read_by_the_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for krate in ["api/src", "worker/src", "shared/src"] {
        visit(&repo_root().join(krate), &mut |text| {
            for quoted in text.split('"').skip(1).step_by(2) {
                if is_env_name(quoted) {
                    names.insert(quoted.to_owned());
                }
            }
        });
    }
    names
}

fn visit(dir: &Path, f: &mut impl FnMut(&str)) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            visit(&path, f);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "sh") {
            f(&std::fs::read_to_string(&path).expect("source"));
        }
    }
}

fn is_env_name(s: &str) -> bool {
    s.len() > 2
        && s.contains('_')
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join(".env.example")).expect(".env.example");
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim();
            let (name, _) = line.split_once('=')?;
            is_env_name(name).then(|| name.to_owned())
        })
        .collect()
}

/// Read by something other than Herald's own sources: the AWS SDK and tracing's filter.
const READ_ELSEWHERE: [&str; 6] = [
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_EC2_METADATA_DISABLED",
    "RUST_LOG",
];

#[test]
fn every_variable_the_code_reads_is_documented() {
    let documented = documented();
    let missing: Vec<_> = read_by_the_code()
        .into_iter()
        .filter(|name| !documented.contains(name))
        .collect();
    assert!(missing.is_empty(), "not in .env.example: {missing:?}");
}

#[test]
fn every_documented_variable_is_read_by_something() {
    let mut scripts = String::new();
    visit(&repo_root().join("scripts"), &mut |text| {
        scripts.push_str(text)
    });
    // The deployment files read some (compose's ${VAR}, the backup image's entrypoint).
    visit(&repo_root().join("docker"), &mut |text| {
        scripts.push_str(text)
    });
    scripts.push_str(
        &std::fs::read_to_string(repo_root().join("docker-compose.yml")).expect("compose"),
    );
    // The tests read a few (the browser test's tools).
    visit(&repo_root().join("api/tests"), &mut |text| {
        scripts.push_str(text)
    });
    let code = read_by_the_code();
    let unread: Vec<_> = documented()
        .into_iter()
        .filter(|name| {
            !code.contains(name)
                && !READ_ELSEWHERE.contains(&name.as_str())
                && !scripts.contains(name.as_str())
        })
        .collect();
    assert!(
        unread.is_empty(),
        "in .env.example but read by nothing: {unread:?}"
    );
}
