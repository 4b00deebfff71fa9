//! [`LocalNodeOps`]: every node's operations run on this machine, from the cluster config's
//! node roots. The one place an export calls the engine.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diskstream_engine::ops::{self, CreateOptions, Format, Report, StopFlag, Tuning};

use super::{DiskSource, NodeError, NodeOps, SendDisk, SnapshotRef, TransferError, TransferProgress};
use crate::cluster::{Cluster, Disk, DiskTemplate, Instance, Node};
use crate::driver::{self, InstanceDriver};
use crate::export::cleanup::{self, Keep, NodeListing};
use crate::export::export_id::ExportId;
use crate::export::store::{self, Finalized, Removal, Staging};
use crate::hooks::env::Env;
use crate::hooks::{on_node, HookResult, HooksRunner, Note, Phase};
use crate::snapshot::{self, Capability, Snapshot, Stale};

/// The nodes of `cluster`, all reached through this machine's file systems (node roots,
/// disk paths) and processes (instance drivers, hook scripts).
///
/// Open staging exports and snapshots are held here; whatever is still held when this is
/// dropped is removed (a staging directory) or deleted (a snapshot), as on every failure path.
pub struct LocalNodeOps<'a> {
    cluster: &'a Cluster,
    hooks: HooksRunner,
    stop: Arc<AtomicBool>,
    staging: Mutex<HashMap<(String, String), Staging>>,
    snapshots: Mutex<HashMap<SnapshotRef, Snapshot>>,
    removal: Removal,
}

impl<'a> LocalNodeOps<'a> {
    /// The nodes of `cluster`; hooks run with `hooks`; `stop` (SIGINT/SIGTERM) cuts the
    /// shutdown wait short and stops transfers.
    pub fn new(cluster: &'a Cluster, hooks: HooksRunner, stop: Arc<AtomicBool>) -> Self {
        Self {
            cluster,
            hooks,
            stop,
            staging: Mutex::default(),
            snapshots: Mutex::default(),
            removal: Removal::Now,
        }
    }

    /// The flag that stops this process's operations (SIGINT/SIGTERM).
    pub fn stop_flag(&self) -> &StopFlag {
        &self.stop
    }

    /// How a finalize deletes the export it replaced (an agent: [`Removal::Background`]).
    pub fn with_removal(mut self, removal: Removal) -> Self {
        self.removal = removal;
        self
    }

    fn node(&self, name: &str) -> Result<&'a Node, NodeError> {
        self.cluster
            .node(name)
            .ok_or_else(|| NodeError::Unknown(format!("node {name} is not in the cluster config")))
    }

    fn instance(&self, name: &str) -> Result<&'a Instance, NodeError> {
        self.cluster
            .instance(name)
            .ok_or_else(|| NodeError::Unknown(format!("instance {name} is not in the cluster config")))
    }

    fn disk(&self, instance: &str, index: usize) -> Result<&'a Disk, NodeError> {
        self.instance(instance)?
            .disks
            .get(index)
            .ok_or_else(|| NodeError::Unknown(format!("instance {instance} has no disk/{index}")))
    }

    fn driver(&self, instance: &str) -> Result<Box<dyn InstanceDriver>, NodeError> {
        Ok(driver::driver_for(self.cluster, self.instance(instance)?))
    }

    fn export_dir(&self, node: &str) -> Result<PathBuf, NodeError> {
        Ok(self.cluster.export_dir(self.node(node)?))
    }

    /// Where `req` reads from: the disk, or the snapshot this node made of it.
    fn source_path(&self, req: &SendDisk) -> Result<PathBuf, NodeError> {
        let disk = self.disk(&req.instance, req.disk)?;
        match &req.source {
            DiskSource::Disk => Ok(self.cluster.disk_path(disk)),
            DiskSource::Snapshot(s) => self
                .snapshots
                .lock()
                .expect("snapshots")
                .get(s)
                .map(Snapshot::path)
                .ok_or_else(|| NodeError::Unknown(format!("no snapshot {} of disk/{}", s.name, s.disk))),
        }
    }

    /// The staging directory of `instance` on `node`, opened by [`NodeOps::begin_export`].
    fn staging_dir(&self, node: &str, instance: &str) -> Result<PathBuf, NodeError> {
        self.staging
            .lock()
            .expect("staging")
            .get(&(node.to_string(), instance.to_string()))
            .map(|s| s.dir().to_path_buf())
            .ok_or_else(|| NodeError::Unknown(format!("no staging export of {instance} on node {node}")))
    }

    /// The engine's options for an export's dump: a sparse raw file with its manifest, in the
    /// staging directory this export owns, stopped by SIGINT/SIGTERM.
    fn dump_options(&self, req: &SendDisk) -> CreateOptions {
        CreateOptions {
            format: Format::Raw,
            force: true,
            checksum: req.checksum,
            tuning: Tuning {
                pages: req.pages,
                stop: Some(Arc::clone(&self.stop)),
                bwlimit: req.bwlimit,
                ..Tuning::default()
            },
            ..CreateOptions::default()
        }
    }
}

