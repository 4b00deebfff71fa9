//! `diskstream demo` end to end: the self-contained cluster demo succeeds, leaves no instance
//! process behind, and also works for an ordinary (non-root) user.

mod common;

use std::process::Command;

use common::*;

#[test]
fn demo_runs_and_cleans_up() {
    let dir = scratch();
    let demo = dir.path().join("demo");
    let (ok, out, err) = ds_text(&["demo", "--dir", s(&demo), "--size", "16M"]);
    assert!(ok, "{out}\n{err}");
    for m in [
        "Finalizing export on node2.example.com",
        "Removing old exports for instance inst1.example.com",
        "result: (True, [True, True])",
        "node3.example.com inst1.example.com",
        "demo: done",
    ] {
        assert!(out.contains(m), "{m:?} missing in:\n{out}");
    }
    let pid_file = demo.join("vc/node1/var/run/ganeti/instances/inst1.example.com.pid");
    assert!(!pid_file.exists(), "the demo instance was not stopped");
}

#[test]
fn demo_works_for_an_ordinary_user() {
    if !is_root() {
        // Already an ordinary user: the test above covers it.
        return;
    }
    // The binary and the demo directory must be reachable by `nobody`.
    let dir = tempfile::Builder::new().prefix("dsdemo-user-").tempdir().unwrap();
    let bin = dir.path().join("diskstream");
    std::fs::copy(env!("CARGO_BIN_EXE_diskstream"), &bin).unwrap();
    Command::new("chmod")
        .args(["0755"])
        .arg(dir.path())
        .arg(&bin)
        .status()
        .unwrap();
    let demo = dir.path().join("demo");
    std::fs::create_dir(&demo).unwrap();
    Command::new("chown").arg("nobody").arg(&demo).status().unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["demo", "--dir", s(&demo), "--size", "8M"])
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo: done"));
}
