//! Ganeti's `LocalExport`: the staging export on the target (opened before the instance is
//! stopped: [`Staged`]), every disk sent into it (up to `max_parallel_disks` at a time, progress
//! reported every `progress_interval`), each snapshot removed as soon as its disk is done, then
//! finalize, or abandon the staging export.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diskstream_engine::ops::Report;

use super::AUTO_COMPRESSION;
use crate::cluster::{Instance, Node};
use crate::error::OpError;
use crate::export::config_ini::{export_config, ExportedDisk};
use crate::export::export_id::ExportId;
use crate::export::store::Finalized;
use crate::feedback::{self as fbk, DiskProgress, Event, Feedback};
use crate::node::{DiskSource, NodeOps, SendDisk, SnapshotRef, TransferError, TransferProgress};

use super::exec::Exec;
use super::{DiskResult, ExportResult};

/// The snapshots of one export; each is removed (with Ganeti's message) as soon as its disk
/// is done, and whatever is left when this is dropped (Ganeti's `Cleanup()`).
pub(super) struct SnapSet<'a> {
    snaps: Mutex<Vec<Option<SnapshotRef>>>,
    nodes: &'a dyn NodeOps,
    node: &'a str,
    fb: &'a dyn Feedback,
}

impl<'a> SnapSet<'a> {
    /// No snapshots yet of `disks` disks on `node`.
    pub(super) fn new(nodes: &'a dyn NodeOps, node: &'a str, fb: &'a dyn Feedback, disks: usize) -> Self {
        Self {
            snaps: Mutex::new(vec![None; disks]),
            nodes,
            node,
            fb,
        }
    }

    /// Records the snapshot of disk `index`.
    pub(super) fn set(&self, index: usize, s: SnapshotRef) {
        if let Some(slot) = self.snaps.lock().expect("snapshots").get_mut(index) {
            *slot = Some(s);
        }
    }

    fn get(&self, index: usize) -> Option<SnapshotRef> {
        self.snaps.lock().expect("snapshots").get(index).cloned().flatten()
    }

    /// Removes the snapshot of disk `index`, if there is one.
    pub(super) fn remove(&self, index: usize) {
        let taken = self
            .snaps
            .lock()
            .expect("snapshots")
            .get_mut(index)
            .and_then(Option::take);
        if let Some(s) = taken {
            self.fb.info(fbk::removing_snapshot(index, self.node));
            if let Err(e) = self.nodes.remove_snapshot(self.node, &s) {
                self.fb
                    .warning(fbk::could_not_remove_snapshot(index, self.node, &e.to_string()));
            }
        }
    }

    /// Removes every snapshot left.
    pub(super) fn remove_all(&self) {
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

/// What the transfer part produced.
pub(super) struct Transfer {
    pub(super) fin_resu: bool,
    pub(super) disks: Vec<DiskResult>,
    pub(super) export_dir: PathBuf,
    /// The new export's id (written into it at finalize).
    pub(super) export_id: ExportId,
    /// What went wrong after the new export was in place.
    pub(super) warnings: Vec<String>,
}

impl Transfer {
    /// Ganeti's check of `(fin_resu, dresults)`: the result, or "Export failed, errors in ..."
    /// with the failed disks' errors as its source.
    pub(super) fn into_result(self, inst: &Instance, target: &Node) -> Result<ExportResult, OpError> {
        let dresults: Vec<bool> = self.disks.iter().map(|d| d.report.is_ok()).collect();
        if let Some(msg) = fbk::export_failed(self.fin_resu, &dresults) {
            let failed: Vec<(usize, TransferError)> = self
                .disks
                .into_iter()
                .filter_map(|d| d.report.err().map(|e| (d.index, e)))
                .collect();
            let err = OpError::exec(msg);
            return Err(if failed.is_empty() {
                err
            } else {
                err.with_source(DiskFailures(failed))
            });
        }
        Ok(ExportResult {
            fin_resu: self.fin_resu,
            dresults,
            instance: inst.name.clone(),
            target_node: target.name.clone(),
            export_dir: self.export_dir,
            export_id: self.export_id,
            disks: self.disks,
            instance_removed: false,
            removed_old: Vec::new(),
            shared_nodes: Vec::new(),
            warnings: self.warnings,
        })
    }
}

/// The disks that failed to export, with their errors. Its source is the first error that
/// means damaged data, else the first error.
#[derive(Debug)]
pub struct DiskFailures(pub Vec<(usize, TransferError)>);

impl std::fmt::Display for DiskFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(i, e)| format!("disk/{i}: {e}")).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for DiskFailures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let integrity = self
            .0
            .iter()
            .find(|(_, e)| e.engine_error().is_some_and(diskstream_engine::Error::is_integrity));
        integrity.or(self.0.first()).map(|(_, e)| e as _)
    }
}

