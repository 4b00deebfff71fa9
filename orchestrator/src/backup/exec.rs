//! `LUBackupExport.Exec`: Ganeti's matrix of shutdown, snapshots, restart, transfer, removal
//! of the instance and cleanup of old exports, every step a [`NodeOps`] call on a named node.
//!
//! | instance | `--noshutdown` | snapshots | what happens |
//! |---|---|---|---|
//! | up | no | all disks | stop, snapshot, start, send the snapshots |
//! | up | no | not all | stop, abort (restart if it ran) unless `--long-sleep`: send the disks, then start |
//! | up | yes | all disks | snapshot, send the snapshots (the instance keeps running) |
//! | up | yes | not all | abort: a live export needs snapshots |
//! | down | any | never tried | (stop), activate, send the disks, deactivate |
//! | any | `--remove-instance` | never tried | stop, send the disks, remove disks and config entry |
//!
//! Before any of it, the staging export is opened on the target ([`Staged`]): a target that
//! cannot take the export fails it while the instance is as it was.
//!
//! A SIGINT/SIGTERM stops it at the next step: what it started is undone and the instance is
//! left as the user had it ([`Exec::interrupted_error`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cluster::{AdminState, Instance, Node};
use crate::error::OpError;
use crate::export::cleanup;
use crate::feedback::{self as fbk, Feedback};
use crate::locking::{LockLevel, LockMode, LockOwner};
use crate::lu::{acquire, Context};
use crate::node::NodeOps;

use super::transfer::{self, SnapSet, Staged, Transfer};
use super::{ExportOp, ExportResult};

/// Ganeti's error when a live export (`--noshutdown`) cannot snapshot every disk.
const LIVE_NEEDS_SNAPSHOTS: &str = "Not all disks could be snapshotted, and you requested a live export; aborting";
/// Ganeti's error when a stopped instance's disks cannot all be snapshotted and the instance
/// may not stay down for the whole transfer.
const NEEDS_LONG_SLEEP: &str = "Not all disks could be snapshotted, and you did not allow the instance to remain \
                                offline for a longer time through the --long-sleep option; aborting";

/// One run of Exec.
pub(super) struct Exec<'a> {
    pub(super) ctx: &'a Context<'a>,
    pub(super) op: &'a ExportOp,
    pub(super) inst: &'a Instance,
    pub(super) target: &'a Node,
    /// Whether this export started the instance (Ganeti's restart after the snapshots or the
    /// transfer).
    started: AtomicBool,
    /// Whether this export shut the instance down (or began to): an instance running after an
    /// interrupt is then running *again*, not "as before".
    shut: AtomicBool,
}

impl<'a> Exec<'a> {
    pub(super) fn new(ctx: &'a Context<'a>, op: &'a ExportOp, inst: &'a Instance, target: &'a Node) -> Self {
        Self {
            ctx,
            op,
            inst,
            target,
            started: AtomicBool::new(false),
            shut: AtomicBool::new(false),
        }
    }

    pub(super) fn fb(&self) -> &dyn Feedback {
        self.ctx.feedback
    }

    pub(super) fn nodes(&self) -> &dyn NodeOps {
        self.ctx.nodes
    }

    /// The primary node's name.
    pub(super) fn src(&self) -> &str {
        &self.inst.primary_node
    }

    pub(super) fn interrupted(&self) -> bool {
        self.ctx.interrupted()
    }

    fn was_running(&self) -> bool {
        self.nodes()
            .instance_running(self.src(), &self.inst.name)
            .unwrap_or(false)
    }

