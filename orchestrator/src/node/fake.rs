//! [`FakeNodes`]: a scripted [`NodeOps`] that records every call, for tests of the LUs without
//! root, disks or processes.
//!
//! Each call is recorded as one line, `<operation> <node> <details>` (e.g.
//! `create_snapshot node1 inst1 disk/0`), in the order the LU made it. The fake keeps just
//! enough state to answer like a cluster: whether each instance runs, which staging exports
//! are open, the exports each export directory holds (nodes may share one), and it fails
//! the operations it is told to fail ([`Fault`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diskstream_engine::ops::Report;

use super::{DiskSource, NodeError, NodeOps, SendDisk, SnapshotRef, TransferError, TransferProgress};
use crate::export::cleanup::{Keep, NodeListing};
use crate::export::export_id::ExportId;
use crate::export::store::Finalized;
use crate::hooks::env::Env;
use crate::hooks::{HookResult, Note, Phase};
use crate::snapshot::{Capability, Stale};

/// How a scripted failure fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node reports this message.
    Failed(String),
    /// The engine finds damaged data (only for `send_disk`).
    Corrupt,
    /// The operation is stopped by SIGINT/SIGTERM: the stop flag given to
    /// [`FakeNodes::with_stop`] is set, and `send_disk` fails as the engine does when
    /// cancelled. Any other operation succeeds after setting the flag.
    Interrupt,
}

/// One scripted failure: operation `op` (a [`NodeOps`] method name) on `node` (any node if
/// `None`) for disk `disk` (any if `None`).
#[derive(Debug, Clone)]
struct Rule {
    op: &'static str,
    node: Option<String>,
    disk: Option<usize>,
    fault: Fault,
}

/// A scripted set of nodes.
#[derive(Debug, Default)]
pub struct FakeNodes {
    calls: Mutex<Vec<String>>,
    running: Mutex<HashMap<String, bool>>,
    not_capable: Mutex<HashSet<usize>>,
    rules: Mutex<Vec<Rule>>,
    stale: Mutex<Vec<Stale>>,
    sizes: Mutex<HashMap<usize, u64>>,
    shared_dir: Mutex<HashMap<String, String>>,
    exports: Mutex<BTreeMap<String, BTreeSet<String>>>,
    staged: Mutex<BTreeSet<(String, String)>>,
    /// What `begin_export` says is free on the target (unknown unless set).
    free: Mutex<Option<u64>>,
    /// The ids of the exports finalized here, by export directory and instance.
    marks: Mutex<HashMap<(String, String), ExportId>>,
    stop: Option<Arc<AtomicBool>>,
}

impl FakeNodes {
    /// Nodes where no instance runs and every operation succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`Fault::Interrupt`] sets `stop` (the operation's SIGINT/SIGTERM flag).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Makes `begin_export` say that `bytes` are free in the export directory.
    pub fn set_free(&self, bytes: u64) {
        *self.free.lock().expect("fake") = Some(bytes);
    }

    /// Says whether `instance` runs.
    pub fn set_running(&self, instance: &str, running: bool) {
        self.running.lock().expect("fake").insert(instance.to_string(), running);
    }

    /// Whether `instance` runs now.
    pub fn is_running(&self, instance: &str) -> bool {
        self.running
            .lock()
            .expect("fake")
            .get(instance)
            .copied()
            .unwrap_or(false)
    }

    /// Disk `disk` (of any instance) cannot be snapshotted.
    pub fn not_snapshot_capable(&self, disk: usize) {
        self.not_capable.lock().expect("fake").insert(disk);
    }

    /// Fails `op` on `node` (any node if `None`) for `disk` (any if `None`) with `fault`.
    pub fn fail(&self, op: &'static str, node: Option<&str>, disk: Option<usize>, fault: Fault) {
        self.rules.lock().expect("fake").push(Rule {
            op,
            node: node.map(str::to_string),
            disk,
            fault,
        });
    }

