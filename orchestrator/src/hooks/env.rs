//! The hook environment of `instance-export`, built exactly as Ganeti builds it (pure).
//!
//! Three layers, as in Ganeti: the LU's own variables ([`export_lu_env`]: `EXPORT_*`,
//! `SHUTDOWN_TIMEOUT`, `REMOVE_INSTANCE` plus the instance variables of
//! [`instance_env`], Ganeti's `BuildInstanceHookEnvByObject`), prefixed `GANETI_` in the pre
//! phase and `GANETI_POST_` in the post phase (which also sees the pre variables); then the
//! fixed variables of the hooks master (`GANETI_HOOKS_VERSION`, `GANETI_OP_CODE`, ...) and
//! `PATH` ([`phase_env`]). Values are Python `str()` renderings (`True`, `None`, `1024`).

use std::collections::BTreeMap;

use super::{Phase, HOOKS_PATH};
use crate::cluster::{Cluster, DiskTemplate, Instance, Node};

/// Ganeti's `HOOKS_VERSION`.
pub const HOOKS_VERSION: u32 = 2;
/// The opcode id of an export.
pub const OP_BACKUP_EXPORT: &str = "OP_BACKUP_EXPORT";
/// The hooks path (`HPATH`) of an export.
pub const HPATH_INSTANCE_EXPORT: &str = "instance-export";
/// The hook type (`HTYPE`) of instance operations.
pub const HTYPE_INSTANCE: &str = "INSTANCE";

/// An environment: variable name to value.
pub type Env = BTreeMap<String, String>;

/// The export options that appear in the hook environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportHookParams {
    /// `local` or `remote`.
    pub mode: String,
    /// The expanded target node name.
    pub target_node: String,
    /// Whether the instance is shut down for the export.
    pub shutdown: bool,
    /// Shutdown timeout in seconds.
    pub shutdown_timeout: u64,
    /// Whether the instance is removed after the export.
    pub remove_instance: bool,
}

/// What every hook of one operation shares (Ganeti's `HooksMaster` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookContext {
    /// Opcode id (`GANETI_OP_CODE`).
    pub opcode: String,
    /// Hooks path (`GANETI_HOOKS_PATH`, directory prefix).
    pub hpath: String,
    /// Object type (`GANETI_OBJECT_TYPE`).
    pub object_type: String,
    /// Cluster name (`GANETI_CLUSTER`).
    pub cluster_name: String,
    /// Master node name (`GANETI_MASTER`).
    pub master_name: String,
    /// Master's data directory (`GANETI_DATA_DIR`).
    pub data_dir: String,
}

impl HookContext {
    /// The context of an `instance-export` operation on `cluster`.
    pub fn instance_export(cluster: &Cluster) -> Self {
        let master = cluster.master();
        Self {
            opcode: OP_BACKUP_EXPORT.into(),
            hpath: HPATH_INSTANCE_EXPORT.into(),
            object_type: HTYPE_INSTANCE.into(),
            cluster_name: cluster.info().name.clone(),
            master_name: master.name.clone(),
            data_dir: cluster.data_dir(master).display().to_string(),
        }
    }
}

/// Python's spelling of a bool (`True`/`False`), as Ganeti's environment and messages show it.
pub fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Ganeti's `BuildInstanceHookEnvByObject` for `inst` (unprefixed).
pub fn instance_env(inst: &Instance) -> Env {
    let mut env = Env::new();
    let mut set = |k: String, v: String| {
        env.insert(k, v);
    };
    let be = |k: &str| inst.be_int(k).map(|v| v.to_string()).unwrap_or_default();
    set("OP_TARGET".into(), inst.name.clone());
    set("INSTANCE_NAME".into(), inst.name.clone());
    set("INSTANCE_PRIMARY".into(), inst.primary_node.clone());
    set("INSTANCE_SECONDARIES".into(), inst.secondary_nodes.join(" "));
    set("INSTANCE_OS_TYPE".into(), inst.os.clone());
    set("INSTANCE_STATUS".into(), inst.admin_state.as_str().into());
    set("INSTANCE_MINMEM".into(), be("minmem"));
    set("INSTANCE_MAXMEM".into(), be("maxmem"));
    set("INSTANCE_MEMORY".into(), be("maxmem"));
    set("INSTANCE_VCPUS".into(), be("vcpus"));
    set("INSTANCE_DISK_TEMPLATE".into(), inst.disk_template().into());
    set("INSTANCE_HYPERVISOR".into(), inst.hypervisor.clone());

    for (idx, nic) in inst.nics.iter().enumerate() {
        let p = format!("INSTANCE_NIC{idx}_");
        if let Some(name) = nic.name.as_deref().filter(|n| !n.is_empty()) {
            set(format!("{p}NAME"), name.into());
        }
        set(format!("{p}UUID"), nic.uuid.clone().unwrap_or_default());
        set(format!("{p}IP"), nic.ip.clone().unwrap_or_default());
        set(format!("{p}MAC"), nic.mac.clone());
        set(format!("{p}MODE"), nic.mode.clone());
        set(format!("{p}LINK"), nic.link.clone());
        set(format!("{p}VLAN"), nic.vlan.clone());
        if let Some(net) = &nic.network {
            // Ganeti adds the network object's keys; our config names networks only.
            set(format!("{p}NETWORK_NAME"), net.clone());
        }
        if nic.mode == "bridged" || nic.mode == "openvswitch" {
            set(format!("{p}BRIDGE"), nic.link.clone());
        }
    }
    set("INSTANCE_NIC_COUNT".into(), inst.nics.len().to_string());

    for (idx, disk) in inst.disks.iter().enumerate() {
        let p = format!("INSTANCE_DISK{idx}_");
        if let Some(name) = disk.name.as_deref().filter(|n| !n.is_empty()) {
            set(format!("{p}NAME"), name.into());
        }
        set(format!("{p}UUID"), disk.uuid.clone());
        set(format!("{p}SIZE"), disk.size.to_string());
        set(format!("{p}MODE"), disk.mode.clone());
        let path = disk.path.display().to_string();
        match disk.template {
            DiskTemplate::Plain => {
                // logical_id = (vg, lv), from the device path /dev/<vg>/<lv>.
                let (vg, lv) = plain_logical_id(&path);
                set(format!("{p}VG"), vg);
                set(format!("{p}ID"), lv);
            }
            DiskTemplate::File => {
                set(format!("{p}DRIVER"), "loop".into());
                set(format!("{p}ID"), path);
            }
            DiskTemplate::Blockdev => {
                set(format!("{p}DRIVER"), "manual".into());
                set(format!("{p}ID"), path);
            }
        }
        set(format!("{p}DEV_TYPE"), disk.template.as_str().into());
    }
    set("INSTANCE_DISK_COUNT".into(), inst.disks.len().to_string());
    set("INSTANCE_TAGS".into(), inst.tags.join(" "));
    for (k, v) in &inst.beparams {
        set(format!("INSTANCE_BE_{k}"), v.python_str());
    }
    for (k, v) in &inst.hvparams {
        set(format!("INSTANCE_HV_{k}"), v.python_str());
    }
    env
}

