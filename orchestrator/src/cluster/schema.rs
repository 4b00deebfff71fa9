//! The shape of `cluster.toml` (`docs/cluster-config.md`): the serde types of the file.
//! Field names are the TOML keys; unknown keys are refused.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The file, as deserialized. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The `[cluster]` table.
    pub cluster: ClusterInfo,
    /// The `[[nodes]]` array.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The `[[instances]]` array.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    /// Cluster name (`GANETI_CLUSTER` in hooks).
    pub name: String,
    /// Name of the master node (`GANETI_MASTER`); hooks also run there.
    pub master: String,
    /// Compression tools allowed besides `none` (Ganeti's `compression_tools`).
    #[serde(default = "default_compression_tools")]
    pub compression_tools: Vec<String>,
    /// Directory of the cluster's lock files (see [`Cluster::lock_dir`]); relative to the
    /// config's directory. Default: `<master root>/var/run/ganeti/locks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_dir: Option<PathBuf>,
    /// Per-script hook timeout in seconds (default 900, Ganeti's hooks RPC timeout);
    /// `export --hooks-timeout` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_timeout: Option<f64>,
    /// Seconds between "still running" messages about a hook script (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_report_interval: Option<f64>,
    /// Directory of the cluster PKI (CA and node certificates, `diskstream pki init`); relative
    /// to the config's directory. Default: `<config dir>/pki`. Used only when a node has an
    /// `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PathBuf>,
}

fn default_compression_tools() -> Vec<String> {
    ["gzip", "gzip-fast", "gzip-slow"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name (FQDN in Ganeti).
    pub name: String,
    /// Node UUID (`source` in an export's `config.ini`).
    pub uuid: String,
    /// Root directory; the export and hooks directories live under it. A relative path is
    /// relative to the directory holding the config file.
    pub root: PathBuf,
    /// Offline nodes cannot be used as primary or target.
    #[serde(default)]
    pub offline: bool,
    /// Drained nodes cannot be used as target.
    #[serde(default)]
    pub drained: bool,
    /// `host:port` of the node's agent (`diskstream agent`). A node without one is run
    /// in-process by the command that uses it (its directories are on this machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Administrative state of an instance (Ganeti's `admin_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Should be running.
    Up,
    /// Stopped.
    Down,
    /// Marked offline.
    Offline,
}

impl AdminState {
    /// Ganeti's string (`up`, `down`, `offline`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Offline => "offline",
        }
    }
}

/// A scalar parameter value (beparams, hvparams, osparams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

impl ParamValue {
    /// The value as Python's `str()` renders it, which is what Ganeti writes into hook
    /// environments and `config.ini`: `True`/`False`, `1024`, `0.5`, `1.0`, the string itself.
    pub fn python_str(&self) -> String {
        match self {
            Self::Bool(true) => "True".into(),
            Self::Bool(false) => "False".into(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => python_float_str(*f),
            Self::Str(s) => s.clone(),
        }
    }
}

/// Python `str(float)` for the common cases: integral values keep a `.0`, others use the
/// shortest round-trip form (as Python does). Exponent notation for very large or very small
/// values is not reproduced.
fn python_float_str(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// A parameter table; order is kept as written (Ganeti writes dicts in insertion order).
pub type Params = IndexMap<String, ParamValue>;

/// One instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Instance name (FQDN in Ganeti; export directories are named after it).
    pub name: String,
    /// Instance UUID.
    pub uuid: String,
    /// Name of the primary node.
    pub primary_node: String,
    /// Names of the secondary nodes.
    #[serde(default)]
    pub secondary_nodes: Vec<String>,
    /// OS definition name (`os` in `config.ini`).
    pub os: String,
    /// Hypervisor name as Ganeti reports it (e.g. `kvm`).
    pub hypervisor: String,
    /// Administrative state.
    pub admin_state: AdminState,
    /// Backend parameters; `maxmem`, `minmem` and `vcpus` are required.
    #[serde(default)]
    pub beparams: Params,
    /// Hypervisor parameters.
    #[serde(default)]
    pub hvparams: Params,
    /// OS parameters.
    #[serde(default)]
    pub osparams: Params,
    /// Private OS parameters (written in clear text to `config.ini`, as Ganeti does).
    #[serde(default)]
    pub osparams_private: Params,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// NICs, in order.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Disks, in order.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// How the instance is started and stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
}

impl Instance {
    /// Ganeti's `disk_template` of the instance: the disks' common template, `diskless` without
    /// disks, `mixed` when they differ.
    pub fn disk_template(&self) -> &'static str {
        disk_template_of(self.disks.iter().map(|d| d.template))
    }

