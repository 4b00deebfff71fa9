//! `LUBackupExport` and `LUBackupRemove` (Ganeti's `lib/cmdlib/backup.py`) plus export listing.
//!
//! [`ExportLu`] is the export as a [`LogicalUnit`]: Ganeti's checks and messages in
//! CheckArguments / ExpandNames / CheckPrereq, the hooks environment, and an Exec that follows
//! Ganeti's matrix (reference §2.6): shut down, snapshot, restart right after the snapshots,
//! transfer (the engine writes a sparse raw dump and its manifest per disk, in up to
//! `max_parallel_disks` threads), remove each snapshot as soon as its disk is done, finalize
//! atomically, deactivate, remove the instance if asked, and remove the instance's old exports
//! on the other nodes. Its locks: the instance (exclusive), its primary node and the target
//! node (exclusive) — not every node (see `docs/ganeti-compat.md` #1) — and, for the cleanup
//! only, the nodes whose old exports are removed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diskstream_engine::buf::Pages;
use diskstream_engine::digest::Checksum;
use diskstream_engine::ops::{self, CreateOptions, Format, Report, Tuning};

use crate::cluster::{Cluster, DiskTemplate, Instance, Node};
use crate::driver::{self, InstanceDriver};
use crate::error::{Ecode, OpError};
use crate::export::cleanup;
use crate::export::config_ini::{export_config, ExportedDisk};
use crate::export::store::{self, Staging};
use crate::feedback::{self as fbk, DiskProgress, Event, Feedback};
use crate::hooks::env::{export_hook_nodes, export_lu_env, ExportHookParams, HookContext};
use crate::locking::{LockLevel, LockMode, LockOwner};
use crate::lu::{acquire, Context, HooksSpec, LogicalUnit, NeededLocks};
use crate::snapshot::{self, Capability, Snapshot};

/// Ganeti's `defaultShutdownTimeout` (seconds).
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 120;

/// Ganeti's `EXPORT_MODES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMode {
    /// To a node of this cluster.
    Local,
    /// To another cluster (not supported).
    Remote,
}

/// The fields of `OpBackupExport` (with Ganeti's defaults) plus diskstream's own knobs.
#[derive(Debug, Clone)]
pub struct ExportOp {
    /// The instance (short names are expanded).
    pub instance_name: String,
    /// If given, must be the instance's UUID.
    pub instance_uuid: Option<String>,
    /// The target node (short names are expanded).
    pub target_node: String,
    /// If given, must be the target's UUID.
    pub target_node_uuid: Option<String>,
    /// Shut the instance down for the export (`--noshutdown` clears it).
    pub shutdown: bool,
    /// Seconds to wait for a clean shutdown before killing.
    pub shutdown_timeout: u64,
    /// Remove the instance after a successful export.
    pub remove_instance: bool,
    /// Only warn if the instance's disks cannot be removed.
    pub ignore_remove_failures: bool,
    /// Allow the instance to stay down for the whole transfer when snapshots are impossible.
    pub long_sleep: bool,
    /// Transport compression tool (`none` or one of the cluster's `compression_tools`).
    pub compress: String,
    /// Local or remote.
    pub mode: ExportMode,
    /// `--zero-free-space` (refused).
    pub zero_free_space: bool,
    /// `--zeroing-timeout-fixed`.
    pub zeroing_timeout_fixed: Option<u64>,
    /// `--zeroing-timeout-per-mib`.
    pub zeroing_timeout_per_mib: Option<f64>,
    /// Disks transferred at the same time (at least 1).
    pub max_parallel_disks: usize,
    /// What the engine's buffers are made of (`--hugetlb`: reserved hugetlb pages when free).
    pub pages: Pages,
    /// The chunk digest recorded in each dump's manifest (`--checksum`; BLAKE3 by default).
    pub checksum: Checksum,
    /// How often a transfer reports progress.
    pub progress_interval: Duration,
}