    /// `sweep_stale_snapshots` reports `stale`.
    pub fn leave_stale_snapshot(&self, stale: Stale) {
        self.stale.lock().expect("fake").push(stale);
    }

    /// Disk `disk`'s backing file has `bytes` bytes (until then it is missing: the LU refuses
    /// that for an instance that is up and leaves it to the disk activation otherwise).
    pub fn set_backing_size(&self, disk: usize, bytes: u64) {
        self.sizes.lock().expect("fake").insert(disk, bytes);
    }

    /// Disk `disk`'s backing file is missing (again).
    pub fn set_backing_missing(&self, disk: usize) {
        self.sizes.lock().expect("fake").remove(&disk);
    }

    /// `node` holds an export of `instance`.
    pub fn add_export(&self, node: &str, instance: &str) {
        let dir = self.dir(node);
        self.exports
            .lock()
            .expect("fake")
            .entry(dir)
            .or_default()
            .insert(instance.to_string());
    }

    /// `node` uses `other`'s export directory (an NFS share).
    pub fn share_export_dir(&self, node: &str, other: &str) {
        self.shared_dir
            .lock()
            .expect("fake")
            .insert(node.to_string(), other.to_string());
    }

    /// The exports `node` holds.
    pub fn exports(&self, node: &str) -> Vec<String> {
        let dir = self.dir(node);
        self.exports
            .lock()
            .expect("fake")
            .get(&dir)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("fake").clone()
    }

    /// The staging exports still open (none once an export has finished, however it ended).
    pub fn open_staging(&self) -> Vec<(String, String)> {
        self.staged.lock().expect("fake").iter().cloned().collect()
    }

    fn dir(&self, node: &str) -> String {
        self.shared_dir
            .lock()
            .expect("fake")
            .get(node)
            .cloned()
            .unwrap_or_else(|| node.to_string())
    }

    fn record(&self, line: String) {
        self.calls.lock().expect("fake").push(line);
    }

    /// The fault scripted for `op` on `node` and `disk`, after acting out an interrupt.
    fn fault(&self, op: &str, node: &str, disk: Option<usize>) -> Option<Fault> {
        let rules = self.rules.lock().expect("fake");
        let rule = rules.iter().find(|r| {
            r.op == op && r.node.as_deref().is_none_or(|n| n == node) && (r.disk.is_none() || r.disk == disk)
        })?;
        if rule.fault == Fault::Interrupt {
            if let Some(stop) = &self.stop {
                stop.store(true, Ordering::SeqCst);
            }
        }
        Some(rule.fault.clone())
    }

    fn check(&self, op: &str, node: &str, disk: Option<usize>) -> Result<(), NodeError> {
        match self.fault(op, node, disk) {
            Some(Fault::Failed(msg)) => Err(NodeError::Failed(msg)),
            Some(Fault::Corrupt) => Err(NodeError::Failed("corrupt".into())),
            Some(Fault::Interrupt) | None => Ok(()),
        }
    }

    fn mark(&self, dir: &str, instance: &str) -> Option<ExportId> {
        let key = (dir.to_string(), instance.to_string());
        self.marks.lock().expect("fake").get(&key).cloned()
    }

    fn identity(&self, key: &str) -> (u64, u64) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (7, h.finish())
    }
}

impl NodeOps for FakeNodes {
    fn run_hooks(&self, node: &str, hpath: &str, phase: Phase, _env: &Env, _report: &dyn Fn(Note)) -> Vec<HookResult> {
        self.record(format!("run_hooks {node} {hpath}-{}", phase.as_str()));
        match self.fault("run_hooks", node, None) {
            Some(Fault::Failed(output)) => vec![HookResult {
                script: format!("{hpath}-{}.d/00-fake", phase.as_str()),
                status: crate::hooks::HookStatus::Fail,
                output,
            }],
            _ => Vec::new(),
        }
    }

    fn instance_running(&self, node: &str, instance: &str) -> Result<bool, NodeError> {
        self.record(format!("instance_running {node} {instance}"));
        self.check("instance_running", node, None)?;
        Ok(self.is_running(instance))
    }