    /// A backend parameter as an integer, if set and integral.
    pub fn be_int(&self, key: &str) -> Option<i64> {
        match self.beparams.get(key) {
            Some(ParamValue::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

/// Ganeti's `utils.GetDiskTemplate` over a set of disk templates.
pub fn disk_template_of(templates: impl IntoIterator<Item = DiskTemplate>) -> &'static str {
    let mut iter = templates.into_iter();
    let Some(first) = iter.next() else {
        return "diskless";
    };
    if iter.all(|t| t == first) {
        first.as_str()
    } else {
        "mixed"
    }
}

/// One NIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// MAC address.
    pub mac: String,
    /// IP address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Network name, if the NIC is connected to a Ganeti network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// NIC name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// NIC UUID, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// NIC mode (`bridged`, `routed`, `openvswitch`).
    #[serde(default = "default_nic_mode")]
    pub mode: String,
    /// NIC link (bridge name for bridged NICs).
    #[serde(default)]
    pub link: String,
    /// VLAN (e.g. `.100`), empty for none.
    #[serde(default)]
    pub vlan: String,
}

fn default_nic_mode() -> String {
    "bridged".into()
}

/// Disk template (Ganeti's `dev_type`) of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskTemplate {
    /// A file (snapshotted by reflink where the file system supports it).
    File,
    /// An LVM logical volume (snapshotted with `lvcreate -s`).
    Plain,
    /// An existing block device (cannot be snapshotted).
    Blockdev,
}

impl DiskTemplate {
    /// Ganeti's name (`file`, `plain`, `blockdev`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Plain => "plain",
            Self::Blockdev => "blockdev",
        }
    }
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Disk UUID.
    pub uuid: String,
    /// Disk name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Ganeti's `iv_name`; defaults to `disk/<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv_name: Option<String>,
    /// Size in MiB (as Ganeti).
    pub size: u64,
    /// Template.
    pub template: DiskTemplate,
    /// Backing file, LV device (`/dev/<vg>/<lv>`) or block device. A relative path is relative
    /// to the directory holding the config file.
    pub path: PathBuf,
    /// Access mode, `rw` or `ro`.
    #[serde(default = "default_disk_mode")]
    pub mode: String,
}

fn default_disk_mode() -> String {
    "rw".into()
}

/// How an instance is started and stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Driver {
    /// The instance is a process started from `start`, stopped with SIGTERM then SIGKILL.
    Process {
        /// The command that becomes the instance process.
        start: CommandSpec,
    },
    /// The instance is controlled by commands (e.g. wrapping `virsh`); `status` exits 0 while
    /// the instance runs.
    Command {
        /// Starts the instance.
        start: CommandSpec,
        /// Stops the instance.
        stop: CommandSpec,
        /// Exits 0 if the instance runs, non-zero otherwise.
        status: CommandSpec,
    },
}

/// A command: a string run by `/bin/sh -c`, or an argument vector run directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    /// Run with `/bin/sh -c`.
    Shell(String),
    /// Run directly; the first element is the program.
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The argument vector to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Self::Argv(v) => v.clone(),
        }
    }
}
