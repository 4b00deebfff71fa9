//! Ganeti's Exec scenario matrix (`test/py/legacy/cmdlib/backup_unittest.py`) and our own
//! rows (`tests/export_scenarios.rs`, `tests/export_robustness.rs`) against
//! [`FakeNodes`]: no root, no disks, no processes. Each test asserts the exact sequence of
//! node operations and the result or error.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cluster::Cluster;
use crate::error::{ErrorKind, OpError};
use crate::feedback::Collector;
use crate::locking::LockManager;
use crate::lu::{self, Context};
use crate::node::fake::{FakeNodes, Fault};

const INST: &str = "inst1.example.com";
const N1: &str = "node1.example.com";
const N2: &str = "node2.example.com";
const N3: &str = "node3.example.com";

/// A three-node cluster (node1 is master and primary) with one two-disk instance.
struct Fixture {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    nodes: FakeNodes,
    fb: Collector,
    lock_timeout: Duration,
}

fn cluster_text(admin_state: &str, tools: &str) -> String {
    let mut t = format!("[cluster]\nname = \"c\"\nmaster = \"{N1}\"\ncompression_tools = [{tools}]\n");
    for (i, n) in [N1, N2, N3].iter().enumerate() {
        t += &format!("[[nodes]]\nname = \"{n}\"\nuuid = \"n-{i}\"\nroot = \"n{i}\"\n");
    }
    t += &format!(
        "[[instances]]\nname = \"{INST}\"\nuuid = \"i-1\"\nprimary_node = \"{N1}\"\nos = \"noop\"\n\
         hypervisor = \"kvm\"\nadmin_state = \"{admin_state}\"\n\
         beparams = {{ maxmem = 128, minmem = 128, vcpus = 1 }}\n"
    );
    for d in 0..2 {
        t += &format!("[[instances.disks]]\nuuid = \"d-{d}\"\nsize = 1\ntemplate = \"file\"\npath = \"disk{d}.img\"\n");
    }
    t
}

impl Fixture {
    /// The instance with admin state `admin_state`, running if `running`.
    fn new(admin_state: &str, running: bool) -> Self {
        Self::with_tools(admin_state, running, "\"gzip\"")
    }

    fn with_tools(admin_state: &str, running: bool, tools: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.toml"), cluster_text(admin_state, tools)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let nodes = FakeNodes::new().with_stop(Arc::clone(&stop));
        nodes.set_running(INST, running);
        // Both disks are there, with their declared size (1 MiB).
        for d in 0..2 {
            nodes.set_backing_size(d, 1 << 20);
        }
        Self {
            dir,
            stop,
            nodes,
            fb: Collector::default(),
            lock_timeout: Duration::from_secs(5),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run<L: crate::lu::LogicalUnit>(&self, lu: &mut L) -> Result<Option<L::Output>, OpError> {
        let cluster = Cluster::load(self.path().join("cluster.toml")).unwrap();
        let locks = LockManager::new(self.path().join("locks"))
            .unwrap()
            .with_stop(Arc::clone(&self.stop));
        let ctx = Context {
            cluster: &cluster,
            locks: &locks,
            nodes: &self.nodes,
            feedback: &self.fb,
            lock_timeout: self.lock_timeout,
            dry_run: false,
            command: "test".into(),
            stop: Arc::clone(&self.stop),
        };
        lu::run(lu, &ctx)
    }

    fn export(&self, op: ExportOp) -> Result<ExportResult, OpError> {
        self.run(&mut ExportLu::new(op)).map(|r| r.expect("not a dry run"))
    }

    fn calls(&self) -> Vec<String> {
        self.nodes.calls()
    }

    fn lines(&self) -> Vec<String> {
        self.fb.lines()
    }

    /// Whether the config still has the instance.
    fn instance_in_config(&self) -> bool {
        Cluster::load(self.path().join("cluster.toml"))
            .unwrap()
            .instance(INST)
            .is_some()
    }
}

fn op() -> ExportOp {
    ExportOp::new("inst1", "node2")
}

/// CheckPrereq's size checks, the pre hooks, the leftover sweeps and the staging export opened
/// before the instance is touched.
fn prologue() -> Vec<String> {
    vec![
        format!("backing_size {N1} {INST} disk/0"),
        format!("backing_size {N1} {INST} disk/1"),
        format!("run_hooks {N1} instance-export-pre"),
        format!("run_hooks {N2} instance-export-pre"),
        format!("sweep_stale_snapshots {N1} {INST}"),
        format!("sweep_export_leftovers {N2} {INST}"),
        format!("instance_running {N1} {INST}"),
        format!("begin_export {N2} {INST}"),
    ]
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter()
        .map(|x| {
            x.replace("N1", N1)
                .replace("N2", N2)
                .replace("N3", N3)
                .replace("INST", INST)
        })
        .collect()
}

/// Sending both disks from `from` (`disk`, or `snap` for snapshots, which are removed after
/// each disk), then the finalize.
fn transfer(from: &str) -> Vec<String> {
    let mut v = s(&["begin_export N2 INST"]);
    for d in 0..2 {
        if from == "snap" {
            v.push(format!("send_disk {N1}->{N2} {INST} disk/{d} from snap{d}"));
            v.push(format!("remove_snapshot {N1} {INST} disk/{d}"));
        } else {
            v.push(format!("send_disk {N1}->{N2} {INST} disk/{d} from disk"));
        }
    }
    v.push(format!("finalize_export {N2} {INST}"));
    v
}

/// The cleanup listing of the other nodes and of the target, then the post hooks.
fn epilogue() -> Vec<String> {
    s(&[
        "export_listing N1 INST",
        "export_listing N3 INST",
        "export_listing N2 INST",
        "run_hooks N1 instance-export-post",
        "run_hooks N2 instance-export-post",
    ])
}

/// Asked before the instance is stopped: can every disk be snapshotted?
fn caps() -> Vec<String> {
    s(&[
        "snapshot_capability N1 INST disk/0",
        "snapshot_capability N1 INST disk/1",
    ])
}

fn snapshots() -> Vec<String> {
    s(&["create_snapshot N1 INST disk/0", "create_snapshot N1 INST disk/1"])
}

fn cat(parts: &[Vec<String>]) -> Vec<String> {
    parts.concat()
}

fn assert_ok(r: &ExportResult) {
    assert!(r.fin_resu);
    assert_eq!(r.dresults, [true, true]);
    assert_eq!(r.export_dir, Path::new(&format!("/fake/{N2}/export/{INST}")));
}

// --- Ganeti's TestLUBackupExportLocalExport -------------------------------------------------

/// testPlainExportWithShutdown: snapshots tried, the instance restarted right after them.
#[test]
fn snapshot_capable_export_with_shutdown() {
    let f = Fixture::new("up", true);
    let r = f.export(op()).unwrap();
    assert_ok(&r);
    assert!(r.disks.iter().all(|d| d.snapshot && d.label.starts_with("snapshot/")));
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            caps(),
            s(&["stop_instance N1 INST 120s"]),
            snapshots(),
            s(&["start_instance N1 INST"]),
            transfer("snap"),
            epilogue(),
        ])
    );
    assert!(f.nodes.is_running(INST));
    assert!(f.instance_in_config());
    let lines = f.lines();
    let at = |m: &str| {
        lines
            .iter()
            .position(|l| l == m)
            .unwrap_or_else(|| panic!("{m} not in {lines:#?}"))
    };
    assert!(at(&format!("Shutting down instance {INST}")) < at(&format!("Creating a snapshot of disk/0 on node {N1}")));
    assert!(at(&format!("Starting instance {INST}")) < at(&format!("Exporting snapshot/0 from {N1} to {N2}")));
    assert!(at(&format!("Removing snapshot of disk/1 on node {N1}")) < at(&format!("Finalizing export on {N2}")));
}