/// One disk of the transfer and what happened to it.
struct DiskJob {
    index: usize,
    label: String,
    dump: String,
    source: DiskSource,
    progress: TransferProgress,
    started: Mutex<Option<Instant>>,
    finished: AtomicBool,
    result: Mutex<Option<Result<Report, TransferError>>>,
}

/// The staging export on the target, opened before the instance is touched (with a warning if
/// the target has less room than the disks are large): a target that
/// cannot take the export (its export directory read-only, full of something else, not a
/// directory) fails the export while nothing has changed, not after the instance was stopped
/// and snapshotted. Dropped without reaching [`local_export`] (a failed shutdown, an interrupt,
/// disks that cannot be snapshotted), it is abandoned.
pub(super) struct Staged<'e, 'a> {
    x: &'e Exec<'a>,
    open: bool,
}

impl<'e, 'a> Staged<'e, 'a> {
    /// Opens the staging export of `x`'s instance on its target node.
    pub(super) fn open(x: &'e Exec<'a>) -> Result<Self, OpError> {
        let (inst, dst) = (&x.inst.name, x.target.name.as_str());
        match x.nodes().begin_export(dst, inst) {
            Ok(free) => {
                // Said before the instance is stopped: the operator may still give up.
                let disks: u64 = x.inst.disks.iter().map(|d| d.size << 20).sum();
                if let Some(free) = free.filter(|&f| f < disks) {
                    x.fb().warning(fbk::little_room(dst, free, disks));
                }
                Ok(Self { x, open: true })
            }
            Err(e) => {
                // A staging directory half made (created, not made private) goes too.
                x.nodes().abandon_export(dst, inst);
                let msg = format!(
                    "Could not prepare the export directory on node {dst}: {e}; nothing was changed \
                     (instance {inst} was not stopped or snapshotted)"
                );
                Err(OpError::exec(msg).with_source(e))
            }
        }
    }

    /// Removes the staging export and what was written into it.
    fn abandon(mut self) {
        self.open = false;
        self.x.nodes().abandon_export(&self.x.target.name, &self.x.inst.name);
    }

    /// The staging export is handed to the target's finalize.
    fn finalizing(mut self) {
        self.open = false;
    }
}

impl Drop for Staged<'_, '_> {
    fn drop(&mut self) {
        if self.open {
            self.x.nodes().abandon_export(&self.x.target.name, &self.x.inst.name);
        }
    }
}