/// A dump name that is a plain name and none of an export's own files'
/// ([`crate::names::reserved_dump_name`]).
fn check_dump_name(dump: &str) -> Result<(), TransferError> {
    let why = if crate::cluster::is_safe_name(dump) {
        crate::names::reserved_dump_name(dump)
    } else {
        Some("not a plain name")
    };
    match why {
        Some(why) => Err(NodeError::Unknown(format!("invalid dump name '{dump}': {why}")).into()),
        None => Ok(()),
    }
}

impl LocalNodeOps<'_> {
    /// The primary's half of a disk crossing the network: reads `req`'s disk or snapshot on
    /// this node and writes it to `out` as a `dsimg` frame stream (lz4 frames if `req.lz4`),
    /// named `name` in errors. The report is the sender's. `stop` ends it at the next chunk
    /// ([`diskstream_engine::Error::Cancelled`]): this process's SIGINT/SIGTERM flag (see
    /// [`LocalNodeOps::stop_flag`]), or an agent's flag for the call that asked for the send,
    /// raised when its master cancels the call or goes away.
    pub fn send_disk_to<W: std::io::Write + Send>(
        &self,
        req: &SendDisk,
        out: W,
        name: &std::path::Path,
        progress: &TransferProgress,
        stop: &StopFlag,
    ) -> Result<Report, TransferError> {
        let source = self.source_path(req)?;
        let declared = self.disk(&req.instance, req.disk)?.size << 20;
        let total = diskstream_engine::source::Disk::open(&source).map_or(declared, |s| s.size());
        progress.total.store(total, Ordering::Relaxed);
        let mut o = CreateOptions {
            format: Format::Dsimg,
            compress: req.lz4,
            adaptive: req.lz4_auto,
            ..self.dump_options(req)
        };
        o.tuning.stop = Some(Arc::clone(stop));
        ops::send(&source, out, name, &o, &progress.done).map_err(TransferError::Engine)
    }

    /// The target's half: reads a `dsimg` frame stream (named `name` in errors) into the dump
    /// `req.dump` of the staging export of `req.instance` on `req.target_node`, with its
    /// manifest; every frame, the index and the trailer are checked, and the dump is committed
    /// (fsynced, renamed) only if all of it checked out.
    pub fn receive_disk<R: diskstream_engine::source::FrameStream>(
        &self,
        req: &SendDisk,
        stream: R,
        name: &std::path::Path,
        progress: &TransferProgress,
    ) -> Result<Report, TransferError> {
        self.receive_disk_until(req, stream, name, progress, &self.stop)
    }

    /// [`LocalNodeOps::receive_disk`] that stops at the next frame once `stop` is raised
    /// (instead of this process's flag): an agent's, for the receive's own halt.
    pub fn receive_disk_until<R: diskstream_engine::source::FrameStream>(
        &self,
        req: &SendDisk,
        stream: R,
        name: &std::path::Path,
        progress: &TransferProgress,
        stop: &StopFlag,
    ) -> Result<Report, TransferError> {
        check_dump_name(&req.dump)?;
        // The disk's size from this node's own config, not from the stream's header.
        let disk_size = self.disk(&req.instance, req.disk)?.size << 20;
        let out = self.staging_dir(&req.target_node, &req.instance)?.join(&req.dump);
        let mut opts = self.dump_options(req);
        opts.tuning.stop = Some(Arc::clone(stop));
        ops::receive(
            stream,
            name,
            &out,
            ops::Expected {
                checksum: req.checksum,
                disk_size,
            },
            &opts,
            &progress.done,
        )
        .map_err(TransferError::Engine)
    }

    /// [`NodeOps::run_hooks`] whose running script is killed, and no further one run, once
    /// `stop` is raised (instead of this process's flag): an agent's, for the call that asked.
    pub fn run_hooks_until(
        &self,
        node: &str,
        hpath: &str,
        phase: Phase,
        env: &Env,
        report: &dyn Fn(Note),
        stop: &StopFlag,
    ) -> Vec<HookResult> {
        let hooks = self.hooks.clone().with_stop(Arc::clone(stop));
        self.hooks_by(&hooks, node, hpath, phase, env, report)
    }

    fn hooks_by(
        &self,
        hooks: &HooksRunner,
        node: &str,
        hpath: &str,
        phase: Phase,
        env: &Env,
        report: &dyn Fn(Note),
    ) -> Vec<HookResult> {
        let Ok(n) = self.node(node) else {
            return Vec::new();
        };
        let named = |n: Note| report(n.map(|msg| on_node(&msg, node)));
        hooks.run_phase_reporting(&self.cluster.hooks_dir(n), hpath, phase, env, &named)
    }

    /// [`NodeOps::stop_instance`] whose wait is cut short once `stop` is raised (the instance
    /// is then stopped at once, as on SIGINT): an agent's flag, for the call that asked.
    pub fn stop_instance_until(&self, instance: &str, timeout: Duration, stop: &AtomicBool) -> Result<(), NodeError> {
        Ok(self.driver(instance)?.stop_cancellable(timeout, stop)?)
    }

    /// Removes every staging export and deletes every snapshot this holds, as its drop would
    /// (an agent that stops: its `LocalNodeOps` lives as long as the process). A finalize in
    /// progress has taken its staging export out already, so it is never touched.
    pub fn release_all(&self) {
        let staging = std::mem::take(&mut *self.staging.lock().expect("staging"));
        drop(staging);
        let snapshots = std::mem::take(&mut *self.snapshots.lock().expect("snapshots"));
        drop(snapshots);
    }

    /// Whether a staging export of `instance` is open on `node` (by [`NodeOps::begin_export`]).
    pub fn is_staging(&self, node: &str, instance: &str) -> bool {
        self.staging_dir(node, instance).is_ok()
    }
}