/// A target with less room than the disks are large is said before the instance is stopped
/// (the export still runs: zero runs take no space); with room enough, nothing is said.
#[test]
fn little_room_on_the_target_is_said_before_the_shutdown() {
    for (free, warned) in [(3 << 19, true), (2 << 20, false)] {
        let f = Fixture::new("up", true);
        f.nodes.set_free(free);
        assert_ok(&f.export(op()).unwrap());
        let lines = f.lines();
        let want = format!(
            " - WARNING: The export directory on node {N2} has {:.1} MiB free and the instance's disks are 2.0 MiB: \
             the export fails for want of space if they hold more data than that (zero runs take no space in the dumps)",
            free as f64 / 1048576.0
        );
        let at = |m: &str| lines.iter().position(|l| l == m);
        let shutdown = at(&format!("Shutting down instance {INST}")).expect("shut down");
        match at(&want) {
            Some(w) => assert!(warned && w < shutdown, "{free}: {lines:#?}"),
            None => assert!(!warned, "{free}: no warning in {lines:#?}"),
        }
    }
}

/// testFileExportWithShutdown: no snapshots possible, no --long-sleep: aborted (before the stop).
#[test]
fn non_snapshot_export_with_shutdown_fails_before_the_shutdown() {
    let f = Fixture::new("up", true);
    f.nodes.not_snapshot_capable(1);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Exec);
    assert!(e.msg.contains("--long-sleep option"), "{e}");
    // Ganeti stops the instance, finds a disk it cannot snapshot, and aborts (leaving it
    // stopped); the capability is known before the instance is touched.
    assert_eq!(f.calls(), cat(&[prologue(), caps(), s(&["abandon_export N2 INST"])]));
    assert!(f.nodes.is_running(INST));
    assert!(f.nodes.open_staging().is_empty());
}

/// testFileLongSleepExport: the disks are sent with the instance down, then it is started.
#[test]
fn non_snapshot_export_with_long_sleep() {
    let f = Fixture::new("up", true);
    f.nodes.not_snapshot_capable(0);
    let r = f
        .export(ExportOp {
            long_sleep: true,
            ..op()
        })
        .unwrap();
    assert_ok(&r);
    assert!(r.disks.iter().all(|d| !d.snapshot && d.label.starts_with("disk/")));
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            s(&["snapshot_capability N1 INST disk/0", "stop_instance N1 INST 120s"]),
            transfer("disk"),
            s(&["start_instance N1 INST"]),
            epilogue(),
        ])
    );
}

/// testPlainLiveExport: snapshots of the running instance; it is never stopped.
#[test]
fn snapshot_capable_live_export() {
    let f = Fixture::new("up", true);
    let r = f
        .export(ExportOp {
            shutdown: false,
            ..op()
        })
        .unwrap();
    assert_ok(&r);
    assert_eq!(
        f.calls(),
        cat(&[prologue(), caps(), snapshots(), transfer("snap"), epilogue()])
    );
    assert!(f.nodes.is_running(INST));
}