impl ExportOp {
    /// An export of `instance` to `target` with Ganeti's defaults.
    pub fn new(instance: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            instance_name: instance.into(),
            instance_uuid: None,
            target_node: target.into(),
            target_node_uuid: None,
            shutdown: true,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            remove_instance: false,
            ignore_remove_failures: false,
            long_sleep: false,
            compress: "none".into(),
            mode: ExportMode::Local,
            zero_free_space: false,
            zeroing_timeout_fixed: None,
            zeroing_timeout_per_mib: None,
            max_parallel_disks: 1,
            pages: Pages::Thp,
            checksum: Checksum::default(),
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// One disk's transfer.
#[derive(Debug, Clone)]
pub struct DiskResult {
    /// Disk index.
    pub index: usize,
    /// `disk/I` or `snapshot/I`.
    pub label: String,
    /// Whether a snapshot was transferred.
    pub snapshot: bool,
    /// The dump file name (a fresh UUID).
    pub dump: String,
    /// The engine's report, or the error.
    pub report: Result<Report, String>,
}

/// What an export did: Ganeti's `(fin_resu, dresults)` plus where and what was written.
#[derive(Debug, Clone)]
pub struct ExportResult {
    /// Whether finalization succeeded.
    pub fin_resu: bool,
    /// One success flag per disk.
    pub dresults: Vec<bool>,
    /// The instance name.
    pub instance: String,
    /// The target node name.
    pub target_node: String,
    /// The export directory (final).
    pub export_dir: PathBuf,
    /// Per disk.
    pub disks: Vec<DiskResult>,
    /// Whether the instance was removed.
    pub instance_removed: bool,
    /// Nodes whose old export was removed.
    pub removed_old: Vec<String>,
    /// Nodes whose export directory is the target's (shared), left alone.
    pub shared_nodes: Vec<String>,
}

/// What CheckPrereq established; only [`ExportLu::check_prereq`] can make one.
#[derive(Debug)]
pub struct ExportPrereq {
    instance: Instance,
    target: Node,
    hook_params: ExportHookParams,
}

/// `LUBackupExport`.
#[derive(Debug)]
pub struct ExportLu {
    op: ExportOp,
    instance: String,
    target: String,
    config_changed: bool,
}

impl ExportLu {
    /// The LU for `op`.
    pub fn new(op: ExportOp) -> Self {
        Self {
            op,
            instance: String::new(),
            target: String::new(),
            config_changed: false,
        }
    }
}

fn inval(msg: impl Into<String>) -> OpError {
    OpError::prereq(Ecode::Inval, msg)
}

impl LogicalUnit for ExportLu {
    type Prereq = ExportPrereq;
    type Output = ExportResult;

    fn check_arguments(&mut self, _ctx: &Context<'_>) -> Result<(), OpError> {
        let op = &self.op;
        if op.mode == ExportMode::Remote {
            return Err(inval(
                "Remote (inter-cluster) exports are not supported by diskstream; export to a \
                 node of this cluster (mode local)",
            ));
        }
        if op.zero_free_space && !op.shutdown {
            return Err(inval("Unless the instance is shut down, zeroing cannot be used."));
        }
        if op.zero_free_space {
            return Err(inval(
                "Zeroing free space (--zero-free-space) is not supported by diskstream: it needs a \
                 helper VM; sparse dumps already skip unallocated space",
            ));
        }
        if op.max_parallel_disks == 0 {
            return Err(inval("--max-parallel-disks must be at least 1"));
        }
        Ok(())
    }

    fn expand_names(&mut self, ctx: &Context<'_>) -> Result<NeededLocks, OpError> {
        let inst = ctx
            .cluster
            .expand_instance(&self.op.instance_name, self.op.instance_uuid.as_deref())?;
        self.instance = inst.name.clone();
        let target = ctx
            .cluster
            .expand_node(&self.op.target_node, self.op.target_node_uuid.as_deref())?;
        self.target = target.name.clone();
        let mut needed = NeededLocks::default();
        needed.set(LockLevel::Instance, vec![self.instance.clone()], LockMode::Exclusive);
        Ok(needed)
    }

    fn declare_locks(&mut self, ctx: &Context<'_>, level: LockLevel, needed: &mut NeededLocks, owner: &LockOwner) {
        // Ganeti's _LockInstancesNodes: the nodes of the instances we own, plus the target.
        if level == LockLevel::Node {
            let mut nodes: Vec<String> = owner
                .owned(LockLevel::Instance)
                .iter()
                .filter_map(|i| ctx.cluster.instance(i))
                .map(|i| i.primary_node.clone())
                .collect();
            nodes.push(self.target.clone());
            needed.set(level, nodes, LockMode::Exclusive);
        }
    }

    fn check_prereq(&mut self, ctx: &Context<'_>, _owner: &LockOwner) -> Result<ExportPrereq, OpError> {
        let c = ctx.cluster;
        let inst = c
            .instance(&self.instance)
            .ok_or_else(|| OpError::not_known("Instance", &self.instance))?
            .clone();
        let primary = c.node(&inst.primary_node).expect("validated primary");
        check_node_online(primary)?;
        if self.op.remove_instance && inst.admin_state == crate::cluster::AdminState::Up && !self.op.shutdown {
            return Err(OpError::prereq(
                Ecode::State,
                "Can not remove instance without shutting it down before",
            ));
        }
        let target = c.node(&self.target).expect("expanded").clone();
        check_node_online(&target)?;
        if target.drained {
            return Err(OpError::prereq(
                Ecode::State,
                format!("Can't use drained node {}", target.name),
            ));
        }
        if self.op.zeroing_timeout_fixed.is_some() || self.op.zeroing_timeout_per_mib.is_some() {
            return Err(inval(
                "Zeroing timeout options can only be used only with the --zero-free-space option",
            ));
        }
        if self.op.long_sleep && !self.op.shutdown {
            return Err(inval(
                "The long sleep option only makes sense when the instance can be shut down.",
            ));
        }
        let tools = &c.info().compression_tools;
        if self.op.compress != "none" && !tools.contains(&self.op.compress) {
            return Err(inval(format!(
                "Compression tool not allowed, tools allowed are [{}]",
                tools.join(", ")
            )));
        }
        check_disk_sizes(c, &inst)?;
        Ok(ExportPrereq {
            hook_params: ExportHookParams {
                mode: "local".into(),
                target_node: target.name.clone(),
                shutdown: self.op.shutdown,
                shutdown_timeout: self.op.shutdown_timeout,
                remove_instance: self.op.remove_instance,
            },
            instance: inst,
            target,
        })
    }

    fn hooks(&self, ctx: &Context<'_>, p: &ExportPrereq) -> Option<HooksSpec> {
        let nodes = export_hook_nodes(ctx.cluster, &p.instance, Some(&p.target))
            .into_iter()
            .map(|n| n.name.clone())
            .collect();
        Some(HooksSpec {
            context: HookContext::instance_export(ctx.cluster),
            nodes,
            env: export_lu_env(&p.instance, &p.hook_params),
        })
    }

    fn exec(&mut self, ctx: &Context<'_>, p: ExportPrereq, owner: &mut LockOwner) -> Result<ExportResult, OpError> {
        let r = Exec {
            ctx,
            op: &self.op,
            inst: &p.instance,
            target: &p.target,
            started: AtomicBool::new(false),
        }
        .run(owner)?;
        self.config_changed = r.instance_removed;
        Ok(r)
    }

    fn config_changed(&self) -> bool {
        self.config_changed
    }
}

/// The size of a backing file or block device (a block device's size is where its end is).
fn backing_size(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(path)?.seek(SeekFrom::End(0))
}

/// Every disk's backing file or device must have exactly the declared size: a dump of another
/// size would not match `diskN_size` in `config.ini` (an import would make a disk of the
/// declared size and the dump would not fit, or leave its end unwritten). A mismatch is almost
/// always a config error (a wrong `size`, or the wrong `path`), so it is refused before anything
/// is changed. A missing backing file is left to the disk activation, which names it.
fn check_disk_sizes(c: &Cluster, inst: &Instance) -> Result<(), OpError> {
    for (i, d) in inst.disks.iter().enumerate() {
        let path = c.disk_path(d);
        let declared = d.size << 20;
        let actual = match backing_size(&path) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(OpError::prereq(
                    Ecode::Environ,
                    format!(
                        "Cannot check the size of disk/{i} of instance {} ({}): {e}",
                        inst.name,
                        path.display()
                    ),
                ))
            }
        };
        if actual != declared {
            let mib = |b: u64| {
                if b % (1 << 20) == 0 {
                    format!("{} MiB", b >> 20)
                } else {
                    format!("{:.2} MiB", b as f64 / 1048576.0)
                }
            };
            return Err(OpError::prereq(
                Ecode::State,
                format!(
                    "Disk disk/{i} of instance {}: its backing {} {} is {} ({actual} bytes), but the \
                     cluster config declares size = {} ({} MiB, {declared} bytes); refusing to export a \
                     disk whose size does not match its declaration (fix `size` or `path` in the \
                     cluster config)",
                    inst.name,
                    if d.template == DiskTemplate::File {
                        "file"
                    } else {
                        "device"
                    },
                    path.display(),
                    mib(actual),
                    d.size,
                    d.size,
                ),
            ));
        }
    }
    Ok(())
}

