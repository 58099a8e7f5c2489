//! docs/architecture.md names source paths; each must exist, so the document cannot silently rot.

use regex_lite::Regex;

use crate::scripts::repo_root;

/// Every repository path the document names: full paths anywhere, and in the layout block each
/// indented entry under its top-level folder.
fn named_paths(doc: &str) -> Vec<String> {
    let full = Regex::new(
        r"(?:^|[\s`(|])((?:api|worker|shared|scripts|migrations|docs|docker|\.ci)/[A-Za-z0-9_./-]*)",
    )
    .expect("regex");
    let mut out = Vec::new();
    let mut in_block = false;
    let mut top = String::new();
    for line in doc.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let first = line.split_whitespace().next().unwrap_or("");
            if !line.starts_with(' ') && first.ends_with('/') {
                top = first.to_owned();
            } else if line.starts_with("  ") && !line.starts_with("   ") && first.contains('/')
                || first.ends_with(".rs")
            {
                if line.starts_with("  ") && !line.starts_with("   ") {
                    out.push(format!("{top}{first}"));
                }
            } else if !line.starts_with(' ') && !first.is_empty() {
                out.push(first.to_owned());
            }
            continue;
        }
        for c in full.captures_iter(line) {
            out.push(c[1].trim_end_matches(['.', ',']).to_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_path_the_architecture_document_names_exists() {
    let doc = std::fs::read_to_string(repo_root().join("docs/architecture.md")).expect("doc");
    let paths = named_paths(&doc);
    assert!(paths.len() > 60, "paths were found: {paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !repo_root().join(p).exists())
        .collect();
    assert!(missing.is_empty(), "named but missing: {missing:?}");
}

#[test]
fn a_missing_path_is_noticed() {
    let paths =
        named_paths("see `shared/src/nowhere.rs::f` and\n```\nshared/\n  src/gone.rs  x\n```\n");
    assert_eq!(paths, ["shared/src/gone.rs", "shared/src/nowhere.rs"]);
}