/// `--bwlimit` is for the whole export: with two disks moving at once each gets half; one at a
/// time, each gets all of it. `--bwlimit 0` is no limit (as rsync and vzdump read it): no disk
/// gets a share of it, which was once 1 byte per second.
#[test]
fn bwlimit_is_shared_by_the_disks_moving_at_once_and_0_is_no_limit() {
    for (bwlimit, parallel, each) in [
        (100_000_000, 2, Some(50_000_000)),
        (100_000_000, 1, Some(100_000_000)),
        (0, 2, None),
        (0, 1, None),
    ] {
        let f = Fixture::new("up", true);
        let r = f
            .export(ExportOp {
                shutdown: false,
                bwlimit: Some(bwlimit),
                max_parallel_disks: parallel,
                ..op()
            })
            .unwrap();
        assert_ok(&r);
        let sends: Vec<String> = f.calls().into_iter().filter(|c| c.starts_with("send_disk")).collect();
        assert_eq!(sends.len(), 2, "{sends:?}");
        for c in &sends {
            match each {
                Some(each) => assert!(c.ends_with(&format!(" bwlimit {each}")), "{parallel} at once: {c}"),
                None => assert!(!c.contains("bwlimit"), "--bwlimit 0, {parallel} at once: {c}"),
            }
        }
    }
}

/// testFileLiveExport: a live export needs snapshots.
#[test]
fn non_snapshot_live_export_is_refused() {
    let f = Fixture::new("up", true);
    f.nodes.not_snapshot_capable(0);
    let e = f
        .export(ExportOp {
            shutdown: false,
            ..op()
        })
        .unwrap_err();
    assert_eq!(
        e.msg,
        "Not all disks could be snapshotted, and you requested a live export; aborting"
    );
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            s(&["snapshot_capability N1 INST disk/0", "abandon_export N2 INST"])
        ])
    );
    assert!(f.nodes.is_running(INST));
    assert!(f.nodes.open_staging().is_empty());
}

/// testPlainOfflineExport / testFileOfflineExport: no snapshots, disks activated, not started.
#[test]
fn offline_export_never_snapshots() {
    for capable in [true, false] {
        let f = Fixture::new("down", false);
        if !capable {
            f.nodes.not_snapshot_capable(0);
        }
        let r = f.export(op()).unwrap();
        assert_ok(&r);
        assert_eq!(
            f.calls(),
            cat(&[
                prologue(),
                s(&["stop_instance N1 INST 120s", "activate_disks N1 INST"]),
                transfer("disk"),
                epilogue(),
            ])
        );
        assert!(!f.nodes.is_running(INST));
        let lines = f.lines();
        assert!(lines.contains(&format!("Activating disks for {INST}")));
        assert!(lines.contains(&format!("Deactivating disks for {INST}")));
    }
}

/// testExportRemoveOfflineInstance / testExportRemoveOnlineInstance: no snapshots, the
/// instance's disks and config entry removed, never restarted.
#[test]
fn export_with_removal() {
    for (state, running) in [("down", false), ("up", true)] {
        let f = Fixture::new(state, running);
        let r = f
            .export(ExportOp {
                remove_instance: true,
                ..op()
            })
            .unwrap();
        assert_ok(&r);
        assert!(r.instance_removed);
        let activate = if state == "down" {
            vec![s(&["activate_disks N1 INST"])]
        } else {
            vec![]
        };
        let mut want = cat(&[prologue(), s(&["stop_instance N1 INST 120s"])]);
        want.extend(activate.concat());
        want.extend(transfer("disk"));
        want.extend(s(&["remove_disks N1 INST", "forget_instance N1 INST"]));
        want.extend(epilogue());
        want.push(format!("run_hooks {N1} config-update-post"));
        assert_eq!(f.calls(), want, "{state}");
        assert!(!f.instance_in_config());
        assert!(!f.nodes.is_running(INST));
        assert!(f.lines().contains(&format!("Removing instance {INST}")));
    }
}

/// testRemoveRunningInstanceWithoutShutdown: refused in CheckPrereq, nothing done.
#[test]
fn remove_running_instance_without_shutdown_is_refused() {
    let f = Fixture::new("up", true);
    let e = f
        .export(ExportOp {
            remove_instance: true,
            shutdown: false,
            ..op()
        })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Prereq);
    assert_eq!(e.msg, "Can not remove instance without shutting it down before");
    assert!(f.calls().is_empty(), "{:?}", f.calls());
}

/// testValidCompressionTool / testInvalidCompressionTool.
#[test]
fn compression_tools() {
    let f = Fixture::with_tools("down", false, "\"gzip\", \"lzop\"");
    f.export(ExportOp {
        compress: "lzop".into(),
        ..op()
    })
    .unwrap();
    assert!(!f.calls().iter().any(|c| c.starts_with("create_snapshot")));
    let f = Fixture::with_tools("down", false, "\"gzip\", \"lzop\"");
    let e = f
        .export(ExportOp {
            compress: "invalid".into(),
            ..op()
        })
        .unwrap_err();
    assert_eq!(e.msg, "Compression tool not allowed, tools allowed are [gzip, lzop]");
    assert!(f.calls().is_empty());
}

