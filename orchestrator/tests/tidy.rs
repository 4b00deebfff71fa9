//! Tidy checks: every source and test file of the crate starts with a `//!` line saying what
//! it owns (style guide point 3).

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_file_starts_with_a_module_doc_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() >= 15, "found only {files:?}");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !fs::read_to_string(f)
                .unwrap()
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("//! ") && l.len() > 10)
        })
        .collect();
    assert!(missing.is_empty(), "files without a leading //! line: {missing:?}");
}
