//! apalis's own tables are read and written only through the queue adapter.

use std::path::Path;

use crate::scripts::repo_root;

fn files_mentioning(dir: &Path, needle: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_mentioning(&path, needle, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && std::fs::read_to_string(&path)
                .expect("source")
                .contains(needle)
        {
            let relative = path.strip_prefix(repo_root()).expect("in the repository");
            out.push(relative.display().to_string());
        }
    }
}

#[test]
fn only_the_adapter_modules_touch_apalis_tables() {
    let mut found = Vec::new();
    for krate in ["api/src", "worker/src", "shared/src"] {
        files_mentioning(&repo_root().join(krate), "apalis.", &mut found);
    }
    found.sort();
    assert_eq!(found, ["shared/src/jobs.rs", "worker/src/job.rs"]);
}