/// Ours: a tool of the cluster's list puts lz4 on the wire, `auto` (never in Ganeti's list, always
/// allowed) lz4 only while it is faster, `none` nothing.
#[test]
fn transport_compression_reaches_the_send() {
    for (compress, wire) in [("lzop", " lz4"), ("auto", " lz4 auto"), ("none", "")] {
        let f = Fixture::with_tools("down", false, "\"gzip\", \"lzop\"");
        f.export(ExportOp {
            compress: compress.into(),
            ..op()
        })
        .unwrap();
        let sends: Vec<String> = f.calls().into_iter().filter(|c| c.starts_with("send_disk")).collect();
        assert!(!sends.is_empty(), "{compress}: no send");
        for s in &sends {
            assert!(s.ends_with(&format!("from disk{wire}")), "{compress}: {s}");
        }
    }
}

/// testLiveLongSleep.
#[test]
fn live_export_with_long_sleep_is_refused() {
    let f = Fixture::new("up", true);
    let e = f
        .export(ExportOp {
            shutdown: false,
            long_sleep: true,
            ..op()
        })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Prereq);
    assert!(e.msg.contains("long sleep"), "{e}");
    assert!(f.calls().is_empty());
}

/// TestLUBackupExportRemoteExport: remote exports are refused before anything is looked up.
#[test]
fn remote_export_is_refused() {
    let f = Fixture::new("up", true);
    let e = f
        .export(ExportOp {
            mode: ExportMode::Remote,
            ..op()
        })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Prereq);
    assert!(e.msg.starts_with("Remote (inter-cluster) exports are not supported"));
    assert!(f.calls().is_empty());
}

// --- Our own rows -------------------------------------------------------------------------

/// A stopped instance with admin state up: snapshots, and it is not started by the export.
#[test]
fn admin_up_but_stopped_instance_is_started_after_snapshots_as_ganeti_does() {
    let f = Fixture::new("up", false);
    f.export(op()).unwrap();
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            caps(),
            s(&["stop_instance N1 INST 120s"]),
            snapshots(),
            s(&["start_instance N1 INST"]),
            transfer("snap"),
            epilogue(),
        ])
    );
}

/// A failed disk: the other disk is still sent, the staging export abandoned, the instance
/// restarted, no old export removed, and Ganeti's message names the disk.
#[test]
fn failure_of_each_disk() {
    for bad in 0..2 {
        let f = Fixture::new("down", false);
        f.nodes.add_export(N3, INST);
        f.nodes
            .fail("send_disk", None, Some(bad), Fault::Failed("no space left".into()));
        let e = f.export(op()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exec);
        // No finalize after a failed disk, so Ganeti's message names both.
        assert_eq!(
            e.msg,
            format!("Export failed, errors in export finalization, disk export: disk(s) {bad}")
        );
        assert!(!e.is_integrity());
        let mut want = cat(&[prologue(), s(&["stop_instance N1 INST 120s", "activate_disks N1 INST"])]);
        want.extend(s(&[
            "begin_export N2 INST",
            "send_disk N1->N2 INST disk/0 from disk",
            "send_disk N1->N2 INST disk/1 from disk",
            "abandon_export N2 INST",
        ]));
        assert_eq!(f.calls(), want);
        assert_eq!(f.nodes.exports(N3), [INST], "the old export stays");
        let lines = f.lines();
        assert!(lines.contains(&format!(" - WARNING: disk/{bad} failed to send data: no space left")));
        assert!(lines.contains(&format!(
            " - WARNING: Some disk exports have failed; there may be leftover data for instance {INST} on node {N2}"
        )));
    }
}

/// Damaged data keeps the engine's error: the export's error is an integrity error (exit 3).
#[test]
fn corrupt_disk_keeps_the_engine_error() {
    let f = Fixture::new("up", true);
    f.nodes.fail("send_disk", None, Some(1), Fault::Corrupt);
    let e = f.export(op()).unwrap_err();
    assert_eq!(
        e.msg,
        "Export failed, errors in export finalization, disk export: disk(s) 1"
    );
    assert!(e.is_integrity());
    assert!(matches!(
        e.engine_error(),
        Some(diskstream_engine::Error::Corrupt { .. })
    ));
    // The snapshot of each disk was removed, the instance runs as before.
    assert!(f.calls().contains(&format!("remove_snapshot {N1} {INST} disk/1")));
    assert!(f.nodes.is_running(INST));
}

/// A failed snapshot: all or none, so every snapshot made is removed and the export runs
/// with the instance down only with --long-sleep.
#[test]
fn failed_snapshot_removes_the_others() {
    let f = Fixture::new("up", true);
    f.nodes.fail(
        "create_snapshot",
        None,
        Some(1),
        Fault::Failed("lvcreate: no space".into()),
    );
    let e = f.export(op()).unwrap_err();
    assert!(e.msg.contains("--long-sleep option"));
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            caps(),
            s(&["stop_instance N1 INST 120s"]),
            snapshots(),
            s(&[
                "remove_snapshot N1 INST disk/0",
                "start_instance N1 INST",
                "abandon_export N2 INST",
            ]),
        ])
    );
    assert!(f.nodes.open_staging().is_empty());
    assert!(f.lines().contains(&format!(
        " - WARNING: Could not snapshot disk/1 on node {N1}: lvcreate: no space"
    )));
}