fn check_node_online(node: &Node) -> Result<(), OpError> {
    if node.offline {
        Err(OpError::prereq(
            Ecode::State,
            format!("Can't use offline node: {}", node.name),
        ))
    } else {
        Ok(())
    }
}

/// The snapshots of one export; each is removed (with Ganeti's message) as soon as its disk
/// is done, and whatever is left when this is dropped (Ganeti's `Cleanup()`).
struct SnapSet<'a> {
    snaps: Mutex<Vec<Option<Snapshot>>>,
    node: String,
    fb: &'a dyn Feedback,
}

impl SnapSet<'_> {
    fn remove(&self, index: usize) {
        let taken = self
            .snaps
            .lock()
            .expect("snapshots")
            .get_mut(index)
            .and_then(Option::take);
        if let Some(mut s) = taken {
            self.fb.info(fbk::removing_snapshot(index, &self.node));
            if let Err(e) = s.remove() {
                self.fb.warning(fbk::could_not_remove_snapshot(index, &self.node, &e));
            }
        }
    }

    fn path(&self, index: usize) -> Option<PathBuf> {
        self.snaps
            .lock()
            .expect("snapshots")
            .get(index)?
            .as_ref()
            .map(Snapshot::path)
    }

    fn remove_all(&self) {
        let n = self.snaps.lock().expect("snapshots").len();
        for i in 0..n {
            self.remove(i);
        }
    }
}

impl Drop for SnapSet<'_> {
    fn drop(&mut self) {
        self.remove_all();
    }
}

struct Exec<'a> {
    ctx: &'a Context<'a>,
    op: &'a ExportOp,
    inst: &'a Instance,
    target: &'a Node,
    /// Whether this export started the instance (Ganeti's restart after the snapshots or the
    /// transfer).
    started: AtomicBool,
}

/// What the transfer part produced.
struct Transfer {
    fin_resu: bool,
    disks: Vec<DiskResult>,
    export_dir: PathBuf,
}