    fn stop_instance(&self, node: &str, instance: &str, timeout: Duration) -> Result<(), NodeError> {
        self.record(format!("stop_instance {node} {instance} {}s", timeout.as_secs()));
        self.check("stop_instance", node, None)?;
        self.set_running(instance, false);
        Ok(())
    }

    fn start_instance(&self, node: &str, instance: &str) -> Result<(), NodeError> {
        self.record(format!("start_instance {node} {instance}"));
        self.check("start_instance", node, None)?;
        self.set_running(instance, true);
        Ok(())
    }

    fn forget_instance(&self, node: &str, instance: &str) {
        self.record(format!("forget_instance {node} {instance}"));
    }

    fn backing_size(&self, node: &str, instance: &str, disk: usize) -> Result<Option<u64>, NodeError> {
        self.record(format!("backing_size {node} {instance} disk/{disk}"));
        self.check("backing_size", node, Some(disk))?;
        Ok(self.sizes.lock().expect("fake").get(&disk).copied())
    }

    fn activate_disks(&self, node: &str, instance: &str) -> Result<(), NodeError> {
        self.record(format!("activate_disks {node} {instance}"));
        self.check("activate_disks", node, None)
    }

    fn remove_disks(&self, node: &str, instance: &str) -> Vec<(usize, NodeError)> {
        self.record(format!("remove_disks {node} {instance}"));
        self.check("remove_disks", node, None)
            .err()
            .map(|e| vec![(0, e)])
            .unwrap_or_default()
    }

    fn sweep_stale_snapshots(&self, node: &str, instance: &str) -> Vec<Stale> {
        self.record(format!("sweep_stale_snapshots {node} {instance}"));
        std::mem::take(&mut *self.stale.lock().expect("fake"))
    }

    fn snapshot_capability(&self, node: &str, instance: &str, disk: usize) -> Capability {
        self.record(format!("snapshot_capability {node} {instance} disk/{disk}"));
        // A fault rule makes it not capable (its message the reason); an interrupt rule only
        // sets the stop flag.
        if let Err(e) = self.check("snapshot_capability", node, Some(disk)) {
            return Capability::NotCapable(e.to_string());
        }
        if self.not_capable.lock().expect("fake").contains(&disk) {
            Capability::NotCapable("the fake says so".into())
        } else {
            Capability::Capable
        }
    }

    fn create_snapshot(&self, node: &str, instance: &str, disk: usize) -> Result<SnapshotRef, NodeError> {
        self.record(format!("create_snapshot {node} {instance} disk/{disk}"));
        self.check("create_snapshot", node, Some(disk))?;
        Ok(SnapshotRef {
            instance: instance.to_string(),
            disk,
            name: format!("snap{disk}"),
        })
    }

    fn remove_snapshot(&self, node: &str, s: &SnapshotRef) -> Result<(), NodeError> {
        self.record(format!("remove_snapshot {node} {} disk/{}", s.instance, s.disk));
        self.check("remove_snapshot", node, Some(s.disk))
    }

    fn begin_export(&self, node: &str, instance: &str) -> Result<Option<u64>, NodeError> {
        self.record(format!("begin_export {node} {instance}"));
        self.check("begin_export", node, None)?;
        self.staged
            .lock()
            .expect("fake")
            .insert((node.to_string(), instance.to_string()));
        Ok(*self.free.lock().expect("fake"))
    }