/// A failed shutdown is Ganeti's error; nothing else is done but removing the staging export.
#[test]
fn failed_shutdown() {
    let f = Fixture::new("up", true);
    f.nodes
        .fail("stop_instance", None, None, Fault::Failed("timed out".into()));
    let e = f.export(op()).unwrap_err();
    assert_eq!(
        e.msg,
        format!("Could not shutdown instance {INST} on node {N1}: timed out")
    );
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            caps(),
            s(&["stop_instance N1 INST 120s", "abandon_export N2 INST"])
        ])
    );
    assert!(f.nodes.open_staging().is_empty());
}

/// A failed finalize: the disks were sent, the export is not there, the instance runs.
#[test]
fn failed_finalize() {
    let f = Fixture::new("up", true);
    f.nodes.fail("finalize_export", None, None, Fault::Failed("EIO".into()));
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.msg, "Export failed, errors in export finalization");
    assert!(f.nodes.exports(N2).is_empty());
    assert!(f.nodes.is_running(INST));
    assert!(f.lines().contains(&format!(
        " - WARNING: Could not finalize export for instance {INST} on node {N2}: EIO"
    )));
}

/// Old exports on other nodes are removed; one on a node sharing the target's export
/// directory is the new export and stays (#1186); a failed removal is a warning.
#[test]
fn cleanup_of_old_exports_on_other_nodes() {
    let f = Fixture::new("down", false);
    f.nodes.add_export(N1, INST);
    f.nodes.add_export(N3, INST);
    f.nodes.add_export(N3, "other.example.com");
    let r = f.export(op()).unwrap();
    assert_eq!(r.removed_old, [N1, N3]);
    assert!(r.shared_nodes.is_empty());
    assert!(f.nodes.exports(N1).is_empty());
    assert_eq!(f.nodes.exports(N3), ["other.example.com"]);
    assert_eq!(f.nodes.exports(N2), [INST]);
    let calls = f.calls();
    let tail = &calls[calls.len() - 9..];
    assert_eq!(
        tail,
        s(&[
            "export_listing N1 INST",
            "export_listing N3 INST",
            "export_listing N2 INST",
            "remove_export N1 INST",
            "sweep_export_leftovers N1 INST",
            "remove_export N3 INST",
            "sweep_export_leftovers N3 INST",
            "run_hooks N1 instance-export-post",
            "run_hooks N2 instance-export-post",
        ])
    );

    let f = Fixture::new("down", false);
    f.nodes.share_export_dir(N3, N2);
    f.nodes.add_export(N1, INST);
    f.nodes
        .fail("remove_export", Some(N1), None, Fault::Failed("EBUSY".into()));
    let r = f.export(op()).unwrap();
    assert_eq!(r.shared_nodes, [N3]);
    assert!(r.removed_old.is_empty());
    assert_eq!(f.nodes.exports(N3), [INST], "the new export, seen from N3, stays");
    assert!(f.lines().contains(&format!(
        " - WARNING: Could not remove older export for instance {INST} on node {N1}: EBUSY"
    )));
}

/// Interrupted during a transfer: the staging export is abandoned, snapshots removed, the
/// instance left running (again, after the shutdown for its snapshots: said so), and the error
/// is `Interrupted`.
#[test]
fn interrupted_during_the_transfer() {
    let f = Fixture::new("up", true);
    f.nodes.add_export(N3, INST);
    f.nodes.fail("send_disk", None, Some(0), Fault::Interrupt);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Interrupted);
    assert_eq!(
        e.msg,
        format!(
            "export of {INST} stopped during the export: the new export was abandoned (its staging \
             directory and snapshots were removed; a previous export is untouched); instance {INST} \
             is running again (it was shut down for the export and started again)"
        )
    );
    assert!(!e.is_integrity());
    let mut want = cat(&[prologue(), caps(), s(&["stop_instance N1 INST 120s"]), snapshots()]);
    want.extend(s(&[
        "start_instance N1 INST",
        "begin_export N2 INST",
        "send_disk N1->N2 INST disk/0 from snap0",
        "remove_snapshot N1 INST disk/0",
        "abandon_export N2 INST",
        "remove_snapshot N1 INST disk/1",
        "instance_running N1 INST",
        "instance_running N1 INST",
    ]));
    assert_eq!(f.calls(), want);
    assert!(f.nodes.open_staging().is_empty());
    assert_eq!(f.nodes.exports(N3), [INST]);
}

/// A target that cannot take the export fails it before the instance is stopped (Ganeti stops,
/// snapshots and restarts the instance, then fails every disk).
#[test]
fn a_target_that_cannot_stage_fails_before_the_instance_is_touched() {
    let f = Fixture::new("up", true);
    f.nodes.fail(
        "begin_export",
        None,
        None,
        Fault::Failed("Read-only file system".into()),
    );
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Exec);
    assert_eq!(
        e.msg,
        format!(
            "Could not prepare the export directory on node {N2}: Read-only file system; nothing \
             was changed (instance {INST} was not stopped or snapshotted)"
        )
    );
    assert_eq!(f.calls(), cat(&[prologue(), s(&["abandon_export N2 INST"])]));
    assert!(f.nodes.is_running(INST));
    assert!(f.nodes.open_staging().is_empty());
    assert!(f.nodes.exports(N2).is_empty());
}

