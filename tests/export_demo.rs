//! `diskstream demo` end to end: the self-contained cluster demo succeeds, leaves no instance
//! process behind, and also works for an ordinary (non-root) user; it refuses a directory that
//! is in use, that others can write to or that another user owns, and sizes it cannot use.

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
        "demo: verifying every dump against its manifest (every chunk's digest)",
        "node3.example.com inst1.example.com",
        "demo: done",
    ] {
        assert!(out.contains(m), "{m:?} missing in:\n{out}");
    }
    // Its own line breaks are line breaks, not escaped `\n` text.
    assert!(!out.contains("\\n"), "an escaped line break in:\n{out}");
    assert!(out.contains("\n$ diskstream list --cluster"), "{out}");
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

/// `demo` builds only in a new directory or an empty one of this user's that no one else can
/// write to: a directory with a cluster in it keeps its `cluster.toml`, and one that others
/// can write to or that another user owns (as root, a directory in /tmp that someone made
/// first) is refused before anything in it runs or is written. Sizes that are not a whole
/// number of MiB are usage errors, and a size the file system has no room for is refused
/// before a byte is written.
#[test]
fn demo_refuses_directories_and_sizes_it_cannot_use() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("cluster.toml"), "# my real cluster\n").unwrap();
    let (ok, _, err) = ds_text(&["demo", "--dir", s(&used), "--size", "4M"]);
    assert!(!ok && err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(used.join("cluster.toml")).unwrap(),
        "# my real cluster\n"
    );
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, _, err) = ds_text(&["demo", "--dir", s(&open), "--size", "4M"]);
    assert!(!ok && err.contains("others can write to it"), "{err}");
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "nothing written in a refused directory"
    );
    // A dangling symbolic link is said as such (it was "No such file or directory"), and not
    // followed to create its target.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let (ok, _, err) = ds_text(&["demo", "--dir", s(&dangling), "--size", "4M"]);
    assert!(
        !ok && err.contains("a symbolic link to ") && err.contains("which does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("nowhere").exists());
    if is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let (ok, _, err) = ds_text(&["demo", "--dir", s(&theirs), "--size", "4M"]);
        assert!(!ok && err.contains("owned by uid 65534"), "{err}");
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    }
    for size in ["0", "1000", "1536K"] {
        let out = ds(&["demo", "--dir", s(&dir.path().join("new")), "--size", size, "--json"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--size {size}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
        assert_eq!(
            (v["op"].clone(), v["kind"].clone()),
            ("demo".into(), "usage".into()),
            "{v}"
        );
    }
    assert!(
        !dir.path().join("new").exists(),
        "a refused command line created nothing"
    );
    let huge = dir.path().join("huge");
    let (ok, _, err) = ds_text(&["demo", "--dir", s(&huge), "--size", "1P"]);
    assert!(!ok && err.contains("the demo needs about"), "{err}");
    assert!(!huge.exists(), "the directory it made for a refused size is removed");
}

/// A SIGKILLed demo runs no clean-up, yet its instance (a process standing in for a VM) ends
/// with it: the demo's pid is in the instance's environment, and the instance watches it
/// (`tail --pid`). The same cluster used by hand keeps its instance running until stopped.
#[test]
fn a_sigkilled_demo_leaves_no_instance_running() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = scratch();
    let demo = dir.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["demo", "--dir", s(&demo), "--size", "256M"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let running = lines.by_ref().map_while(Result::ok).any(|l| l.contains("is running"));
    let pid_file = demo.join("vc/node1/var/run/ganeti/instances/inst1.example.com.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let pid = pid.split_whitespace().next().unwrap_or_default().to_string();
    let _ = child.kill();
    let _ = child.wait();
    // Not a zombie (ended, not yet reaped by this machine's init).
    let alive = |pid: &str| {
        let state = pid.parse().ok().and_then(diskstream_orchestrator::driver::proc_state);
        state.is_some_and(|(s, _)| s != 'Z' && s != 'X')
    };
    assert!(running && alive(&pid), "the demo's instance never ran (pid '{pid}')");
    let t0 = Instant::now();
    while alive(&pid) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    if alive(&pid) {
        let _ = Command::new("kill").args(["-9", &pid]).status();
        panic!("the demo's instance {pid} outlived the SIGKILLed demo by {took:?}");
    }
    eprintln!("the instance ended {took:?} after the demo was killed");

    // By hand (no demo running): the instance runs until stopped.
    let cfg = demo.join("cluster.toml");
    let g = InstanceGuard::new(&cfg, "inst1.example.com", true);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(g.pid().is_some(), "the demo's instance ended without a demo");
}
