//! `LUBackupRemove` (`gnt-backup remove`): removes an instance's exports on every node that
//! has one.

use serde::Serialize;

use crate::error::OpError;
use crate::export::cleanup::Keep;
use crate::feedback as fbk;
use crate::locking::{LockLevel, LockMode, LockOwner};
use crate::lu::{Context, LogicalUnit, NeededLocks};

/// `LUBackupRemove`: removes an instance's exports on every node that has one.
#[derive(Debug)]
pub struct RemoveLu {
    name: String,
    expanded: bool,
    nodes: Vec<String>,
}

/// What `remove` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RemoveResult {
    /// Nodes whose export was removed.
    pub removed: Vec<String>,
    /// What went wrong without failing the removal (a node that could not be asked, an export
    /// that could not be removed; also in the log as warnings).
    pub warnings: Vec<String>,
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
        // Ganeti locks every node; the nodes that hold an export of this name, or what an
        // interrupted run of it left (a staging or half-removed export, which no later export
        // of a deleted instance would ever sweep), or that cannot say, are enough.
        if level == LockLevel::Node {
            self.nodes = ctx
                .cluster
                .nodes()
                .iter()
                .filter(|n| !n.offline)
                .filter(|n| {
                    let l = ctx.nodes.export_listing(&n.name, &self.name);
                    // A node that could not be asked is kept: Exec asks again and warns
                    // (it was dropped here, and a remove that missed it said nothing).
                    l.leftovers || l.exports.as_ref().map_or(true, |e| e.contains(&self.name))
                })
                .map(|n| n.name.clone())
                .collect();
            needed.set(level, self.nodes.clone(), LockMode::Exclusive);
        }
    }

    fn check_prereq(&mut self, _ctx: &Context<'_>, _owner: &LockOwner) -> Result<RemovePrereq, OpError> {
        Ok(RemovePrereq(()))
    }

    fn exec(&mut self, ctx: &Context<'_>, _p: RemovePrereq, _owner: &mut LockOwner) -> Result<RemoveResult, OpError> {
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
            let mut warn = |w: String| {
                res.warnings.push(w.clone());
                ctx.feedback.warning(w);
            };
            match ctx.nodes.list_exports(name) {
                Err(e) => warn(format!("Failed to query node {name} (continuing): {e}")),
                Ok(list) if list.contains(&self.name) => {
                    match ctx.nodes.remove_export(name, &self.name, &Keep::default()) {
                        Ok(true) => res.removed.push(name.clone()),
                        Ok(false) => {}
                        Err(e) => warn(format!(
                            "Could not remove export for instance {} on node {name}: {e}",
                            self.name
                        )),
                    }
                }
                Ok(_) => {}
            }
            ctx.nodes.sweep_export_leftovers(name, &self.name);
        }
        if res.removed.is_empty() && !self.expanded {
            ctx.feedback.info(fbk::EXPORT_NOT_FOUND_HINT);
        }
        Ok(res)
    }
}