impl Exec<'_> {
    fn fb(&self) -> &dyn Feedback {
        self.ctx.feedback
    }

    fn primary(&self) -> &Node {
        self.ctx.cluster.node(&self.inst.primary_node).expect("validated")
    }

    fn run(&self, owner: &mut LockOwner) -> Result<ExportResult, OpError> {
        let c = self.ctx.cluster;
        let inst = self.inst;
        let up = inst.admin_state == crate::cluster::AdminState::Up;
        let src = self.primary().name.clone();

        // Leftovers of interrupted runs; safe because we hold the instance lock exclusively.
        for s in snapshot::sweep_stale(c, inst) {
            let by = s.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            match s.error {
                None => self.fb().warning(format!(
                    "Removed stale snapshot {} of disk/{} left by an interrupted export{by}",
                    s.name, s.index
                )),
                Some(e) => self.fb().warning(format!(
                    "Could not remove stale snapshot {} of disk/{}: {e}",
                    s.name, s.index
                )),
            }
        }
        store::sweep_leftovers(&c.export_dir(self.target), &inst.name);

        let drv = driver::driver_for(c, inst);
        let was_running = drv.is_running().unwrap_or(false);
        if self.interrupted() {
            return Err(OpError::interrupted(format!(
                "stopped before instance {} was shut down; nothing was changed",
                inst.name
            )));
        }
        if self.op.shutdown {
            self.fb().info(fbk::shutting_down(&inst.name));
            let stopped = drv.stop_cancellable(Duration::from_secs(self.op.shutdown_timeout), &self.ctx.stop);
            if self.interrupted() {
                return Err(self.interrupted_error(drv.as_ref(), was_running, "during the shutdown of the instance"));
            }
            stopped
                .map_err(|e| OpError::exec(format!("Could not shutdown instance {} on node {src}: {e}", inst.name)))?;
        }
        let activate = !up;
        if activate {
            self.fb().info(fbk::activating_disks(&inst.name));
            for d in &inst.disks {
                let p = c.disk_path(d);
                if !driver::disk_present(&p) {
                    return Err(OpError::exec(format!(
                        "Cannot activate block devices: {} does not exist",
                        p.display()
                    )));
                }
            }
        }
        let result = self.snapshot_and_transfer(drv.as_ref(), up, was_running);
        if activate {
            self.fb().info(fbk::deactivating_disks(&inst.name));
        }
        let t = result?;
        if self.interrupted() {
            let what = if t.fin_resu {
                format!(
                    "after the new export was finalized (it is complete in {}); the instance was \
                     not removed and old exports on other nodes were not removed",
                    t.export_dir.display()
                )
            } else {
                "during the export: the new export was abandoned (its staging directory and \
                 snapshots were removed; a previous export is untouched)"
                    .to_string()
            };
            return Err(self.interrupted_error(drv.as_ref(), was_running, &what));
        }
        let dresults: Vec<bool> = t.disks.iter().map(|d| d.report.is_ok()).collect();
        if let Some(msg) = fbk::export_failed(t.fin_resu, &dresults) {
            return Err(OpError::exec(msg));
        }
        let mut res = ExportResult {
            fin_resu: t.fin_resu,
            dresults,
            instance: inst.name.clone(),
            target_node: self.target.name.clone(),
            export_dir: t.export_dir,
            disks: t.disks,
            instance_removed: false,
            removed_old: Vec::new(),
            shared_nodes: Vec::new(),
        };
        if self.interrupted() {
            return Err(self.interrupted_error(
                drv.as_ref(),
                was_running,
                &format!(
                    "after the new export was finalized (it is complete in {}); the instance was not \
                     removed and old exports on other nodes were not removed",
                    res.export_dir.display()
                ),
            ));
        }
        if self.op.remove_instance {
            self.fb().info(fbk::removing_instance(&inst.name));
            self.remove_instance()?;
            res.instance_removed = true;
        }
        self.cleanup_exports(owner, &mut res)?;
        Ok(res)
    }

    fn snapshot_and_transfer(
        &self,
        drv: &dyn InstanceDriver,
        up: bool,
        was_running: bool,
    ) -> Result<Transfer, OpError> {
        let inst = self.inst;
        let try_snapshot = !self.op.remove_instance && up;
        let do_reboot = self.op.shutdown && up && !self.op.remove_instance;
        let snaps = SnapSet {
            snaps: Mutex::new(Vec::new()),
            node: self.primary().name.clone(),
            fb: self.fb(),
        };
        let mut have_snapshots = false;
        if try_snapshot {
            have_snapshots = self.create_snapshots(&snaps);
            if self.interrupted() {
                snaps.remove_all();
                return Err(self.interrupted_error(drv, was_running, "while the disks were snapshotted"));
            }
            if !have_snapshots {
                if !self.op.shutdown {
                    return Err(OpError::exec(
                        "Not all disks could be snapshotted, and you requested a live export; aborting",
                    ));
                }
                if !self.op.long_sleep {
                    if was_running {
                        // Ganeti leaves the instance stopped here; we restore what the user had.
                        self.fb().info(fbk::starting_instance(&inst.name));
                        if let Err(e) = drv.start() {
                            self.fb()
                                .warning(format!("Could not start instance {}: {e}", inst.name));
                        }
                    }
                    return Err(OpError::exec(
                        "Not all disks could be snapshotted, and you did not allow the instance to \
                         remain offline for a longer time through the --long-sleep option; aborting",
                    ));
                }
            }
        }
        if do_reboot && have_snapshots {
            self.start_instance(drv)?;
        }
        let t = self.local_export(&snaps, have_snapshots);
        // Interrupted, the instance is left as the user had it: started only if it was running.
        if do_reboot && !have_snapshots && (was_running || !self.interrupted()) {
            self.start_instance(drv)?;
        }
        snaps.remove_all();
        t
    }

    fn interrupted(&self) -> bool {
        self.ctx.interrupted()
    }

    /// The error of an export stopped by SIGINT/SIGTERM `when`. First the instance is put back
    /// as the user had it: started again if it was running before this export and is not now,
    /// stopped again if it was not running and this export started it (Ganeti's restart after
    /// the snapshots); then the message says in which state it is.
    fn interrupted_error(&self, drv: &dyn InstanceDriver, was_running: bool, when: &str) -> OpError {
        let name = &self.inst.name;
        let running = drv.is_running().unwrap_or(false);
        if was_running && !running {
            self.fb().info(fbk::starting_instance(name));
            if let Err(e) = drv.start() {
                self.fb().warning(format!("Could not start instance {name}: {e}"));
            }
        } else if !was_running && running && self.started.load(Ordering::SeqCst) {
            self.fb().info(fbk::shutting_down(name));
            // The stop flag is set: a process instance is stopped at once.
            if let Err(e) = drv.stop_cancellable(Duration::from_secs(self.op.shutdown_timeout), &self.ctx.stop) {
                self.fb().warning(format!("Could not shutdown instance {name}: {e}"));
            }
        }
        let state = match (was_running, drv.is_running()) {
            (true, Ok(true)) => format!("instance {name} is running, as before"),
            (false, Ok(false)) => format!("instance {name} is stopped, as before"),
            (true, _) => format!("instance {name} was running and could NOT be started again"),
            (false, _) => format!("instance {name} was not running before and now runs"),
        };
        OpError::interrupted(format!("export of {name} stopped {when}; {state}"))
    }

    fn start_instance(&self, drv: &dyn InstanceDriver) -> Result<(), OpError> {
        self.fb().info(fbk::starting_instance(&self.inst.name));
        self.started.store(true, Ordering::SeqCst);
        drv.start()
            .map_err(|e| OpError::exec(format!("Could not start instance: {e}")))
    }

    /// Ganeti's `CreateSnapshots`: all disks or none.
    fn create_snapshots(&self, snaps: &SnapSet<'_>) -> bool {
        let c = self.ctx.cluster;
        let inst = self.inst;
        for (i, d) in inst.disks.iter().enumerate() {
            if let Capability::NotCapable(why) = snapshot::capability(d, &c.disk_path(d)) {
                self.fb().info(format!("disk/{i} cannot be snapshotted: {why}"));
                return false;
            }
        }
        let mut ok = true;
        for (i, d) in inst.disks.iter().enumerate() {
            self.fb().info(fbk::creating_snapshot(i, &snaps.node));
            match snapshot::create(i, d, &c.disk_path(d), &inst.name) {
                Ok(s) => snaps.snaps.lock().expect("snapshots").push(Some(s)),
                Err(e) => {
                    self.fb().warning(fbk::could_not_snapshot(i, &snaps.node, &e));
                    snaps.snaps.lock().expect("snapshots").push(None);
                    ok = false;
                }
            }
        }
        if !ok {
            snaps.remove_all();
        }
        ok
    }

    /// Ganeti's `LocalExport`: transfer every disk into the staging directory, then finalize.
    fn local_export(&self, snaps: &SnapSet<'_>, have_snapshots: bool) -> Result<Transfer, OpError> {
        let c = self.ctx.cluster;
        let inst = self.inst;
        let src = self.primary().name.clone();
        let dst = self.target.name.clone();
        let export_dir = c.export_dir(self.target);
        let final_dir = export_dir.join(&inst.name);
        let staging = match Staging::begin(&export_dir, &inst.name) {
            Ok(s) => s,
            Err(e) => {
                self.fb()
                    .warning(format!("Could not prepare the export directory on node {dst}: {e}"));
                self.fb().warning(fbk::some_disk_exports_failed(&inst.name, &dst));
                let disks = (0..inst.disks.len())
                    .map(|i| DiskResult {
                        index: i,
                        label: fbk::disk_label(i, have_snapshots),
                        snapshot: have_snapshots,
                        dump: String::new(),
                        report: Err(e.to_string()),
                    })
                    .collect();
                return Ok(Transfer {
                    fin_resu: false,
                    disks,
                    export_dir: final_dir,
                });
            }
        };
        let mut items = Vec::new();
        for (i, d) in inst.disks.iter().enumerate() {
            let source = if have_snapshots {
                snaps.path(i).unwrap_or_else(|| c.disk_path(d))
            } else {
                c.disk_path(d)
            };
            let dump = crate::fsutil::new_uuid().map_err(|e| OpError::exec(format!("cannot make a UUID: {e}")))?;
            let total = diskstream_engine::source::Disk::open(&source)
                .map(|s| s.size())
                .unwrap_or(d.size << 20);
            items.push(Item {
                index: i,
                label: fbk::disk_label(i, have_snapshots),
                source,
                out: staging.dir().join(&dump),
                dump,
                total,
            });
        }
        let disks = self.transfer(&items, snaps, &src, &dst);
        if disks.iter().all(|d| d.report.is_ok()) && !self.interrupted() {
            self.fb().info(fbk::finalizing_export(&dst));
            let exported: Vec<ExportedDisk> = inst
                .disks
                .iter()
                .zip(&disks)
                .enumerate()
                .map(|(i, (d, r))| ExportedDisk {
                    iv_name: d.iv_name.clone().unwrap_or_else(|| format!("disk/{i}")),
                    dump: r.dump.clone(),
                    size_mib: d.size,
                    name: if have_snapshots { None } else { d.name.clone() },
                    template: d.template,
                })
                .collect();
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let ini = export_config(c, inst, &exported, ts).to_ganeti_string();
            match staging.finalize(&ini) {
                Ok(dir) => Ok(Transfer {
                    fin_resu: true,
                    disks,
                    export_dir: dir,
                }),
                Err(e) => {
                    self.fb()
                        .warning(fbk::could_not_finalize(&inst.name, &dst, &e.to_string()));
                    Ok(Transfer {
                        fin_resu: false,
                        disks,
                        export_dir: final_dir,
                    })
                }
            }
        } else {
            // Unlike Ganeti, the partial export is removed (the staging guard drops here).
            if !self.interrupted() {
                self.fb().warning(fbk::some_disk_exports_failed(&inst.name, &dst));
            }
            drop(staging);
            Ok(Transfer {
                fin_resu: false,
                disks,
                export_dir: final_dir,
            })
        }
    }

    /// Runs the engine on every item, `max_parallel_disks` at a time, reporting progress and
    /// removing each disk's snapshot as soon as it is done.
    fn transfer(&self, items: &[Item], snaps: &SnapSet<'_>, src: &str, dst: &str) -> Vec<DiskResult> {
        let fb = self.fb();
        let n = items.len();
        let progress: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let started: Vec<Mutex<Option<Instant>>> = (0..n).map(|_| Mutex::new(None)).collect();
        let finished: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
        let results: Vec<Mutex<Option<Result<Report, String>>>> = (0..n).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let all_done = AtomicBool::new(false);
        let options = CreateOptions {
            format: Format::Raw,
            force: true,
            checksum: self.op.checksum,
            tuning: Tuning {
                pages: self.op.pages,
                stop: Some(Arc::clone(&self.ctx.stop)),
                ..Tuning::default()
            },
            ..CreateOptions::default()
        };
        let workers = self.op.max_parallel_disks.min(n).max(1);
        thread::scope(|s| {
            let reporter = s.spawn(|| {
                let mut last = Instant::now();
                while !all_done.load(Ordering::Acquire) {
                    // Parked, not slept: the end of the transfer unparks it at once.
                    thread::park_timeout(Duration::from_millis(50));
                    if last.elapsed() < self.op.progress_interval {
                        continue;
                    }
                    last = Instant::now();
                    for (i, it) in items.iter().enumerate() {
                        let t0 = *started[i].lock().expect("started");
                        if let (Some(t0), false) = (t0, finished[i].load(Ordering::Acquire)) {
                            let done = progress[i].load(Ordering::Relaxed);
                            fb.emit(Event::Progress(DiskProgress::new(
                                i,
                                &it.label,
                                done,
                                it.total,
                                t0.elapsed().as_secs_f64(),
                            )));
                        }
                    }
                }
            });
            let mut handles = Vec::new();
            for _ in 0..workers {
                handles.push(s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || self.interrupted() {
                        break;
                    }
                    let it = &items[i];
                    fb.info(fbk::exporting(&it.label, src, dst));
                    fb.info(fbk::sending_data(&it.label, src));
                    fb.info(fbk::receiving_data(&it.label, dst));
                    *started[i].lock().expect("started") = Some(Instant::now());
                    let t0 = Instant::now();
                    let r = ops::create(&it.source, &it.out, &options, &progress[i]).map_err(|e| e.to_string());
                    finished[i].store(true, Ordering::Release);
                    match &r {
                        Ok(rep) => {
                            fb.emit(Event::Progress(DiskProgress::new(
                                i,
                                &it.label,
                                rep.disk_size,
                                rep.disk_size,
                                t0.elapsed().as_secs_f64(),
                            )));
                            fb.info(fbk::finished_sending(&it.label));
                            fb.info(fbk::finished_receiving(&it.label));
                        }
                        Err(e) => {
                            fb.warning(fbk::failed_to_send(&it.label, e, ""));
                            fb.warning(fbk::failed_to_receive(&it.label, e, ""));
                        }
                    }
                    snaps.remove(i);
                    *results[i].lock().expect("results") = Some(r);
                }));
            }
            for h in handles {
                let _ = h.join();
            }
            all_done.store(true, Ordering::Release);
            reporter.thread().unpark();
            let _ = reporter.join();
        });
        items
            .iter()
            .zip(results)
            .map(|(it, r)| DiskResult {
                index: it.index,
                label: it.label.clone(),
                snapshot: it.label.starts_with("snapshot/"),
                dump: it.dump.clone(),
                report: r
                    .into_inner()
                    .expect("results")
                    .unwrap_or_else(|| Err("transfer did not run".into())),
            })
            .collect()
    }

    /// Ganeti's `RemoveInstance`: the disks, then the instance's entry in the config.
    fn remove_instance(&self) -> Result<(), OpError> {
        let c = self.ctx.cluster;
        let mut failed = Vec::new();
        for (i, d) in self.inst.disks.iter().enumerate() {
            let p = c.disk_path(d);
            let r = match d.template {
                DiskTemplate::File => std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display())),
                DiskTemplate::Plain => std::process::Command::new("lvremove")
                    .arg("-f")
                    .arg(&p)
                    .status()
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        if s.success() {
                            Ok(())
                        } else {
                            Err(format!("lvremove {}: {s}", p.display()))
                        }
                    }),
                // Ganeti never deletes an adopted block device.
                DiskTemplate::Blockdev => Ok(()),
            };
            if let Err(e) = r {
                failed.push(format!("disk/{i}: {e}"));
            }
        }
        if !failed.is_empty() {
            if self.op.ignore_remove_failures {
                self.fb()
                    .warning(format!("can't remove instance's disks: {}", failed.join("; ")));
            } else {
                return Err(OpError::exec(format!(
                    "Can't remove instance's disks: {}",
                    failed.join("; ")
                )));
            }
        }
        crate::cluster::Cluster::remove_instance(c.path(), &self.inst.name)?;
        if let Some((pid_file, _)) = driver::process_paths(c, self.inst) {
            let _ = std::fs::remove_file(pid_file);
        }
        Ok(())
    }

    /// Ganeti's `_CleanupExports`, with #1186 fixed and only the affected nodes locked.
    fn cleanup_exports(&self, owner: &mut LockOwner, res: &mut ExportResult) -> Result<(), OpError> {
        let c = self.ctx.cluster;
        let others: Vec<&Node> = c.nodes().iter().filter(|n| n.name != self.target.name).collect();
        if others.is_empty() {
            return Ok(());
        }
        self.fb().info(fbk::removing_old_exports(&self.inst.name));
        let name = &self.inst.name;
        let listings: Vec<cleanup::NodeListing> = others
            .iter()
            .map(|n| cleanup::listing(&n.name, &c.export_dir(n), name, n.offline))
            .collect();
        let target_dir_id = store::identity(&c.export_dir(self.target));
        let new_id = store::identity(&res.export_dir);
        let plan = cleanup::plan(name, &listings, target_dir_id, new_id);
        res.shared_nodes = plan.shared.clone();
        // The primary and target are done with; lock exactly the nodes we remove from.
        owner.release(LockLevel::Node);
        let nodes = plan.nodes();
        if nodes.is_empty() {
            return Ok(());
        }
        acquire(self.ctx, owner, LockLevel::Node, &nodes, LockMode::Exclusive)?;
        for r in &plan.removals {
            match cleanup::apply_one(r, name, new_id) {
                Ok(true) => res.removed_old.push(r.node.clone()),
                Ok(false) => {}
                Err(e) => self.fb().warning(fbk::could_not_remove_older_export(name, &r.node, &e)),
            }
            store::sweep_leftovers(&r.export_dir, name);
        }
        for r in &plan.sweeps {
            store::sweep_leftovers(&r.export_dir, name);
        }
        owner.release(LockLevel::Node);
        Ok(())
    }
}