    pub(super) fn run(&self, owner: &mut LockOwner) -> Result<ExportResult, OpError> {
        let inst = self.inst;
        let up = inst.admin_state == AdminState::Up;
        self.sweep_leftovers();
        let was_running = self.was_running();
        if self.interrupted() {
            return Err(OpError::interrupted(format!(
                "stopped before instance {} was shut down; nothing was changed",
                inst.name
            )));
        }
        // Both asked before the instance is touched; a signal meanwhile stops the export there
        // (a stop after the signal would kill the instance outright).
        let ready = Staged::open(self).and_then(|staged| match self.interrupted() {
            true => Ok((staged, None)),
            false => self.snapshot_capable(up).map(|c| (staged, c)),
        });
        if self.interrupted() {
            // Dropped: a staging export opened meanwhile is abandoned.
            drop(ready);
            return Err(OpError::interrupted(format!(
                "stopped before instance {} was shut down; nothing was changed",
                inst.name
            )));
        }
        let (staged, capable) = ready?;
        if self.op.shutdown {
            self.fb().info(fbk::shutting_down(&inst.name));
            let timeout = Duration::from_secs(self.op.shutdown_timeout);
            self.shut.store(was_running, Ordering::SeqCst);
            let stopped = self.nodes().stop_instance(self.src(), &inst.name, timeout);
            if self.interrupted() {
                return Err(self.interrupted_error(was_running, "during the shutdown of the instance"));
            }
            stopped.map_err(|e| {
                let msg = format!("Could not shutdown instance {} on node {}: {e}", inst.name, self.src());
                OpError::exec(msg).with_source(e)
            })?;
        }
        let activate = !up;
        if activate {
            self.fb().info(fbk::activating_disks(&inst.name));
            self.nodes()
                .activate_disks(self.src(), &inst.name)
                .map_err(|e| OpError::exec(format!("Cannot activate block devices: {e}")).with_source(e))?;
        }
        let result = self.snapshot_and_transfer(staged, capable, was_running);
        if activate {
            self.fb().info(fbk::deactivating_disks(&inst.name));
        }
        let t = result?;
        if self.interrupted() && !t.fin_resu {
            let what = "during the export: the new export was abandoned (its staging directory and \
                        snapshots were removed; a previous export is untouched)";
            return Err(self.interrupted_error(was_running, what));
        }
        let mut res = t.into_result(inst, self.target)?;
        if self.interrupted() {
            // The new export is complete: it is the result (the CLI reports it as completed and
            // exits 130/143). What comes after it is not done, and the instance is put back as
            // the user had it.
            let state = self.restore_instance(was_running);
            self.fb().warning(format!(
                "Interrupted after the new export was finalized (it is complete in {}); the \
                 instance was not removed and old exports on other nodes were not removed; {state}",
                res.export_dir.display()
            ));
            return Ok(res);
        }
        if self.op.remove_instance {
            self.fb().info(fbk::removing_instance(&inst.name));
            self.remove_instance()?;
            res.instance_removed = true;
        }
        self.cleanup_exports(owner, &mut res);
        Ok(res)
    }