/// Ganeti's `LocalExport`: transfer every disk into the staging export, then finalize.
pub(super) fn local_export(
    x: &Exec<'_>,
    staged: Staged<'_, '_>,
    snaps: &SnapSet<'_>,
    have_snapshots: bool,
) -> Result<Transfer, OpError> {
    let inst = x.inst;
    let dst = x.target.name.as_str();
    let final_dir = x.ctx.cluster.export_dir(x.target).join(&inst.name);
    let export_id = ExportId::new().map_err(|e| OpError::exec(format!("cannot make the export's id: {e}")))?;
    // Begun again, empty as it is: the shutdown before may have taken longer than the target
    // agent keeps a staging export without word from the master (`--staging-timeout`).
    if let Err(e) = x.nodes().begin_export(dst, &inst.name) {
        staged.abandon();
        return Ok(not_staged(x, e, have_snapshots, final_dir, export_id));
    }
    if x.interrupted() {
        // Begun as the signal came: nothing was sent; the caller says what state it is in.
        staged.abandon();
        let e = crate::node::NodeError::Failed("interrupted".into());
        return Ok(not_staged(x, e, have_snapshots, final_dir, export_id));
    }
    // A failure here drops `staged`, which abandons it.
    let jobs = disk_jobs(inst, snaps, have_snapshots)?;
    send_all(x, &jobs, snaps);
    let disks: Vec<DiskResult> = jobs
        .into_iter()
        .map(|j| DiskResult {
            index: j.index,
            label: j.label,
            snapshot: have_snapshots,
            path: final_dir.join(&j.dump),
            dump: j.dump,
            report: j
                .result
                .into_inner()
                .expect("result")
                .unwrap_or(Err(TransferError::NotRun)),
        })
        .collect();
    if disks.iter().all(|d| d.report.is_ok()) && !x.interrupted() {
        x.fb().info(fbk::finalizing_export(dst));
        let ini = config_ini(x, &disks, have_snapshots);
        staged.finalizing();
        return Ok(match x.nodes().finalize_export(dst, &inst.name, &ini, &export_id) {
            Ok(Finalized { dir, warnings }) => {
                for w in &warnings {
                    x.fb().warning(w.clone());
                }
                let mut disks = disks;
                for d in &mut disks {
                    d.path = dir.join(&d.dump);
                }
                Transfer {
                    fin_resu: true,
                    disks,
                    export_dir: dir,
                    export_id,
                    warnings,
                }
            }
            Err(e) => {
                x.fb().warning(fbk::could_not_finalize(&inst.name, dst, &e.to_string()));
                Transfer {
                    fin_resu: false,
                    disks,
                    export_dir: final_dir,
                    export_id,
                    warnings: Vec::new(),
                }
            }
        });
    }
    // Unlike Ganeti, the partial export is removed.
    if !x.interrupted() {
        x.fb().warning(fbk::some_disk_exports_failed(&inst.name, dst));
    }
    staged.abandon();
    Ok(Transfer {
        fin_resu: false,
        disks,
        export_dir: final_dir,
        export_id,
        warnings: Vec::new(),
    })
}

/// One job per disk of `inst`, each with a new dump name, sent from its snapshot where
/// `have_snapshots`.
fn disk_jobs(inst: &Instance, snaps: &SnapSet<'_>, have_snapshots: bool) -> Result<Vec<DiskJob>, OpError> {
    (0..inst.disks.len())
        .map(|i| {
            let source = match snaps.get(i) {
                Some(s) if have_snapshots => DiskSource::Snapshot(s),
                _ => DiskSource::Disk,
            };
            let dump = crate::fsutil::new_uuid().map_err(|e| OpError::exec(format!("cannot make a UUID: {e}")))?;
            Ok(DiskJob {
                index: i,
                label: fbk::disk_label(i, have_snapshots),
                dump,
                source,
                progress: TransferProgress::default(),
                started: Mutex::new(None),
                finished: AtomicBool::new(false),
                result: Mutex::new(None),
            })
        })
        .collect()
}

/// The staging export could not be opened on the target: every disk fails with that error.
fn not_staged(
    x: &Exec<'_>,
    e: crate::node::NodeError,
    have_snapshots: bool,
    final_dir: PathBuf,
    export_id: ExportId,
) -> Transfer {
    let (inst, dst) = (x.inst, x.target.name.as_str());
    if !x.interrupted() {
        x.fb()
            .warning(format!("Could not prepare the export directory on node {dst}: {e}"));
        x.fb().warning(fbk::some_disk_exports_failed(&inst.name, dst));
    }
    let e = std::sync::Arc::new(e);
    let disks = (0..inst.disks.len())
        .map(|i| DiskResult {
            index: i,
            label: fbk::disk_label(i, have_snapshots),
            snapshot: have_snapshots,
            dump: String::new(),
            path: final_dir.clone(),
            report: Err(TransferError::NotStaged(std::sync::Arc::clone(&e))),
        })
        .collect();
    Transfer {
        fin_resu: false,
        disks,
        export_dir: final_dir,
        export_id,
        warnings: Vec::new(),
    }
}