struct Item {
    index: usize,
    label: String,
    source: PathBuf,
    out: PathBuf,
    dump: String,
    total: u64,
}

/// `LUBackupRemove`: removes an instance's exports on every node that has one.
#[derive(Debug)]
pub struct RemoveLu {
    name: String,
    expanded: bool,
    nodes: Vec<String>,
}

/// What `remove` did.
#[derive(Debug, Clone, Default)]
pub struct RemoveResult {
    /// Nodes whose export was removed.
    pub removed: Vec<String>,
}

impl RemoveLu {
    /// The LU removing the exports of `instance` (an instance name, or the FQDN of a deleted
    /// instance).
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            name: instance.into(),
            expanded: false,
            nodes: Vec::new(),
        }
    }
}

/// Proof that `RemoveLu`'s prerequisites were checked.
#[derive(Debug)]
pub struct RemovePrereq(());

impl LogicalUnit for RemoveLu {
    type Prereq = RemovePrereq;
    type Output = RemoveResult;

    fn check_arguments(&mut self, _ctx: &Context<'_>) -> Result<(), OpError> {
        Ok(())
    }

    fn expand_names(&mut self, ctx: &Context<'_>) -> Result<NeededLocks, OpError> {
        if let Ok(inst) = ctx.cluster.expand_instance(&self.name, None) {
            self.name = inst.name.clone();
            self.expanded = true;
        }
        Ok(NeededLocks::default())
    }

