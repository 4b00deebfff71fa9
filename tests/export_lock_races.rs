//! Exports that meet other operations' locks, through the CLI: an export that waited for the
//! instance lock while another export removed the instance (it runs CheckPrereq on the config
//! as it is under the locks, and touches nothing), and a finalized export whose cleanup of old
//! exports cannot lock a node (a timeout, or SIGINT while it waits: a warning, and the export
//! is still the result, post hooks included), with the lock timeout reported as the whole wait.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const INST: &str = "inst1.example.com";

/// A `diskstream export` child whose stdout and stderr are collected as they come; killed on
/// drop, so a failing test leaves no process behind.
struct Export {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Export {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .arg("export")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run diskstream export");
        let collect = |mut r: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let t = Arc::clone(&text);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    t.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            text
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Self { child, out, err }
    }

    fn text(&self) -> String {
        format!("{}{}", self.out.lock().unwrap(), self.err.lock().unwrap())
    }

    /// Waits until its output contains `needle`.
    fn wait_for(&self, needle: &str, limit: Duration) {
        let t = Instant::now();
        while !self.text().contains(needle) {
            assert!(t.elapsed() < limit, "no {needle:?} within {limit:?}:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit: (code, stdout, stderr).
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let t = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < limit,
                "diskstream did not exit within {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The readers see the end of the pipes shortly after the exit.
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().unwrap().clone();
        let err = self.err.lock().unwrap().clone();
        (st.code(), out, err)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A three-node cluster with one instance on node1 (one 4 MiB file disk), its process driver a
/// sleeper. Returns the config and the node roots.
fn cluster(dir: &Path, admin_state: &'static str) -> (PathBuf, Vec<PathBuf>) {
    let roots = node_roots(dir, 3);
    let disk = dir.join("disk0.img");
    make_disk(&disk, 4 << 20, Data::Mixed, 7);
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state,
        disks: vec![DiskSpec {
            template: "file",
            path: disk,
            mib: 4,
        }],
        process: Some(sleeper()),
    };
    (write_cluster(dir, &roots, &[inst], &[]), roots)
}

fn config_has_instance(cfg: &Path) -> bool {
    fs::read_to_string(cfg).unwrap().contains(INST)
}

#[test]
fn an_export_that_waited_for_an_instance_another_export_removed_touches_nothing() {
    let dir = scratch();
    let (cfg, roots) = cluster(dir.path(), "up");
    let instance = InstanceGuard::new(&cfg, INST, true);
    let gate = dir.path().join("gate");
    let entered = dir.path().join("entered");
    // The first export holds the instance lock in its pre hook until the gate opens.
    hook(
        &roots[0],
        "instance-export-pre.d",
        "10-gate",
        &format!(
            "touch {}\nwhile [ ! -e {} ]; do sleep 0.05; done",
            entered.display(),
            gate.display()
        ),
    );
    let first = Export::spawn(&[
        "--cluster",
        s(&cfg),
        "-n",
        "node2",
        INST,
        "--long-sleep",
        "--remove-instance",
    ]);
    let t = Instant::now();
    while !entered.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no pre hook:\n{}", first.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = Export::spawn(&["--cluster", s(&cfg), "-n", "node1", INST, "--long-sleep"]);
    second.wait_for(&format!("Waiting for lock instance/{INST}"), Duration::from_secs(20));
    fs::write(&gate, "").unwrap();
    let (code, out, err) = first.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!config_has_instance(&cfg));
    let (code, out, err) = second.finish(Duration::from_secs(60));
    assert_eq!(code, Some(4), "refused, nothing changed:\n{out}{err}");
    assert!(err.contains(&format!("Instance '{INST}' not known")), "{out}{err}");
    for touched in [
        "Shutting down instance",
        "Starting instance",
        "failed to send data",
        "Removing old exports",
    ] {
        assert!(!out.contains(touched), "{touched:?}:\n{out}{err}");
    }
    assert_eq!(instance.pid(), None, "the removed instance was started again");
    // The first export is the only one, on node2.
    assert!(export_dir(&roots[1]).join(INST).is_dir());
    assert!(!export_dir(&roots[0]).join(INST).exists());
}

/// The lock file of `node` in the cluster's lock directory (on the master, node1).
fn node_lock(roots: &[PathBuf], node: &str) -> PathBuf {
    let d = roots[0].join("var/run/ganeti/locks/node");
    fs::create_dir_all(&d).unwrap();
    d.join(format!("{node}.lock"))
}

/// Markers written by post hooks on node1 (the master): the export's and config-update's.
fn post_hooks(roots: &[PathBuf], dir: &Path) -> (PathBuf, PathBuf) {
    let (post, cu) = (dir.join("post-ran"), dir.join("config-update-ran"));
    hook(
        &roots[0],
        "instance-export-post.d",
        "10-mark",
        &format!("touch {}", post.display()),
    );
    hook(
        &roots[0],
        "config-update-post.d",
        "10-mark",
        &format!("touch {}", cu.display()),
    );
    (post, cu)
}

#[test]
fn a_cleanup_node_that_cannot_be_locked_in_time_is_a_warning_and_the_export_succeeds() {
    let dir = scratch();
    let (cfg, roots) = cluster(dir.path(), "down");
    let _instance = InstanceGuard::new(&cfg, INST, false);
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST, "-q"]);
    assert!(ok, "{out}{err}");
    let (post, config_update) = post_hooks(&roots, dir.path());
    let _held = FlockHolder::lock(&node_lock(&roots, "node2.example.com"));
    let args = [
        "--cluster",
        s(&cfg),
        "-n",
        "node3",
        INST,
        "--remove-instance",
        "--lock-timeout",
        "3",
    ];
    let started = Instant::now();
    let (code, out, err) = Export::spawn(&[&args[..], &["--json"]].concat()).finish(Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"], serde_json::json!([true, [true]]), "{v}");
    assert_eq!(v["instance_removed"], true, "{v}");
    assert_eq!(v["removed_old_exports"], serde_json::json!([]), "{v}");
    let warning = "Could not remove older export for instance inst1.example.com on node node2.example.com: \
                   its node lock could not be acquired: Could not acquire lock node/node2.example.com \
                   (exclusive) within ";
    let waited: f64 = err
        .split_once(warning)
        .and_then(|(_, rest)| rest.split_once("s: "))
        .map(|(n, _)| n.parse().unwrap())
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    // The whole wait against the --lock-timeout given, not its second part alone.
    assert!(waited >= 3.0 && waited < took.as_secs_f64(), "waited {waited}:\n{err}");
    assert!(export_dir(&roots[2]).join(INST).is_dir(), "the new export");
    assert!(
        export_dir(&roots[1]).join(INST).is_dir(),
        "the old export stays on the locked node"
    );
    assert!(!config_has_instance(&cfg));
    assert!(post.exists(), "the post hooks did not run");
    assert!(config_update.exists(), "the config-update hook did not run");
}

#[test]
fn sigint_while_the_cleanup_waits_for_a_lock_reports_the_completed_export() {
    let dir = scratch();
    let (cfg, roots) = cluster(dir.path(), "down");
    let _instance = InstanceGuard::new(&cfg, INST, false);
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST, "-q"]);
    assert!(ok, "{out}{err}");
    let _held = FlockHolder::lock(&node_lock(&roots, "node2.example.com"));
    let args = ["--cluster", s(&cfg), "-n", "node3", INST, "--remove-instance", "--json"];
    let export = Export::spawn(&args);
    export.wait_for("Waiting for lock node/node2.example.com", Duration::from_secs(60));
    let st = Command::new("kill")
        .args(["-INT", &export.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, out, err) = export.finish(Duration::from_secs(20));
    assert_eq!(code, Some(130), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["kind"], "interrupted", "{v}");
    assert_eq!(v["completed"], true, "{v}");
    assert_eq!(v["result"]["result"], serde_json::json!([true, [true]]), "{v}");
    assert_eq!(v["result"]["instance_removed"], true, "{v}");
    assert!(
        err.contains(
            "Could not remove older export for instance inst1.example.com on node node2.example.com: \
             its node lock could not be acquired: interrupted while waiting for lock node/node2.example.com"
        ),
        "{err}"
    );
    assert!(export_dir(&roots[2]).join(INST).is_dir(), "the new export");
    assert!(export_dir(&roots[1]).join(INST).is_dir(), "the old export stays");
    assert!(!config_has_instance(&cfg));
}