    /// Leftovers of interrupted runs; safe because we hold the instance lock exclusively.
    fn sweep_leftovers(&self) {
        let inst = self.inst;
        for s in self.nodes().sweep_stale_snapshots(self.src(), &inst.name) {
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
        self.nodes().sweep_export_leftovers(&self.target.name, &inst.name);
    }

    /// Whether every disk can be snapshotted, asked before the instance is touched: an export
    /// that would abort for want of snapshots (a live one, or one without `--long-sleep`) aborts
    /// with Ganeti's error before the instance is stopped (Ganeti stops it first). `None` where
    /// no snapshots are tried (the instance is down, or removed after the export).
    fn snapshot_capable(&self, up: bool) -> Result<Option<bool>, OpError> {
        if self.op.remove_instance || !up {
            return Ok(None);
        }
        let (inst, src) = (self.inst, self.src());
        for i in 0..inst.disks.len() {
            if let crate::snapshot::Capability::NotCapable(why) = self.nodes().snapshot_capability(src, &inst.name, i) {
                self.fb().info(format!("disk/{i} cannot be snapshotted: {why}"));
                if !self.op.shutdown {
                    return Err(OpError::exec(LIVE_NEEDS_SNAPSHOTS));
                }
                if !self.op.long_sleep {
                    return Err(OpError::exec(NEEDS_LONG_SLEEP));
                }
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
    }

    fn snapshot_and_transfer(
        &self,
        staged: Staged<'_, '_>,
        capable: Option<bool>,
        was_running: bool,
    ) -> Result<Transfer, OpError> {
        let inst = self.inst;
        // Snapshots are tried where the instance is up and stays (`capable` was asked).
        let try_snapshot = capable.is_some();
        let do_reboot = self.op.shutdown && try_snapshot;
        let snaps = SnapSet::new(self.nodes(), self.src(), self.fb(), inst.disks.len());
        let mut have_snapshots = false;
        if try_snapshot {
            have_snapshots = capable == Some(true) && self.create_snapshots(&snaps);
            if self.interrupted() {
                snaps.remove_all();
                return Err(self.interrupted_error(was_running, "while the disks were snapshotted"));
            }
            if !have_snapshots {
                if !self.op.shutdown {
                    return Err(OpError::exec(LIVE_NEEDS_SNAPSHOTS));
                }
                if !self.op.long_sleep {
                    if was_running {
                        // Ganeti leaves the instance stopped here; we restore what the user had.
                        self.fb().info(fbk::starting_instance(&inst.name));
                        if let Err(e) = self.nodes().start_instance(self.src(), &inst.name) {
                            self.fb()
                                .warning(format!("Could not start instance {}: {e}", inst.name));
                        }
                    }
                    return Err(OpError::exec(NEEDS_LONG_SLEEP));
                }
            }
        }
        if do_reboot && have_snapshots {
            self.start_instance()?;
        }
        let t = transfer::local_export(self, staged, &snaps, have_snapshots);
        // Interrupted, the instance is left as the user had it: started only if it was running.
        if do_reboot && !have_snapshots && (was_running || !self.interrupted()) {
            self.start_instance()?;
        }
        snaps.remove_all();
        t
    }

    /// The error of an export stopped by SIGINT/SIGTERM `when`. First the instance is put back
    /// as the user had it: started again if it was running before this export and is not now,
    /// stopped again if it was not running and this export started it (Ganeti's restart after
    /// the snapshots); then the message says in which state it is.
    fn interrupted_error(&self, was_running: bool, when: &str) -> OpError {
        let state = self.restore_instance(was_running);
        OpError::interrupted(format!("export of {} stopped {when}; {state}", self.inst.name))
    }

    /// Puts the instance back as the user had it after an interrupt (see
    /// [`Exec::interrupted_error`]) and says in which state it is.
    fn restore_instance(&self, was_running: bool) -> String {
        let name = &self.inst.name;
        let (nodes, src) = (self.nodes(), self.src());
        let running = nodes.instance_running(src, name).unwrap_or(false);
        let restarted = was_running && (!running || self.shut.load(Ordering::SeqCst));
        if was_running && !running {
            self.fb().info(fbk::starting_instance(name));
            if let Err(e) = nodes.start_instance(src, name) {
                self.fb().warning(format!("Could not start instance {name}: {e}"));
            }
        } else if !was_running && running && self.started.load(Ordering::SeqCst) {
            self.fb().info(fbk::shutting_down(name));
            // The stop flag is set: a process instance is stopped at once.
            if let Err(e) = nodes.stop_instance(src, name, Duration::from_secs(self.op.shutdown_timeout)) {
                self.fb().warning(format!("Could not shutdown instance {name}: {e}"));
            }
        }
        match (was_running, nodes.instance_running(src, name)) {
            // Not "as before": it was shut down (at once, if the signal cut the shutdown
            // wait short) and booted again, by this clean-up or before it (after the
            // snapshots, or after the transfer it was stopped for).
            (true, Ok(true)) if restarted => {
                format!("instance {name} is running again (it was shut down for the export and started again)")
            }
            (true, Ok(true)) => format!("instance {name} is running, as before"),
            (false, Ok(false)) => format!("instance {name} is stopped, as before"),
            (true, _) => format!("instance {name} was running and could NOT be started again"),
            (false, _) => format!("instance {name} was not running before and now runs"),
        }
    }

    fn start_instance(&self) -> Result<(), OpError> {
        self.fb().info(fbk::starting_instance(&self.inst.name));
        self.started.store(true, Ordering::SeqCst);
        self.nodes()
            .start_instance(self.src(), &self.inst.name)
            .map_err(|e| OpError::exec(format!("Could not start instance: {e}")).with_source(e))
    }

    /// Ganeti's `CreateSnapshots`: all disks or none.
    fn create_snapshots(&self, snaps: &SnapSet<'_>) -> bool {
        let (inst, src) = (self.inst, self.src());
        let mut ok = true;
        for i in 0..inst.disks.len() {
            self.fb().info(fbk::creating_snapshot(i, src));
            match self.nodes().create_snapshot(src, &inst.name, i) {
                Ok(s) => snaps.set(i, s),
                Err(e) => {
                    self.fb().warning(fbk::could_not_snapshot(i, src, &e.to_string()));
                    ok = false;
                }
            }
        }
        if !ok {
            snaps.remove_all();
        }
        ok
    }

    /// Ganeti's `RemoveInstance`: the disks, then the instance's entry in the config.
    fn remove_instance(&self) -> Result<(), OpError> {
        let c = self.ctx.cluster;
        // Locked (and shown writable) before the disks go: a config that cannot record the
        // removal keeps the instance whole.
        let edit = crate::cluster::ConfigEdit::begin(c.path()).map_err(|e| {
            OpError::exec(format!(
                "Could not remove the instance (its disks were kept; the export is complete): {}",
                e.msg
            ))
        })?;
        let failed = self.nodes().remove_disks(self.src(), &self.inst.name);
        if !failed.is_empty() {
            let text: Vec<String> = failed.iter().map(|(i, e)| format!("disk/{i}: {e}")).collect();
            if self.op.ignore_remove_failures {
                self.fb()
                    .warning(format!("can't remove instance's disks: {}", text.join("; ")));
            } else {
                let err = OpError::exec(format!("Can't remove instance's disks: {}", text.join("; ")));
                return Err(match failed.into_iter().next() {
                    Some((_, e)) => err.with_source(e),
                    None => err,
                });
            }
        }
        edit.remove_instance(&self.inst.name)?;
        self.nodes().forget_instance(self.src(), &self.inst.name);
        Ok(())
    }

    /// Ganeti's `_CleanupExports`, with #1186 fixed and only the affected nodes locked.
    fn cleanup_exports(&self, owner: &mut LockOwner, res: &mut ExportResult) {
        let c = self.ctx.cluster;
        let name = &self.inst.name;
        let others: Vec<&Node> = c.nodes().iter().filter(|n| n.name != self.target.name).collect();
        if others.is_empty() {
            return;
        }
        self.fb().info(fbk::removing_old_exports(name));
        let listings: Vec<cleanup::NodeListing> = others
            .iter()
            .map(|n| {
                if n.offline {
                    cleanup::NodeListing {
                        node: n.name.clone(),
                        export_dir: c.export_dir(n),
                        dir_id: None,
                        export_id: None,
                        mark: None,
                        exports: Err("node is offline".into()),
                        leftovers: false,
                    }
                } else {
                    self.nodes().export_listing(&n.name, name)
                }
            })
            .collect();
        let target = self.nodes().export_listing(&self.target.name, name);
        // The new export, kept wherever it is seen: by identity on the target's machine, by its
        // id on any machine (a target whose listing failed still gives the id).
        let keep = cleanup::Keep {
            id: target.export_id,
            mark: Some(res.export_id.clone()),
        };
        let plan = cleanup::plan(name, &listings, target.dir_id, &keep);
        res.shared_nodes = plan.shared.clone();
        // The primary and target are done with; lock exactly the nodes we remove from, one at
        // a time (always the only node held, so in order). The new export is finalized: a node
        // that cannot be locked (a timeout, SIGINT/SIGTERM) keeps its old export, with a warning,
        // as Ganeti warns when a removal fails, and the export still succeeds.
        owner.release(LockLevel::Node);
        for node in plan.nodes() {
            let has_export = plan.removals.iter().any(|r| r.node == node);
            let locked = if self.interrupted() {
                Err("diskstream was interrupted".to_string())
            } else {
                acquire(
                    self.ctx,
                    owner,
                    LockLevel::Node,
                    std::slice::from_ref(&node),
                    LockMode::Exclusive,
                )
                .map_err(|e| e.msg)
            };
            if let Err(why) = locked {
                if has_export {
                    let why = format!("its node lock could not be acquired: {why}");
                    let w = fbk::could_not_remove_older_export(name, &node, &why);
                    self.fb().warning(w.clone());
                    res.warnings.push(w);
                }
                continue;
            }
            if has_export {
                match self.nodes().remove_export(&node, name, &keep) {
                    Ok(true) => res.removed_old.push(node.clone()),
                    Ok(false) => {}
                    Err(e) => {
                        let w = fbk::could_not_remove_older_export(name, &node, &e.to_string());
                        self.fb().warning(w.clone());
                        res.warnings.push(w);
                    }
                }
            }
            self.nodes().sweep_export_leftovers(&node, name);
            owner.release(LockLevel::Node);
        }
    }
}