    fn declare_locks(&mut self, ctx: &Context<'_>, level: LockLevel, needed: &mut NeededLocks, _owner: &LockOwner) {
        // Ganeti locks every node; the nodes that hold an export of this name are enough.
        if level == LockLevel::Node {
            let c = ctx.cluster;
            self.nodes = c
                .nodes()
                .iter()
                .filter(|n| !n.offline)
                .filter(|n| store::list_exports(&c.export_dir(n)).is_ok_and(|l| l.contains(&self.name)))
                .map(|n| n.name.clone())
                .collect();
            needed.set(level, self.nodes.clone(), LockMode::Exclusive);
        }
    }

    fn check_prereq(&mut self, _ctx: &Context<'_>, _owner: &LockOwner) -> Result<RemovePrereq, OpError> {
        Ok(RemovePrereq(()))
    }

    fn exec(&mut self, ctx: &Context<'_>, _p: RemovePrereq, _owner: &mut LockOwner) -> Result<RemoveResult, OpError> {
        let c = ctx.cluster;
        let mut res = RemoveResult::default();
        for (k, name) in self.nodes.iter().enumerate() {
            if ctx.interrupted() {
                return Err(OpError::interrupted(format!(
                    "removal of the exports of {} stopped: removed from [{}], not removed from [{}] \
                     (every export is either complete or gone)",
                    self.name,
                    res.removed.join(", "),
                    self.nodes[k..].join(", ")
                )));
            }
            let node = c.node(name).expect("listed node");
            let dir = c.export_dir(node);
            match store::list_exports(&dir) {
                Err(e) => ctx
                    .feedback
                    .warning(format!("Failed to query node {name} (continuing): {e}")),
                Ok(list) if list.contains(&self.name) => match store::remove_export(&dir, &self.name) {
                    Ok(()) => res.removed.push(name.clone()),
                    Err(e) => ctx.feedback.warning(format!(
                        "Could not remove export for instance {} on node {name}: {e}",
                        self.name
                    )),
                },
                Ok(_) => {}
            }
            store::sweep_leftovers(&dir, &self.name);
        }
        if res.removed.is_empty() && !self.expanded {
            ctx.feedback.info(fbk::EXPORT_NOT_FOUND_HINT);
        }
        Ok(res)
    }
}