    fn send_disk(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError> {
        let from = match &req.source {
            DiskSource::Disk => "disk".to_string(),
            DiskSource::Snapshot(s) => s.name.clone(),
        };
        let limit = req.bwlimit.map(|r| format!(" bwlimit {r}")).unwrap_or_default();
        let wire = match (req.lz4, req.lz4_auto) {
            (false, _) => "",
            (true, false) => " lz4",
            (true, true) => " lz4 auto",
        };
        self.record(format!(
            "send_disk {}->{} {} disk/{} from {from}{limit}{wire}",
            req.source_node, req.target_node, req.instance, req.disk
        ));
        if !self
            .staged
            .lock()
            .expect("fake")
            .contains(&(req.target_node.clone(), req.instance.clone()))
        {
            return Err(NodeError::Unknown("no staging export".into()).into());
        }
        match self.fault("send_disk", &req.source_node, Some(req.disk)) {
            Some(Fault::Failed(msg)) => return Err(NodeError::Failed(msg).into()),
            Some(Fault::Corrupt) => {
                return Err(TransferError::Engine(diskstream_engine::Error::corrupt(
                    format!("/dev/fake/disk{}", req.disk),
                    "chunk",
                    4096,
                    "the fake damaged it",
                )))
            }
            Some(Fault::Interrupt) => return Err(TransferError::Engine(diskstream_engine::Error::Cancelled)),
            None => {}
        }
        let size = 1u64 << 20;
        progress.total.store(size, Ordering::Relaxed);
        progress.done.store(size, Ordering::Relaxed);
        Ok(Report {
            op: "create",
            disk_size: size,
            checksum: req.checksum,
            digest: format!("fake-digest-{}", req.disk),
            ..Report::default()
        })
    }

    fn finalize_export(
        &self,
        node: &str,
        instance: &str,
        _config_ini: &str,
        id: &ExportId,
    ) -> Result<Finalized, NodeError> {
        self.record(format!("finalize_export {node} {instance}"));
        let key = (node.to_string(), instance.to_string());
        if !self.staged.lock().expect("fake").remove(&key) {
            return Err(NodeError::Unknown("no staging export".into()));
        }
        self.check("finalize_export", node, None)?;
        self.add_export(node, instance);
        let key = (self.dir(node), instance.to_string());
        self.marks.lock().expect("fake").insert(key, id.clone());
        Ok(Finalized {
            dir: PathBuf::from(format!("/fake/{}/export/{instance}", self.dir(node))),
            warnings: Vec::new(),
        })
    }

    fn abandon_export(&self, node: &str, instance: &str) {
        self.record(format!("abandon_export {node} {instance}"));
        self.staged
            .lock()
            .expect("fake")
            .remove(&(node.to_string(), instance.to_string()));
    }

    fn sweep_export_leftovers(&self, node: &str, instance: &str) {
        self.record(format!("sweep_export_leftovers {node} {instance}"));
    }

    fn list_exports(&self, node: &str) -> Result<Vec<String>, NodeError> {
        self.record(format!("list_exports {node}"));
        self.check("list_exports", node, None)?;
        Ok(self.exports(node))
    }

    fn export_listing(&self, node: &str, instance: &str) -> NodeListing {
        self.record(format!("export_listing {node} {instance}"));
        let dir = self.dir(node);
        let exports = self.check("export_listing", node, None).map(|()| self.exports(node));
        let has = exports.as_ref().is_ok_and(|e| e.iter().any(|n| n == instance));
        NodeListing {
            node: node.to_string(),
            export_dir: PathBuf::from(format!("/fake/{dir}/export")),
            dir_id: Some(self.identity(&dir)),
            export_id: has.then(|| self.identity(&format!("{dir}/{instance}"))),
            mark: has.then(|| self.mark(&dir, instance)).flatten(),
            exports: exports.map_err(|e| e.to_string()),
            leftovers: false,
        }
    }

    fn remove_export(&self, node: &str, instance: &str, keep: &Keep) -> Result<bool, NodeError> {
        self.record(format!("remove_export {node} {instance}"));
        self.check("remove_export", node, None)?;
        let dir = self.dir(node);
        let mark = self.mark(&dir, instance);
        if keep.is(Some(self.identity(&format!("{dir}/{instance}"))), mark.as_ref()) {
            return Ok(false);
        }
        self.marks
            .lock()
            .expect("fake")
            .remove(&(dir.clone(), instance.to_string()));
        Ok(self
            .exports
            .lock()
            .expect("fake")
            .get_mut(&dir)
            .is_some_and(|s| s.remove(instance)))
    }
}