impl NodeOps for LocalNodeOps<'_> {
    fn run_hooks(&self, node: &str, hpath: &str, phase: Phase, env: &Env, report: &dyn Fn(Note)) -> Vec<HookResult> {
        self.hooks_by(&self.hooks, node, hpath, phase, env, report)
    }

    fn instance_running(&self, _node: &str, instance: &str) -> Result<bool, NodeError> {
        Ok(self.driver(instance)?.is_running()?)
    }

    fn stop_instance(&self, _node: &str, instance: &str, timeout: Duration) -> Result<(), NodeError> {
        self.stop_instance_until(instance, timeout, &self.stop)
    }

    fn start_instance(&self, _node: &str, instance: &str) -> Result<(), NodeError> {
        Ok(self.driver(instance)?.start()?)
    }

    fn forget_instance(&self, _node: &str, instance: &str) {
        if let Some((pid_file, _)) = self
            .instance(instance)
            .ok()
            .and_then(|i| driver::process_paths(self.cluster, i))
        {
            let _ = std::fs::remove_file(pid_file);
        }
    }

    fn backing_size(&self, _node: &str, instance: &str, disk: usize) -> Result<Option<u64>, NodeError> {
        let path = self.cluster.disk_path(self.disk(instance, disk)?);
        // Only a regular file or a block device, decided by `stat` and checked again on the
        // descriptor, opened with O_NONBLOCK: a FIFO (or one swapped in after the `stat`) never
        // blocks the export. A block device's size is where its end is.
        let open = diskstream_engine::input::open_checked(&path, "the disk", true, 0);
        match open.and_then(|mut f| f.seek(SeekFrom::End(0))) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Io(e)),
        }
    }

    fn activate_disks(&self, _node: &str, instance: &str) -> Result<(), NodeError> {
        for d in &self.instance(instance)?.disks {
            let path = self.cluster.disk_path(d);
            if !driver::disk_present(&path) {
                return Err(NodeError::DiskMissing { path });
            }
        }
        Ok(())
    }

    fn remove_disks(&self, _node: &str, instance: &str) -> Vec<(usize, NodeError)> {
        let Ok(inst) = self.instance(instance) else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        for (i, d) in inst.disks.iter().enumerate() {
            let path = self.cluster.disk_path(d);
            let r = match d.template {
                DiskTemplate::File => std::fs::remove_file(&path).map_err(|source| NodeError::Disk {
                    path: path.clone(),
                    source,
                }),
                DiskTemplate::Plain => match std::process::Command::new("lvremove").arg("-f").arg(&path).status() {
                    Err(e) => Err(NodeError::Io(e)),
                    Ok(s) if s.success() => Ok(()),
                    Ok(status) => Err(NodeError::ToolFailed {
                        command: format!("lvremove {}", path.display()),
                        status,
                    }),
                },
                // Ganeti never deletes an adopted block device.
                DiskTemplate::Blockdev => Ok(()),
            };
            if let Err(e) = r {
                failed.push((i, e));
            }
        }
        failed
    }

    fn sweep_stale_snapshots(&self, _node: &str, instance: &str) -> Vec<Stale> {
        self.instance(instance)
            .map(|inst| snapshot::sweep_stale(self.cluster, inst))
            .unwrap_or_default()
    }

    fn snapshot_capability(&self, _node: &str, instance: &str, disk: usize) -> Capability {
        match self.disk(instance, disk) {
            Ok(d) => snapshot::capability(d, &self.cluster.disk_path(d)),
            Err(e) => Capability::NotCapable(e.to_string()),
        }
    }

    fn create_snapshot(&self, _node: &str, instance: &str, disk: usize) -> Result<SnapshotRef, NodeError> {
        let d = self.disk(instance, disk)?;
        let snap = snapshot::create(disk, d, &self.cluster.disk_path(d), instance)?;
        let r = SnapshotRef {
            instance: instance.to_string(),
            disk,
            name: snap.path().display().to_string(),
        };
        self.snapshots.lock().expect("snapshots").insert(r.clone(), snap);
        Ok(r)
    }

    fn remove_snapshot(&self, _node: &str, s: &SnapshotRef) -> Result<(), NodeError> {
        let taken = self.snapshots.lock().expect("snapshots").remove(s);
        match taken {
            Some(mut snap) => Ok(snap.remove()?),
            None => Err(NodeError::Unknown(format!("no snapshot {} of disk/{}", s.name, s.disk))),
        }
    }

    fn begin_export(&self, node: &str, instance: &str) -> Result<Option<u64>, NodeError> {
        let dir = self.export_dir(node)?;
        let key = (node.to_string(), instance.to_string());
        // An earlier staging of the same export is dropped (removed) before the new one exists.
        drop(self.staging.lock().expect("staging").remove(&key));
        let staging = Staging::begin(&dir, instance).map_err(crate::export::store::StoreError::from)?;
        self.staging.lock().expect("staging").insert(key, staging);
        let free = rustix::fs::statvfs(&dir)
            .ok()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        Ok(free)
    }

    fn send_disk(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError> {
        check_dump_name(&req.dump)?;
        let source = self.source_path(req)?;
        let out = self.staging_dir(&req.target_node, &req.instance)?.join(&req.dump);
        let declared = self.disk(&req.instance, req.disk)?.size << 20;
        let total = diskstream_engine::source::Disk::open(&source).map_or(declared, |s| s.size());
        progress.total.store(total, Ordering::Relaxed);
        ops::create(&source, &out, &self.dump_options(req), &progress.done).map_err(TransferError::Engine)
    }

    fn finalize_export(
        &self,
        node: &str,
        instance: &str,
        config_ini: &str,
        id: &ExportId,
    ) -> Result<Finalized, NodeError> {
        let taken = self
            .staging
            .lock()
            .expect("staging")
            .remove(&(node.to_string(), instance.to_string()));
        let staging =
            taken.ok_or_else(|| NodeError::Unknown(format!("no staging export of {instance} on node {node}")))?;
        Ok(staging
            .finalize_with(config_ini, id, self.removal)
            .map_err(crate::export::store::StoreError::from)?)
    }

    fn abandon_export(&self, node: &str, instance: &str) {
        let taken = self
            .staging
            .lock()
            .expect("staging")
            .remove(&(node.to_string(), instance.to_string()));
        drop(taken);
    }

    fn sweep_export_leftovers(&self, node: &str, instance: &str) {
        if let Ok(dir) = self.export_dir(node) {
            store::sweep_leftovers(&dir, instance);
        }
    }

    fn list_exports(&self, node: &str) -> Result<Vec<String>, NodeError> {
        Ok(store::list_exports(&self.export_dir(node)?)?)
    }

    fn export_listing(&self, node: &str, instance: &str) -> NodeListing {
        match self.node(node) {
            Ok(n) => cleanup::listing(node, &self.cluster.export_dir(n), instance, n.offline),
            Err(e) => NodeListing {
                node: node.to_string(),
                export_dir: PathBuf::new(),
                dir_id: None,
                export_id: None,
                mark: None,
                exports: Err(e.to_string()),
                leftovers: false,
            },
        }
    }

    fn remove_export(&self, node: &str, instance: &str, keep: &Keep) -> Result<bool, NodeError> {
        Ok(cleanup::remove_unless(&self.export_dir(node)?, instance, keep)?)
    }
}