/// One node's exports for `list`, or why they could not be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeExports {
    /// Node name.
    pub node: String,
    /// Its exports (sorted), or the error.
    pub exports: Result<Vec<String>, String>,
}

/// The export query (`gnt-backup list`): every node (or those in `nodes`), sorted by name;
/// lockless and live, as in Ganeti. An offline node reports an error.
pub fn list(cluster: &Cluster, nodes: &[String]) -> Result<Vec<NodeExports>, OpError> {
    let mut selected: Vec<&Node> = Vec::new();
    if nodes.is_empty() {
        selected.extend(cluster.nodes());
    } else {
        for n in nodes {
            let node = cluster.expand_node(n, None)?;
            if !selected.iter().any(|s| s.name == node.name) {
                selected.push(node);
            }
        }
    }
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(selected
        .into_iter()
        .map(|n| NodeExports {
            node: n.name.clone(),
            exports: if n.offline {
                Err("node is offline".into())
            } else {
                store::list_exports(&cluster.export_dir(n))
            },
        })
        .collect())
}

/// Ganeti's `Node Export` table (`gnt-backup list`): columns padded and separated by a space,
/// or joined by `separator` without padding; a node that could not be listed shows `?`.
pub fn format_table(rows: &[NodeExports], headers: bool, separator: Option<&str>) -> String {
    let mut table: Vec<[String; 2]> = Vec::new();
    if headers {
        table.push(["Node".into(), "Export".into()]);
    }
    for r in rows {
        match &r.exports {
            Ok(list) => table.extend(list.iter().map(|e| [r.node.clone(), e.clone()])),
            Err(_) => table.push([r.node.clone(), "?".into()]),
        }
    }
    let width = table.iter().map(|row| row[0].len()).max().unwrap_or(0);
    let mut out = String::new();
    for [node, export] in table {
        match separator {
            Some(sep) => out.push_str(&format!("{node}{sep}{export}\n")),
            None => out.push_str(&format!("{node:<width$} {export}\n")),
        }
    }
    out
}

