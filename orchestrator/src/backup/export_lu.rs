//! `LUBackupExport`'s checks: CheckArguments, ExpandNames, DeclareLocks and CheckPrereq with
//! Ganeti's messages, and the hooks environment; its Exec is [`super::exec`].

use crate::cluster::{AdminState, Cluster, DiskTemplate, Instance, Node};
use crate::error::{Ecode, OpError};
use crate::hooks::env::{export_hook_nodes, export_lu_env, ExportHookParams, HookContext};
use crate::locking::{LockLevel, LockMode, LockOwner};
use crate::lu::{Context, HooksSpec, LogicalUnit, NeededLocks};
use crate::node::NodeOps;

use super::exec::Exec;
use super::{ExportMode, ExportOp, ExportResult};

/// What CheckPrereq established; only [`ExportLu::check_prereq`] can make one.
#[derive(Debug)]
pub struct ExportPrereq {
    pub(super) instance: Instance,
    pub(super) target: Node,
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
        if self.op.remove_instance && inst.admin_state == AdminState::Up && !self.op.shutdown {
            return Err(OpError::prereq(
                Ecode::State,
                "Can not remove instance without shutting it down before",
            ));
        }
        if self.op.remove_instance {
            // The instance's removal is recorded in the config: one that cannot be edited is
            // known now, before the instance is touched (not after its disks are deleted).
            crate::cluster::ConfigEdit::begin(c.path())
                .map_err(|e| OpError::prereq(Ecode::Environ, format!("Can not remove the instance: {}", e.msg)))?;
        }
        let target = c.node(&self.target).expect("expanded").clone();
        check_node_online(&target)?;
        check_agent_rate(&self.op, &inst, primary, &target)?;
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
        let ours = ["none", super::AUTO_COMPRESSION];
        if !ours.contains(&self.op.compress.as_str()) && !tools.contains(&self.op.compress) {
            return Err(inval(format!(
                "Compression tool not allowed, tools allowed are [{}]",
                tools.join(", ")
            )));
        }
        check_disk_sizes(c, ctx.nodes, &inst)?;
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
            env: export_lu_env(&with_absolute_disks(ctx.cluster, &p.instance), &p.hook_params),
        })
    }

    fn exec(&mut self, ctx: &Context<'_>, p: ExportPrereq, owner: &mut LockOwner) -> Result<ExportResult, OpError> {
        let r = Exec::new(ctx, &self.op, &p.instance, &p.target).run(owner)?;
        self.config_changed = r.instance_removed;
        Ok(r)
    }

    fn add_warning(&self, output: &mut ExportResult, warning: &str) {
        output.warnings.push(warning.to_string());
    }

    fn config_changed(&self) -> bool {
        self.config_changed
    }
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

/// Every disk's backing file or device must have exactly the declared size: a dump of another
/// size would not match `diskN_size` in `config.ini` (an import would make a disk of the
/// declared size and the dump would not fit, or leave its end unwritten). A mismatch is almost
/// always a config error (a wrong `size`, or the wrong `path`), so it is refused before anything
/// is changed. A missing backing file of an instance that is not up is left to the disk
/// activation, which names it; an instance that is up gets no activation (its disks are in
/// use), and would be shut down before the transfer found the file missing, so for it a missing
/// backing file is refused here, before anything is stopped.
fn check_disk_sizes(c: &Cluster, nodes: &dyn NodeOps, inst: &Instance) -> Result<(), OpError> {
    for (i, d) in inst.disks.iter().enumerate() {
        let path = c.disk_path(d);
        let declared = d.size << 20;
        let actual = match nodes.backing_size(&inst.primary_node, &inst.name, i) {
            Ok(Some(n)) => n,
            Ok(None) if inst.admin_state != AdminState::Up => continue,
            Ok(None) => {
                return Err(OpError::prereq(
                    Ecode::Environ,
                    format!(
                        "Disk disk/{i} of instance {}: its backing {} {} does not exist; refusing to \
                         export (nothing was stopped)",
                        inst.name,
                        backing_kind(d.template),
                        path.display()
                    ),
                ))
            }
            Err(e) => {
                let msg = format!(
                    "Cannot check the size of disk/{i} of instance {} ({}): {e}",
                    inst.name,
                    path.display()
                );
                return Err(OpError::prereq(Ecode::Environ, msg).with_source(e));
            }
        };
        if actual != declared {
            let what = backing_kind(d.template);
            return Err(OpError::prereq(
                Ecode::State,
                format!(
                    "Disk disk/{i} of instance {}: its backing {what} {} is {} ({actual} bytes), but the \
                     cluster config declares size = {} ({} MiB, {declared} bytes); refusing to export a \
                     disk whose size does not match its declaration (fix `size` or `path` in the \
                     cluster config)",
                    inst.name,
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

/// What backs a disk of `template`, for messages.
fn backing_kind(template: DiskTemplate) -> &'static str {
    if template == DiskTemplate::File {
        "file"
    } else {
        "device"
    }
}

/// A size in MiB as the size check prints it: whole MiB, else two decimals.
fn mib(b: u64) -> String {
    if b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{:.2} MiB", b as f64 / 1048576.0)
    }
}

/// `inst` with its disks' paths as the cluster resolves them (absolute): hooks run with cwd
/// `/`, and Ganeti passes absolute paths (`GANETI_INSTANCE_DISK<i>_ID`).
fn with_absolute_disks(c: &crate::cluster::Cluster, inst: &crate::cluster::Instance) -> crate::cluster::Instance {
    let mut inst = inst.clone();
    for d in &mut inst.disks {
        d.path = c.disk_path(d);
    }
    inst
}

/// The slowest `--bwlimit` a disk may get between agents: 64 KiB/s. The stream is paced a chunk
/// (1 MiB) at a time, and a receiving agent that gets no byte for its inactivity timeout (30 s
/// by default) fails the stream as stalled; at 64 KiB/s a chunk comes every 16 s.
pub const MIN_AGENT_RATE: u64 = 64 << 10;

/// Refuses a `--bwlimit` that gives a disk streamed between agents less than [`MIN_AGENT_RATE`]
/// (it failed as "stalled" after 30 s, or waited much longer): it is shared by the disks moving
/// at once.
fn check_agent_rate(
    op: &super::ExportOp,
    inst: &crate::cluster::Instance,
    primary: &crate::cluster::Node,
    target: &crate::cluster::Node,
) -> Result<(), OpError> {
    let Some(rate) = op.bwlimit.filter(|&r| r > 0) else {
        return Ok(());
    };
    if primary.address.is_none() && target.address.is_none() {
        return Ok(());
    }
    let at_once = op.max_parallel_disks.clamp(1, inst.disks.len().max(1)) as u64;
    if rate / at_once >= MIN_AGENT_RATE {
        return Ok(());
    }
    Err(inval(format!(
        "--bwlimit {rate} gives each of the {at_once} disk(s) moving at once {} bytes/s; between \
         node agents a disk needs at least {MIN_AGENT_RATE} bytes/s (64K), or the receiving agent \
         takes the stream for stalled",
        rate / at_once
    )))
}