/// Ganeti's `config.ini` of the export: the disks as sent (a snapshot's disk has no name).
fn config_ini(x: &Exec<'_>, disks: &[DiskResult], have_snapshots: bool) -> String {
    let inst = x.inst;
    let exported: Vec<ExportedDisk> = inst
        .disks
        .iter()
        .zip(disks)
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
    export_config(x.ctx.cluster, inst, &exported, ts).to_ganeti_string()
}

/// Sends every job, `max_parallel_disks` at a time, while a reporter thread reports progress;
/// each disk's snapshot is removed as soon as it is done.
fn send_all(x: &Exec<'_>, jobs: &[DiskJob], snaps: &SnapSet<'_>) {
    let next = AtomicUsize::new(0);
    let all_done = AtomicBool::new(false);
    let workers = x.op.max_parallel_disks.min(jobs.len()).max(1);
    // --bwlimit is for the whole export: each disk moving at the same time gets its share
    // (0 is no limit, as rsync reads it: no share of it either).
    let per_disk = x.op.bwlimit.filter(|&r| r > 0).map(|r| (r / workers as u64).max(1));
    thread::scope(|s| {
        let reporter = s.spawn(|| report_progress(x.fb(), jobs, &all_done, x.op.progress_interval));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || x.interrupted() {
                        break;
                    }
                    send_one(x, &jobs[i], per_disk);
                    snaps.remove(i);
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        all_done.store(true, Ordering::Release);
        reporter.thread().unpark();
        let _ = reporter.join();
    });
}

/// Sends one disk with Ganeti's messages around it.
fn send_one(x: &Exec<'_>, job: &DiskJob, bwlimit: Option<u64>) {
    let (fb, src, dst) = (x.fb(), x.src(), x.target.name.as_str());
    fb.info(fbk::exporting(&job.label, src, dst));
    fb.info(fbk::sending_data(&job.label, src));
    fb.info(fbk::receiving_data(&job.label, dst));
    *job.started.lock().expect("started") = Some(Instant::now());
    let t0 = Instant::now();
    let req = SendDisk {
        source_node: src.to_string(),
        instance: x.inst.name.clone(),
        disk: job.index,
        source: job.source.clone(),
        target_node: dst.to_string(),
        dump: job.dump.clone(),
        pages: x.op.pages,
        checksum: x.op.checksum,
        bwlimit,
        lz4: x.op.compress != "none",
        lz4_auto: x.op.compress == AUTO_COMPRESSION,
    };
    let r = x.nodes().send_disk(&req, &job.progress);
    job.finished.store(true, Ordering::Release);
    match &r {
        Ok(rep) => {
            let size = rep.disk_size;
            let secs = t0.elapsed().as_secs_f64();
            fb.emit(Event::Progress(DiskProgress::new(
                job.index, &job.label, size, size, secs,
            )));
            fb.info(fbk::finished_sending(&job.label));
            fb.info(fbk::finished_receiving(&job.label));
        }
        Err(e) => {
            let e = e.to_string();
            fb.warning(fbk::failed_to_send(&job.label, &e, ""));
            fb.warning(fbk::failed_to_receive(&job.label, &e, ""));
        }
    }
    *job.result.lock().expect("result") = Some(r);
}

/// Every `interval`, a progress event for each disk being sent, until `all_done`.
fn report_progress(fb: &dyn Feedback, jobs: &[DiskJob], all_done: &AtomicBool, interval: Duration) {
    let mut last = Instant::now();
    while !all_done.load(Ordering::Acquire) {
        // Parked, not slept: the end of the transfer unparks it at once.
        thread::park_timeout(Duration::from_millis(50));
        if last.elapsed() < interval {
            continue;
        }
        last = Instant::now();
        for j in jobs {
            let t0 = *j.started.lock().expect("started");
            let total = j.progress.total.load(Ordering::Relaxed);
            if let (Some(t0), false, true) = (t0, j.finished.load(Ordering::Acquire), total > 0) {
                let done = j.progress.done.load(Ordering::Relaxed);
                let secs = t0.elapsed().as_secs_f64();
                fb.emit(Event::Progress(DiskProgress::new(j.index, &j.label, done, total, secs)));
            }
        }
    }
}