/// How [`run_on_cluster`] runs an LU.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after the pre hooks.
    pub dry_run: bool,
    /// The longest wait for any one level of locks.
    pub lock_timeout: Duration,
    /// Describes the operation to lock waiters.
    pub command: String,
    /// Set by SIGINT/SIGTERM: lock waits, hooks, the shutdown wait and transfers stop, and
    /// what was started is undone.
    pub stop: Arc<AtomicBool>,
    /// The per-script hook timeout (default: the cluster's `hooks_timeout`, else 15 minutes).
    pub hooks_timeout: Option<Duration>,
}

impl RunOptions {
    /// Options for `command`: no dry run, an hour's lock timeout, a stop flag nobody sets.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            dry_run: false,
            lock_timeout: Duration::from_secs(3600),
            command: command.into(),
            stop: Arc::default(),
            hooks_timeout: None,
        }
    }
}

/// Runs an LU against the cluster config at `cluster_path`: loads it, opens its lock
/// directory, and runs `lu` with Ganeti's order.
pub fn run_on_cluster<L: LogicalUnit>(
    cluster_path: &std::path::Path,
    lu: &mut L,
    feedback: &dyn Feedback,
    opts: &RunOptions,
) -> Result<Option<L::Output>, OpError> {
    let cluster = Cluster::load(cluster_path)?;
    let locks = crate::locking::LockManager::new(cluster.lock_dir())?.with_stop(Arc::clone(&opts.stop));
    let hooks = crate::hooks::HooksRunner::new(opts.hooks_timeout.unwrap_or_else(|| cluster.hooks_timeout()))
        .with_report_interval(cluster.hooks_report_interval())
        .with_stop(Arc::clone(&opts.stop));
    let ctx = Context {
        cluster: &cluster,
        locks: &locks,
        hooks: &hooks,
        feedback,
        lock_timeout: opts.lock_timeout,
        dry_run: opts.dry_run,
        command: opts.command.clone(),
        stop: Arc::clone(&opts.stop),
    };
    crate::lu::run(lu, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ganetis() {
        let rows = vec![
            NodeExports {
                node: "node1.example.com".into(),
                exports: Ok(vec!["inst1.example.com".into()]),
            },
            NodeExports {
                node: "node2.example.com".into(),
                exports: Ok(vec!["inst2.example.com".into()]),
            },
            NodeExports {
                node: "node3.example.com".into(),
                exports: Err("No exports directory".into()),
            },
            NodeExports {
                node: "node4.example.com".into(),
                exports: Ok(vec![]),
            },
        ];
        assert_eq!(
            format_table(&rows, true, None),
            "Node              Export\n\
             node1.example.com inst1.example.com\n\
             node2.example.com inst2.example.com\n\
             node3.example.com ?\n"
        );
        assert_eq!(
            format_table(&rows[..1], false, Some("|")),
            "node1.example.com|inst1.example.com\n"
        );
    }
}