/// Interrupted while the target opens the staging export (a slow target): the instance is
/// never touched (a stop after the signal would kill it outright) and the staging goes.
#[test]
fn interrupted_while_the_staging_export_is_opened() {
    let f = Fixture::new("up", true);
    f.nodes.fail("begin_export", None, None, Fault::Interrupt);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Interrupted);
    assert_eq!(
        e.msg,
        format!("stopped before instance {INST} was shut down; nothing was changed")
    );
    assert_eq!(f.calls(), cat(&[prologue(), s(&["abandon_export N2 INST"])]));
    assert!(f.nodes.is_running(INST));
    assert!(f.nodes.open_staging().is_empty());
}

/// Interrupted while the disks' snapshot capability is asked: the instance is never touched.
#[test]
fn interrupted_while_the_snapshot_capability_is_asked() {
    let f = Fixture::new("up", true);
    f.nodes.fail("snapshot_capability", None, Some(1), Fault::Interrupt);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Interrupted, "{e}");
    assert_eq!(f.calls(), cat(&[prologue(), caps(), s(&["abandon_export N2 INST"])]));
    assert!(f.nodes.is_running(INST));
    assert!(f.nodes.open_staging().is_empty());
}

/// Interrupted during the shutdown of a running instance: it is started again.
#[test]
fn interrupted_during_the_shutdown() {
    let f = Fixture::new("up", true);
    f.nodes.fail("stop_instance", None, None, Fault::Interrupt);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Interrupted);
    assert_eq!(
        e.msg,
        format!(
            "export of {INST} stopped during the shutdown of the instance; instance {INST} is running again \
             (it was shut down for the export and started again)"
        )
    );
    assert_eq!(
        f.calls(),
        cat(&[
            prologue(),
            caps(),
            s(&[
                "stop_instance N1 INST 120s",
                "instance_running N1 INST",
                "start_instance N1 INST",
                "instance_running N1 INST",
                "abandon_export N2 INST",
            ]),
        ])
    );
    assert!(f.nodes.open_staging().is_empty());
}

/// A stopped instance with admin state up that the export started after the snapshots is
/// stopped again when the export is interrupted.
#[test]
fn interrupted_export_stops_what_it_started() {
    let f = Fixture::new("up", false);
    f.nodes.fail("send_disk", None, Some(1), Fault::Interrupt);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Interrupted);
    assert!(
        e.msg.ends_with(&format!("instance {INST} is stopped, as before")),
        "{e}"
    );
    let calls = f.calls();
    assert_eq!(
        calls[calls.len() - 3..],
        s(&[
            "instance_running N1 INST",
            "stop_instance N1 INST 120s",
            "instance_running N1 INST"
        ])
    );
    assert!(!f.nodes.is_running(INST));
}

/// The pre hooks fail: nothing is done on any node.
#[test]
fn failed_pre_hook_aborts_before_exec() {
    let f = Fixture::new("up", true);
    f.nodes.fail("run_hooks", Some(N2), None, Fault::Failed("no".into()));
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::HooksAbort);
    assert_eq!(f.calls(), prologue()[..4].to_vec());
}

/// A declared size that does not match the backing file is refused before anything changes.
#[test]
fn disk_size_mismatch_is_refused() {
    let f = Fixture::new("up", true);
    f.nodes.set_backing_size(1, 3 << 20);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Prereq);
    assert!(
        e.msg
            .starts_with(&format!("Disk disk/1 of instance {INST}: its backing file ")),
        "{e}"
    );
    assert!(e
        .msg
        .contains("is 3 MiB (3145728 bytes), but the cluster config declares size = 1 (1 MiB, 1048576 bytes)"));
    assert_eq!(f.calls(), prologue()[..2].to_vec());
}

/// A missing disk file of an instance that is up is refused before anything is stopped (no
/// disk activation runs for it, so the transfer would find it only after the shutdown); for an
/// instance that is down it is left to the disk activation, which names it.
#[test]
fn missing_disk_of_an_up_instance_is_refused_before_the_shutdown() {
    let f = Fixture::new("up", true);
    f.nodes.set_backing_missing(1);
    let e = f.export(op()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Prereq);
    assert!(
        e.msg
            .starts_with(&format!("Disk disk/1 of instance {INST}: its backing file "))
            && e.msg.contains("disk1.img does not exist"),
        "{e}"
    );
    assert_eq!(f.calls(), prologue()[..2].to_vec());
    assert!(f.nodes.is_running(INST), "the instance still runs");
    let f = Fixture::new("down", false);
    f.nodes.set_backing_missing(1);
    f.export(op()).unwrap();
    assert!(f.calls().contains(&format!("activate_disks {N1} {INST}")));
}

/// The result serializes with the CLI's JSON field names.
#[test]
fn result_json_has_the_clis_fields() {
    let f = Fixture::new("up", true);
    let r = f.export(op()).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    // `ok` (with `schema_version` and `op`) is the CLI's envelope's, not the result's.
    assert!(v.get("ok").is_none(), "{v}");
    assert_eq!(v["result"], serde_json::json!([true, [true, true]]));
    assert_eq!(v["instance"], INST);
    assert_eq!(v["target_node"], N2);
    assert_eq!(v["instance_removed"], false);
    assert_eq!(v["removed_old_exports"], serde_json::json!([]));
    assert_eq!(v["shared_export_dir_nodes"], serde_json::json!([]));
    let d = &v["disks"][1];
    let dump = r.disks[1].dump.as_str();
    assert_eq!(d["label"], "snapshot/1");
    assert_eq!(d["snapshot"], true);
    assert_eq!(d["digest"], "fake-digest-1");
    assert_eq!(d["disk_size"], 1 << 20);
    assert_eq!(d["checksum"], "blake3");
    assert_eq!(d["path"], format!("/fake/{N2}/export/{INST}/{dump}"));
    assert_eq!(d["manifest"], format!("/fake/{N2}/export/{INST}/{dump}.manifest"));
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = [
        "index",
        "label",
        "snapshot",
        "dump",
        "path",
        "manifest",
        "disk_size",
        "bytes_stored",
        "zero_bytes_skipped",
        "checksum",
        "digest",
        "elapsed_s",
        "throughput_bytes_per_s",
        "buffer_pages",
        "warnings",
    ];
    want.sort();
    assert_eq!(keys, want);
}