/// `(vg, lv)` of an LVM device path `/dev/<vg>/<lv>`; other paths give `("", path)`.
fn plain_logical_id(path: &str) -> (String, String) {
    let parts: Vec<&str> = path.trim_start_matches("/dev/").split('/').collect();
    if path.starts_with("/dev/") && parts.len() == 2 {
        (parts[0].into(), parts[1].into())
    } else {
        (String::new(), path.into())
    }
}

/// `LUBackupExport.BuildHooksEnv` (unprefixed).
pub fn export_lu_env(inst: &Instance, p: &ExportHookParams) -> Env {
    let mut env = Env::new();
    env.insert("EXPORT_MODE".into(), p.mode.clone());
    env.insert("EXPORT_NODE".into(), p.target_node.clone());
    env.insert("EXPORT_DO_SHUTDOWN".into(), py_bool(p.shutdown).into());
    env.insert("SHUTDOWN_TIMEOUT".into(), p.shutdown_timeout.to_string());
    env.insert("REMOVE_INSTANCE".into(), py_bool(p.remove_instance).into());
    env.extend(instance_env(inst));
    env
}

/// The prefix of LU variables in a phase: `GANETI_` or `GANETI_POST_`.
pub fn phase_prefix(phase: Phase) -> &'static str {
    match phase {
        Phase::Pre => "GANETI_",
        Phase::Post => "GANETI_POST_",
    }
}

/// Prefixes an LU environment for `phase` (Ganeti's `HooksMaster._BuildEnv` without the
/// pre-phase merge).
pub fn prefixed(phase: Phase, lu_env: &Env) -> Env {
    let prefix = phase_prefix(phase);
    lu_env
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

/// The complete environment a hook script gets (Ganeti's `_BuildEnv` + `_RunWrapper`):
/// `PATH`, the fixed `GANETI_*` variables, the LU variables prefixed for `phase`, and in the
/// post phase also the pre phase's prefixed variables (`pre_lu_env`).
pub fn phase_env(ctx: &HookContext, phase: Phase, lu_env: &Env, pre_lu_env: Option<&Env>) -> Env {
    let mut env = prefixed(phase, lu_env);
    if phase == Phase::Post {
        if let Some(pre) = pre_lu_env {
            env.extend(prefixed(Phase::Pre, pre));
        }
    }
    let fixed = [
        ("PATH", HOOKS_PATH.to_string()),
        ("GANETI_HOOKS_VERSION", HOOKS_VERSION.to_string()),
        ("GANETI_OP_CODE", ctx.opcode.clone()),
        ("GANETI_DATA_DIR", ctx.data_dir.clone()),
        ("GANETI_HOOKS_PHASE", phase.as_str().to_string()),
        ("GANETI_HOOKS_PATH", ctx.hpath.clone()),
        ("GANETI_OBJECT_TYPE", ctx.object_type.clone()),
        ("GANETI_CLUSTER", ctx.cluster_name.clone()),
        ("GANETI_MASTER", ctx.master_name.clone()),
    ];
    for (k, v) in fixed {
        // Ganeti's JoinDisjointDicts: an LU variable may not shadow a fixed one.
        let clash = env.insert(k.to_string(), v);
        debug_assert!(clash.is_none(), "hook variable {k} set twice");
    }
    env
}

/// The nodes an export's hooks run on: master, primary and (local mode) target, each once,
/// in that order (Ganeti's `BuildHooksNodes`; secondaries are not included).
pub fn export_hook_nodes<'a>(cluster: &'a Cluster, inst: &Instance, target: Option<&'a Node>) -> Vec<&'a Node> {
    let mut nodes: Vec<&Node> = Vec::new();
    let candidates = [Some(cluster.master()), cluster.node(&inst.primary_node), target];
    for node in candidates.into_iter().flatten() {
        if !nodes.iter().any(|n| n.uuid == node.uuid) {
            nodes.push(node);
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_logical_id_from_device_path() {
        assert_eq!(
            plain_logical_id("/dev/xenvg/inst1-data"),
            ("xenvg".into(), "inst1-data".into())
        );
        assert_eq!(plain_logical_id("/srv/x.img"), (String::new(), "/srv/x.img".into()));
    }
}
