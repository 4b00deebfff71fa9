//! Tidy checks over the whole workspace's library and binary sources (engine, orchestrator,
//! agent, CLI): modules depend on each other in one direction only (no import cycle among a
//! crate's top-level modules), no source file is over 600 lines and no function over 100 lines
//! outside tests, and every file starts with a `//!` line saying what it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const CRATES: [&str; 4] = ["engine/src", "orchestrator/src", "agent/src", "src"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text without its unit-test module (everything from `#[cfg(test)]` + `mod tests`)
/// and without comment lines.
fn code_of(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod tests")) {
            break;
        }
        if !l.trim_start().starts_with("//") {
            out.push(l);
        }
    }
    out
}

/// Whether a file is test code as a whole (a crate's `tests.rs` module of unit tests).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

fn files() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for c in CRATES {
        let mut v = Vec::new();
        rust_files(&root.join(c), &mut v);
        all.extend(v.into_iter().map(|p| (c.to_string(), p)));
    }
    all
}

/// The top-level module a file belongs to within its crate (`ring` for `ring/uring.rs`).
fn top_module(crate_dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(crate_dir).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
}

#[test]
fn no_import_cycle_among_a_crates_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for c in CRATES {
        let dir = root.join(c);
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut v = Vec::new();
        rust_files(&dir, &mut v);
        for f in v {
            let Some(top) = top_module(&dir, &f) else { continue };
            let text = fs::read_to_string(&f).expect("read");
            for line in code_of(&text) {
                let mut rest = line;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + 7..];
                    let m: String = rest
                        .chars()
                        .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                        .collect();
                    if !m.is_empty() && m != top {
                        edges.entry(top.clone()).or_default().insert(m);
                    }
                }
            }
        }
        // Depth-first search for a back edge; report the cycle it closes.
        fn visit(
            n: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            state: &mut BTreeMap<String, u8>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            state.insert(n.to_string(), 1);
            path.push(n.to_string());
            for m in edges.get(n).into_iter().flatten() {
                match state.get(m.as_str()) {
                    Some(1) => {
                        let at = path.iter().position(|p| p == m).expect("on path");
                        let mut cycle = path[at..].to_vec();
                        cycle.push(m.clone());
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        if let Some(c) = visit(m, edges, state, path) {
                            return Some(c);
                        }
                    }
                }
            }
            path.pop();
            state.insert(n.to_string(), 2);
            None
        }
        let mut state = BTreeMap::new();
        assert!(!edges.is_empty(), "{c}: found no module edges");
        for n in edges.keys() {
            if !state.contains_key(n.as_str()) {
                let cycle = visit(n, &edges, &mut state, &mut Vec::new());
                assert!(
                    cycle.is_none(),
                    "{c}: import cycle {}",
                    cycle.unwrap_or_default().join(" -> ")
                );
            }
        }
    }
}

#[test]
fn no_file_over_600_lines_and_no_function_over_100() {
    let mut long_files = Vec::new();
    let mut long_fns = Vec::new();
    let all = files();
    assert!(all.len() >= 60, "found only {} files", all.len());
    for (_, f) in &all {
        if is_test_file(f) {
            continue;
        }
        let text = fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let end = lines
            .windows(2)
            .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
            .unwrap_or(lines.len());
        if end > 600 {
            long_files.push(format!("{} ({end} lines)", f.display()));
        }
        // rustfmt puts a function's closing brace alone at the indentation of its `fn` line.
        for (i, l) in lines[..end].iter().enumerate() {
            let t = l.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "async fn ",
                "pub async fn ",
                "unsafe fn ",
            ]
            .iter()
            .any(|p| t.starts_with(p));
            if !is_fn || t.ends_with(';') {
                continue;
            }
            let indent = &l[..l.len() - t.len()];
            let close = format!("{indent}}}");
            if let Some(len) = lines[i..end].iter().position(|x| *x == close) {
                if len + 1 > 100 {
                    long_fns.push(format!("{}:{} ({} lines)", f.display(), i + 1, len + 1));
                }
            }
        }
    }
    assert!(
        long_files.is_empty(),
        "source files over 600 lines (tests excluded): {long_files:?}"
    );
    assert!(
        long_fns.is_empty(),
        "functions over 100 lines outside tests: {long_fns:?}"
    );
}

#[test]
fn every_file_starts_with_a_module_doc_line() {
    let missing: Vec<_> = files()
        .into_iter()
        .filter(|(_, f)| {
            !fs::read_to_string(f)
                .expect("read")
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("//! ") && l.len() > 10)
        })
        .map(|(_, f)| f)
        .collect();
    assert!(missing.is_empty(), "files without a leading //! line: {missing:?}");
}