/// A failed disk serializes as the CLI shows it: index, label, error.
#[test]
fn failed_disk_json() {
    let d = DiskResult {
        index: 1,
        label: "disk/1".into(),
        snapshot: false,
        dump: "u".into(),
        path: "/x/u".into(),
        report: Err(crate::node::TransferError::NotRun),
    };
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::json!({ "index": 1, "label": "disk/1", "error": "transfer did not run" })
    );
}

/// `gnt-backup remove`: every node with the export, failures are warnings.
#[test]
fn remove_lu_removes_everywhere() {
    let f = Fixture::new("up", true);
    f.nodes.add_export(N1, INST);
    f.nodes.add_export(N3, INST);
    let r = f.run(&mut RemoveLu::new("inst1")).unwrap().unwrap();
    assert_eq!(r.removed, [N1, N3]);
    assert_eq!(
        f.calls(),
        s(&[
            // Nodes with the export or leftovers of it are locked.
            "export_listing N1 INST",
            "export_listing N2 INST",
            "export_listing N3 INST",
            "list_exports N1",
            "remove_export N1 INST",
            "sweep_export_leftovers N1 INST",
            "list_exports N3",
            "remove_export N3 INST",
            "sweep_export_leftovers N3 INST",
        ])
    );
    assert!(f.nodes.exports(N1).is_empty() && f.nodes.exports(N3).is_empty());
    let f = Fixture::new("up", true);
    let r = f.run(&mut RemoveLu::new("gone.example.com")).unwrap().unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(f.lines(), [crate::feedback::EXPORT_NOT_FOUND_HINT]);
}

/// `gnt-backup list` through the nodes.
#[test]
fn list_through_the_nodes() {
    let f = Fixture::new("up", true);
    f.nodes.add_export(N3, INST);
    f.nodes.fail(
        "list_exports",
        Some(N2),
        None,
        Fault::Failed("No exports directory".into()),
    );
    let c = Cluster::load(f.path().join("cluster.toml")).unwrap();
    let rows = list_on(&c, &f.nodes, &[]).unwrap();
    assert_eq!(
        format_table(&rows, true, None),
        format!("Node              Export\n{N2} ?\n{N3} {INST}\n")
    );
    assert_eq!(rows[1].exports, Err("No exports directory".to_string()));
    assert_eq!(f.calls(), s(&["list_exports N1", "list_exports N2", "list_exports N3"]));
}

/// Holds `level`/`name` for another operation of this process (its own open file, so the
/// fixture's export waits for it) until dropped.
fn hold(f: &Fixture, level: crate::locking::LockLevel, name: &str) -> crate::locking::LockOwner {
    use crate::locking::{LockLevel, LockMode, BGL};
    let locks = LockManager::new(f.path().join("locks")).unwrap();
    let mut o = locks.owner("other");
    o.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, Duration::ZERO)
        .unwrap();
    o.acquire(level, &[name], LockMode::Exclusive, Duration::ZERO).unwrap();
    o
}

/// Runs `op` on a thread while `level`/`name` is held by another operation; once the export
/// waits for it, `meanwhile` runs (e.g. changes the config), then the lock is released.
fn export_waiting_for(
    f: &Fixture,
    op: ExportOp,
    level: crate::locking::LockLevel,
    name: &str,
    meanwhile: impl FnOnce(),
) -> Result<ExportResult, OpError> {
    let held = hold(f, level, name);
    std::thread::scope(|sc| {
        let export = sc.spawn(|| f.export(op));
        let waiting = format!("Waiting for lock {level}/{name}");
        let t = std::time::Instant::now();
        while !f.lines().iter().any(|l| l.contains(&waiting)) {
            assert!(t.elapsed() < Duration::from_secs(4), "never waited: {:?}", f.lines());
            std::thread::sleep(Duration::from_millis(10));
        }
        meanwhile();
        drop(held);
        export.join().unwrap()
    })
}

