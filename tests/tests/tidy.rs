//! Tidy checks that keep the tree showing its architecture: every Rust file opens with a `//!`
//! line saying what it is, and ARCHITECTURE.md's code map has a row for every package and
//! names every module folder of that package. Not a style linter: rustfmt and clippy are.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_path_buf()
}

/// The workspace's member folders, from the root Cargo.toml's `members = [...]`.
fn members(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let list = text
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("a members list in Cargo.toml");
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// Every `.rs` file and every folder below `dir`, skipping build output.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, folders: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            folders.push(path.clone());
            walk(&path, files, folders);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let root = repo();
    let mut files = Vec::new();
    for member in members(&root) {
        walk(&root.join(member), &mut files, &mut Vec::new());
    }
    assert!(files.len() > 50, "found only {} .rs files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` line saying what they are (and are not): {missing:?}"
    );
}

#[test]
fn the_code_map_names_every_package_and_module_folder() {
    let root = repo();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let code_map = map
        .split_once("## Code map")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("ARCHITECTURE.md has a `## Code map` section");
    let mut problems = Vec::new();
    for member in members(&root) {
        let Some(row) = code_map
            .lines()
            .find(|l| l.starts_with(&format!("| `{member}/`")))
        else {
            problems.push(format!("no row for the package folder `{member}/`"));
            continue;
        };
        let src = root.join(&member).join("src");
        let mut folders = Vec::new();
        walk(&src, &mut Vec::new(), &mut folders);
        for folder in folders {
            // Named as `src/a/` or, inside the package's row, as `a/`.
            let rel = folder.strip_prefix(&src).unwrap_or(&folder).display();
            let (long, short) = (format!("`src/{rel}/`"), format!("`{rel}/`"));
            if !row.contains(&long) && !row.contains(&short) {
                problems.push(format!("the `{member}/` row does not name {long}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's code map is out of date: {problems:#?}"
    );
}