/// An export that waited for the instance lock while another export removed the instance runs
/// CheckPrereq on the current config: `Instance 'X' not known`, and no node is touched.
#[test]
fn an_export_that_waited_for_a_removed_instance_touches_nothing() {
    let f = Fixture::new("up", true);
    let cfg = f.path().join("cluster.toml");
    let e = export_waiting_for(&f, op(), crate::locking::LockLevel::Instance, INST, || {
        Cluster::remove_instance(&cfg, INST).unwrap();
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Prereq);
    assert_eq!(e.ecode, crate::Ecode::NoEnt);
    assert_eq!(e.msg, "Instance 'inst1' not known");
    assert!(f.calls().is_empty(), "{:?}", f.calls());
    assert!(f.nodes.is_running(INST));
    assert!(f.lines().iter().any(|l| l.contains("The cluster config changed")));
}

/// The instance moved to another primary node while the export waited: the names and locks
/// are worked out again, and the export runs on the new primary.
#[test]
fn an_export_that_waited_while_the_instance_moved_uses_the_new_primary() {
    let f = Fixture::new("up", true);
    let cfg = f.path().join("cluster.toml");
    let r = export_waiting_for(&f, op(), crate::locking::LockLevel::Instance, INST, || {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let moved = text.replace(&format!("primary_node = \"{N1}\""), &format!("primary_node = \"{N3}\""));
        assert_ne!(text, moved);
        std::fs::write(&cfg, moved).unwrap();
    })
    .unwrap();
    assert!(r.fin_resu);
    let calls = f.calls();
    assert_eq!(calls[0], format!("backing_size {N3} {INST} disk/0"));
    assert!(calls.contains(&format!("stop_instance {N3} {INST} 120s")), "{calls:?}");
    let on_primary = [
        "backing_size",
        "stop_instance",
        "start_instance",
        "create_snapshot",
        "send_disk",
    ];
    for c in calls.iter().filter(|c| on_primary.iter().any(|p| c.starts_with(p))) {
        assert!(c.contains(N3) && !c.contains(N1), "{c} not on the new primary");
    }
}

/// A finalized export whose old-export cleanup cannot lock a node (another operation holds
/// it past the lock timeout) succeeds: the old export there stays with a warning naming node
/// and instance, the others are removed, and the post hooks and config-update hook run.
#[test]
fn a_cleanup_node_that_cannot_be_locked_is_a_warning_after_finalize() {
    let mut f = Fixture::new("down", false);
    f.lock_timeout = Duration::from_secs(1);
    f.nodes.add_export(N1, INST);
    f.nodes.add_export(N3, INST);
    let _held = hold(&f, crate::locking::LockLevel::Node, N3);
    let mut o = op();
    o.remove_instance = true;
    let r = f.export(o).unwrap();
    assert!(r.fin_resu && r.instance_removed);
    assert_eq!(r.removed_old, [N1]);
    assert_eq!(f.nodes.exports(N3), [INST], "the old export on the locked node stays");
    assert!(!f.instance_in_config());
    let warning = format!(
        " - WARNING: Could not remove older export for instance {INST} on node {N3}: its node lock \
         could not be acquired: Could not acquire lock node/{N3} (exclusive) within 1."
    );
    assert!(f.lines().iter().any(|l| l.starts_with(&warning)), "{:?}", f.lines());
    let calls = f.calls();
    assert_eq!(
        calls[calls.len() - 5..],
        s(&[
            "remove_export N1 INST",
            "sweep_export_leftovers N1 INST",
            "run_hooks N1 instance-export-post",
            "run_hooks N2 instance-export-post",
            "run_hooks N1 config-update-post",
        ])
    );
}

/// SIGINT/SIGTERM while the cleanup waits for a node lock: the finalized export is the result
/// (the CLI reports it as completed), the old export there stays with a warning.
#[test]
fn an_interrupt_while_the_cleanup_waits_for_a_lock_keeps_the_result() {
    let f = Fixture::new("down", false);
    f.nodes.add_export(N3, INST);
    let mut o = op();
    o.remove_instance = true;
    let r = export_waiting_for(&f, o, crate::locking::LockLevel::Node, N3, || {
        f.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
    })
    .unwrap();
    assert!(r.fin_resu && r.instance_removed);
    assert!(r.removed_old.is_empty());
    assert_eq!(f.nodes.exports(N3), [INST]);
    assert_eq!(f.nodes.exports(N2), [INST]);
    let warning = format!(
        " - WARNING: Could not remove older export for instance {INST} on node {N3}: its node lock \
         could not be acquired: interrupted while waiting for lock node/{N3}"
    );
    assert!(f.lines().contains(&warning), "{:?}", f.lines());
}

/// SIGINT/SIGTERM as the new export is finalized: the export is complete, so it is the result
/// (the CLI reports it completed, exit 130/143), not an error; `--remove-instance` and the
/// cleanup of old exports are not done, and the instance is running again as before.
#[test]
fn an_interrupt_at_the_finalize_keeps_the_complete_export_as_the_result() {
    let f = Fixture::new("up", true);
    f.nodes.add_export(N3, INST);
    f.nodes.fail("finalize_export", None, None, Fault::Interrupt);
    let mut o = op();
    o.remove_instance = true;
    let r = f.export(o).unwrap();
    assert!(r.fin_resu && r.dresults.iter().all(|&d| d), "{r:?}");
    assert!(!r.instance_removed && r.removed_old.is_empty(), "{r:?}");
    assert_eq!(f.nodes.exports(N2), [INST], "the new export is in place");
    assert_eq!(f.nodes.exports(N3), [INST], "the old export is kept");
    assert!(
        f.nodes.is_running(INST),
        "the instance runs again, as before the export"
    );
    assert!(
        !f.calls().iter().any(|c| c.starts_with("remove_disks")),
        "{:?}",
        f.calls()
    );
    let warning = f
        .lines()
        .into_iter()
        .find(|l| l.contains("Interrupted after the new export was finalized"))
        .unwrap_or_else(|| panic!("{:?}", f.lines()));
    assert!(
        warning.contains("the instance was not removed")
            && warning.ends_with("is running again (it was shut down for the export and started again)"),
        "{warning}"
    );
}
