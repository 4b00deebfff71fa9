//! The cluster configuration: the TOML file that is the cluster's source of truth.
//!
//! It plays the part of Ganeti's `config.data`: cluster name and master, the allowed
//! compression tools, the nodes (each with a root directory laid out like Ganeti's virtual
//! cluster `GANETI_ROOTDIR`) and the instances with everything an export needs. The format is
//! documented in `docs/cluster-config.md`; `examples/cluster.toml` is a complete example.
//!
//! Loading parses with serde and then validates the whole file (unique names and UUIDs,
//! references to nodes that exist, required backend parameters, safe file names), reporting
//! the file and the key at fault. Changes ([`Cluster::remove_instance`]) are made under an
//! exclusive lock on a sibling lock file, edit the TOML in place (comments survive), re-validate
//! the result and replace the file atomically.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Ecode, OpError};
use crate::fsutil;

/// Ganeti's `MAX_DISKS`: an instance has at most this many disks.
pub const MAX_DISKS: usize = 16;
/// Ganeti's `MAX_NICS`: an instance has at most this many NICs.
pub const MAX_NICS: usize = 8;

/// Export directory of a node, relative to its root (Ganeti's `EXPORT_DIR` in a virtual cluster).
pub const EXPORT_SUBDIR: &str = "var/lib/ganeti/export";
/// Hooks directory of a node, relative to its root (Ganeti's `HOOKS_BASE_DIR`).
pub const HOOKS_SUBDIR: &str = "etc/ganeti/hooks";
/// Data directory of a node, relative to its root (Ganeti's `DATA_DIR`).
pub const DATA_SUBDIR: &str = "var/lib/ganeti";
/// Run-time directory of a node, relative to its root (Ganeti's `RUN_DIR`): lock files on the
/// master, instance pid files on a primary node.
pub const RUN_SUBDIR: &str = "var/run/ganeti";
/// Log directory of a node, relative to its root (Ganeti's `LOG_DIR`).
pub const LOG_SUBDIR: &str = "var/log/ganeti";

/// The backend parameters every instance must define (Ganeti fills them from cluster defaults;
/// our config has no cluster-level defaults, so they are explicit).
pub const REQUIRED_BEPARAMS: [&str; 3] = ["maxmem", "minmem", "vcpus"];

/// Every backend parameter Ganeti knows (`BES_PARAMETER_TYPES`); any other key is refused.
pub const KNOWN_BEPARAMS: [&str; 6] = [
    "always_failover",
    "auto_balance",
    "maxmem",
    "minmem",
    "spindle_use",
    "vcpus",
];

/// The longest instance, node or disk name (bytes). File and lock names are built from
/// instance and node names with up to 24 more bytes (`.<name>.ds-removing-<pid>`,
/// `<name>.holders`), and a file name may have at most 255 bytes (`NAME_MAX`); 200 leaves room
/// and still fits any DNS name used in practice (Ganeti's names are FQDNs, at most 253).
pub const MAX_NAME_LEN: usize = 200;

/// The largest declared disk size, in MiB: 2^33 MiB = 2^53 bytes (8 PiB). Bytes stay exact in
/// an `f64` (progress and rates) and far from `u64` overflow; no single disk comes near it.
pub const MAX_DISK_SIZE_MIB: u64 = 1 << 33;

/// The longest per-script hook timeout or report interval accepted in the config (seconds):
/// one week.
pub const MAX_HOOKS_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

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

/// A configuration file that could not be loaded: the file, the key at fault and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{file}: {msg}")]
    Parse {
        /// The config file.
        file: PathBuf,
        /// The parser's message (it names line, column and key).
        msg: String,
    },
    /// The file parsed but is inconsistent.
    #[error("{file}: {key}: {msg}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The key at fault, e.g. `instances[1].primary_node`.
        key: String,
        /// What is wrong.
        msg: String,
    },
}

impl From<ConfigError> for OpError {
    fn from(e: ConfigError) -> Self {
        OpError::config(e.to_string())
    }
}

/// A loaded and validated cluster configuration.
#[derive(Debug, Clone)]
pub struct Cluster {
    path: PathBuf,
    base_dir: PathBuf,
    config: ClusterConfig,
}

impl Cluster {
    /// Loads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            file: path.clone(),
            source,
        })?;
        Self::from_str_at(&text, path)
    }

    /// Parses and validates `text` as if it were the content of `path`.
    pub fn from_str_at(text: &str, path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.clone(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        validate(&config).map_err(|(key, msg)| ConfigError::Invalid {
            file: path.clone(),
            key,
            msg,
        })?;
        // Absolute, so that paths resolved against it (hooks, disks, node roots) stay valid for
        // children that run elsewhere (hook scripts run with cwd `/`). Symlinks are not
        // resolved: relative paths stay relative to the directory that holds the file as named.
        let base_dir = std::path::absolute(fsutil::parent_dir(&path)).map_err(|source| ConfigError::Io {
            file: path.clone(),
            source,
        })?;
        Ok(Self { path, base_dir, config })
    }

    /// The config file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Cluster settings.
    pub fn info(&self) -> &ClusterInfo {
        &self.config.cluster
    }

    /// The per-script hook timeout (`[cluster] hooks_timeout`, else Ganeti's 15 minutes).
    pub fn hooks_timeout(&self) -> std::time::Duration {
        self.config
            .cluster
            .hooks_timeout
            .map_or(crate::hooks::DEFAULT_SCRIPT_TIMEOUT, std::time::Duration::from_secs_f64)
    }

    /// How often a running hook script is reported (`[cluster] hooks_report_interval`, else
    /// every 60 s).
    pub fn hooks_report_interval(&self) -> std::time::Duration {
        self.config.cluster.hooks_report_interval.map_or(
            crate::hooks::DEFAULT_REPORT_INTERVAL,
            std::time::Duration::from_secs_f64,
        )
    }

    /// All nodes, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.config.nodes
    }

    /// All instances, in file order.
    pub fn instances(&self) -> &[Instance] {
        &self.config.instances
    }

    /// The node with exactly this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.config.nodes.iter().find(|n| n.name == name)
    }

    /// The instance with exactly this name.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.config.instances.iter().find(|i| i.name == name)
    }

    /// The master node (validated to exist).
    pub fn master(&self) -> &Node {
        self.node(&self.config.cluster.master)
            .expect("validated: the master node exists")
    }

    /// Ganeti's `ExpandInstanceName`: an exact name, or a unique match of `name` followed by
    /// a dot-separated suffix, case-insensitively (`inst1` → `inst1.example.com`).
    /// Fails with `Instance 'X' not known` (`ECODE_NOENT`). If `expected_uuid` is given it
    /// must match (`ECODE_NOTUNIQUE`), as for the opcode's `instance_uuid`.
    pub fn expand_instance(&self, name: &str, expected_uuid: Option<&str>) -> Result<&Instance, OpError> {
        let names: Vec<&str> = self.config.instances.iter().map(|i| i.name.as_str()).collect();
        let full = match_name_component(name, &names).ok_or_else(|| OpError::not_known("Instance", name))?;
        let inst = self.instance(full).expect("matched an existing name");
        if let Some(uuid) = expected_uuid {
            if inst.uuid != uuid {
                return Err(OpError::prereq(
                    Ecode::NotUnique,
                    format!(
                        "The instances UUID '{}' does not match the expected UUID '{uuid}' for \
                         instance '{}'. Maybe the instance changed since you submitted this job.",
                        inst.uuid, inst.name
                    ),
                ));
            }
        }
        Ok(inst)
    }

    /// Ganeti's `ExpandNodeName`, with the same rules and messages as
    /// [`Cluster::expand_instance`] (`Node 'X' not known`).
    pub fn expand_node(&self, name: &str, expected_uuid: Option<&str>) -> Result<&Node, OpError> {
        let names: Vec<&str> = self.config.nodes.iter().map(|n| n.name.as_str()).collect();
        let full = match_name_component(name, &names).ok_or_else(|| OpError::not_known("Node", name))?;
        let node = self.node(full).expect("matched an existing name");
        if let Some(uuid) = expected_uuid {
            if node.uuid != uuid {
                return Err(OpError::prereq(
                    Ecode::NotUnique,
                    format!(
                        "The nodes UUID '{}' does not match the expected UUID '{uuid}' for \
                         node '{}'. Maybe the node changed since you submitted this job.",
                        node.uuid, node.name
                    ),
                ));
            }
        }
        Ok(node)
    }

    /// Resolves a path from the config: absolute as is, relative against the config's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The node's root directory.
    pub fn node_root(&self, node: &Node) -> PathBuf {
        self.resolve(&node.root)
    }

    /// The node's export directory, `<root>/var/lib/ganeti/export`.
    pub fn export_dir(&self, node: &Node) -> PathBuf {
        self.node_root(node).join(EXPORT_SUBDIR)
    }

    /// The node's hooks directory, `<root>/etc/ganeti/hooks`.
    pub fn hooks_dir(&self, node: &Node) -> PathBuf {
        self.node_root(node).join(HOOKS_SUBDIR)
    }

    /// The node's data directory, `<root>/var/lib/ganeti` (`GANETI_DATA_DIR`).
    pub fn data_dir(&self, node: &Node) -> PathBuf {
        self.node_root(node).join(DATA_SUBDIR)
    }

    /// The node's run-time directory, `<root>/var/run/ganeti`.
    pub fn run_dir(&self, node: &Node) -> PathBuf {
        self.node_root(node).join(RUN_SUBDIR)
    }

    /// The node's log directory, `<root>/var/log/ganeti`.
    pub fn log_dir(&self, node: &Node) -> PathBuf {
        self.node_root(node).join(LOG_SUBDIR)
    }

    /// The directory of the cluster's lock files: `[cluster] lock_dir`, or
    /// `<master root>/var/run/ganeti/locks`. Every `diskstream` command working on this cluster
    /// locks there, so they exclude each other.
    pub fn lock_dir(&self) -> PathBuf {
        match &self.config.cluster.lock_dir {
            Some(d) => self.resolve(d),
            None => self.run_dir(self.master()).join("locks"),
        }
    }

    /// The path of a disk's backing file or device.
    pub fn disk_path(&self, disk: &Disk) -> PathBuf {
        self.resolve(&disk.path)
    }

    /// Removes an instance from the config file at `path` (after `--remove-instance`).
    ///
    /// The edit keeps the rest of the file as written, including comments. Fails with
    /// `Instance 'X' not known` if the file no longer has it.
    pub fn remove_instance(path: &Path, name: &str) -> Result<(), OpError> {
        update_file(path, |doc| {
            let removed = doc
                .get_mut("instances")
                .and_then(|item| item.as_array_of_tables_mut())
                .map(|arr| {
                    let before = arr.len();
                    arr.retain(|t| t.get("name").and_then(|v| v.as_str()) != Some(name));
                    before != arr.len()
                })
                .unwrap_or(false);
            if removed {
                Ok(())
            } else {
                Err(OpError::not_known("Instance", name))
            }
        })
    }
}

/// Edits the config file at `path` under an exclusive lock, re-validates it, and replaces it
/// atomically.
///
/// The lock is `flock(2)` on `.<file name>.lock` next to the file, so concurrent edits by
/// several processes serialize and none is lost; the file is re-read inside the lock. An edit
/// that leaves the config invalid is refused and the file is left untouched.
pub fn update_file(
    path: &Path,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), OpError>,
) -> Result<(), OpError> {
    let io_err = |e: io::Error| OpError::config(format!("{}: {e}", path.display()));
    let file_name = path
        .file_name()
        .ok_or_else(|| OpError::config(format!("{}: not a file path", path.display())))?;
    let lock_path = fsutil::parent_dir(path).join(format!(".{}.lock", file_name.to_string_lossy()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io_err(e.into()))?;
    let text = fs::read_to_string(path).map_err(io_err)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| OpError::config(format!("{}: {e}", path.display())))?;
    edit(&mut doc)?;
    let new_text = doc.to_string();
    Cluster::from_str_at(&new_text, path).map_err(OpError::from)?;
    fsutil::atomic_write(path, new_text.as_bytes(), 0o600).map_err(io_err)?;
    drop(lock);
    Ok(())
}

/// Ganeti's `utils.MatchNameComponent(key, names, case_sensitive=False)`.
///
/// Returns the exact match if there is one; otherwise the single name equal to `key` ignoring
/// case, or else the single name that is `key` followed by `.` and anything (ignoring case).
/// Anything ambiguous is `None`.
pub fn match_name_component<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    if let Some(exact) = names.iter().find(|n| **n == key) {
        return Some(exact);
    }
    let key_up = key.to_uppercase();
    let mut filtered = Vec::new();
    let mut string_matches = Vec::new();
    for name in names {
        let up = name.to_uppercase();
        let matches =
            up == key_up || (up.len() > key_up.len() && up.starts_with(&key_up) && up.as_bytes()[key_up.len()] == b'.');
        if matches {
            filtered.push(*name);
            if up == key_up {
                string_matches.push(*name);
            }
        }
    }
    if string_matches.len() == 1 {
        return Some(string_matches[0]);
    }
    if filtered.len() == 1 {
        return Some(filtered[0]);
    }
    None
}

/// A name that is safe as a file name and a lock name: letters, digits, `.`, `_`, `-`, `:`,
/// not starting with `.` or `-`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Why an instance name cannot be used although it is a safe file name: it collides with the
/// names the export store and the snapshots give their own entries (`<name>.new` staging
/// directories, hidden `.<name>.ds-removing-<pid>` directories, `<disk>.ds-snap-<name>-<pid>`
/// snapshots), or `None` if it is fine.
pub fn reserved_instance_name(name: &str) -> Option<String> {
    use crate::export::store::{REMOVING_MARKER, STAGING_SUFFIX};
    use crate::snapshot::SNAP_MARKER;
    if name.ends_with(STAGING_SUFFIX) {
        return Some(format!(
            "ends with '{STAGING_SUFFIX}', the suffix of export staging directories (its export \
             would be hidden from listings and removed as another instance's staging directory)"
        ));
    }
    for marker in [REMOVING_MARKER, SNAP_MARKER] {
        if name.contains(marker) {
            return Some(format!(
                "contains '{marker}', which diskstream uses in the names of its own temporary \
                 directories and snapshots"
            ));
        }
    }
    None
}

fn check_name_len(key: &str, what: &str, name: &str) -> Result<(), Invalid> {
    if name.len() > MAX_NAME_LEN {
        Err(invalid(
            key,
            format!(
                "{what} name '{}...' is {} bytes long; the limit is {MAX_NAME_LEN} bytes",
                name.chars().take(32).collect::<String>(),
                name.len()
            ),
        ))
    } else {
        Ok(())
    }
}

fn check_seconds(key: &str, v: Option<f64>) -> Result<(), Invalid> {
    match v {
        Some(s) if !(s > 0.0 && s <= MAX_HOOKS_SECONDS) => Err(invalid(
            key,
            format!("must be a number of seconds above 0 and at most {MAX_HOOKS_SECONDS} (one week), not {s}"),
        )),
        _ => Ok(()),
    }
}

/// Ganeti's compression tool name pattern (`^[-_a-zA-Z0-9]+$`).
fn is_tool_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

type Invalid = (String, String);

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> Invalid {
    (key.into(), msg.into())
}

fn validate(c: &ClusterConfig) -> Result<(), Invalid> {
    if c.cluster.name.is_empty() {
        return Err(invalid("cluster.name", "must not be empty"));
    }
    check_seconds("cluster.hooks_timeout", c.cluster.hooks_timeout)?;
    check_seconds("cluster.hooks_report_interval", c.cluster.hooks_report_interval)?;
    for (i, tool) in c.cluster.compression_tools.iter().enumerate() {
        if !is_tool_name(tool) {
            return Err(invalid(
                format!("cluster.compression_tools[{i}]"),
                format!("invalid compression tool name '{tool}'"),
            ));
        }
    }

    let mut node_names = HashSet::new();
    let mut uuids = HashSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let key = format!("nodes[{i}]");
        check_name_len(&format!("{key}.name"), "node", &n.name)?;
        if !is_safe_name(&n.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("invalid node name '{}'", n.name),
            ));
        }
        if !node_names.insert(n.name.as_str()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("duplicate node name '{}'", n.name),
            ));
        }
        check_uuid(&mut uuids, &n.uuid, &format!("{key}.uuid"))?;
        if n.root.as_os_str().is_empty() {
            return Err(invalid(format!("{key}.root"), "must not be empty"));
        }
    }
    if !node_names.contains(c.cluster.master.as_str()) {
        return Err(invalid(
            "cluster.master",
            format!("node '{}' is not defined in [[nodes]]", c.cluster.master),
        ));
    }

    let mut inst_names = HashSet::new();
    for (i, inst) in c.instances.iter().enumerate() {
        let key = format!("instances[{i}]");
        validate_instance(inst, &key, &node_names, &mut inst_names, &mut uuids)
            .map_err(|(k, msg)| (k, format!("{msg} (instance '{}')", inst.name)))?;
    }
    Ok(())
}

fn check_uuid<'a>(seen: &mut HashSet<&'a str>, uuid: &'a str, key: &str) -> Result<(), Invalid> {
    if !is_safe_name(uuid) {
        return Err(invalid(key, format!("invalid UUID '{uuid}'")));
    }
    if !seen.insert(uuid) {
        return Err(invalid(key, format!("duplicate UUID '{uuid}'")));
    }
    Ok(())
}

fn validate_instance<'a>(
    inst: &'a Instance,
    key: &str,
    node_names: &HashSet<&str>,
    inst_names: &mut HashSet<&'a str>,
    uuids: &mut HashSet<&'a str>,
) -> Result<(), Invalid> {
    check_name_len(&format!("{key}.name"), "instance", &inst.name)?;
    if !is_safe_name(&inst.name) {
        return Err(invalid(
            format!("{key}.name"),
            format!("invalid instance name '{}'", inst.name),
        ));
    }
    if let Some(why) = reserved_instance_name(&inst.name) {
        return Err(invalid(
            format!("{key}.name"),
            format!("instance name '{}' cannot be used: it {why}", inst.name),
        ));
    }
    if !inst_names.insert(inst.name.as_str()) {
        return Err(invalid(
            format!("{key}.name"),
            format!("duplicate instance name '{}'", inst.name),
        ));
    }
    check_uuid(uuids, &inst.uuid, &format!("{key}.uuid"))?;
    if !node_names.contains(inst.primary_node.as_str()) {
        return Err(invalid(
            format!("{key}.primary_node"),
            format!("node '{}' is not defined in [[nodes]]", inst.primary_node),
        ));
    }
    for (j, s) in inst.secondary_nodes.iter().enumerate() {
        let k = format!("{key}.secondary_nodes[{j}]");
        if !node_names.contains(s.as_str()) {
            return Err(invalid(k, format!("node '{s}' is not defined in [[nodes]]")));
        }
        if *s == inst.primary_node {
            return Err(invalid(k, "the primary node cannot also be a secondary"));
        }
    }
    if inst.os.is_empty() {
        return Err(invalid(format!("{key}.os"), "must not be empty"));
    }
    if inst.hypervisor.is_empty() {
        return Err(invalid(format!("{key}.hypervisor"), "must not be empty"));
    }
    for p in REQUIRED_BEPARAMS {
        match inst.beparams.get(p) {
            Some(ParamValue::Int(v)) if *v >= 0 => {}
            Some(_) => return Err(invalid(format!("{key}.beparams.{p}"), "must be a non-negative integer")),
            None => return Err(invalid(format!("{key}.beparams.{p}"), "is required")),
        }
    }
    if let Some(k) = inst.beparams.keys().find(|k| !KNOWN_BEPARAMS.contains(&k.as_str())) {
        return Err(invalid(
            format!("{key}.beparams.{k}"),
            format!("unknown backend parameter '{k}' (known: {})", KNOWN_BEPARAMS.join(", ")),
        ));
    }
    if inst.nics.len() > MAX_NICS {
        return Err(invalid(
            format!("{key}.nics"),
            format!("at most {MAX_NICS} NICs are allowed"),
        ));
    }
    if inst.disks.len() > MAX_DISKS {
        return Err(invalid(
            format!("{key}.disks"),
            format!("at most {MAX_DISKS} disks are allowed"),
        ));
    }
    let mut nic_names = HashSet::new();
    for (j, nic) in inst.nics.iter().enumerate() {
        if let Some(name) = &nic.name {
            if !nic_names.insert(name.as_str()) {
                return Err(invalid(
                    format!("{key}.nics[{j}].name"),
                    format!("duplicate NIC name '{name}'"),
                ));
            }
        }
        if let Some(uuid) = &nic.uuid {
            check_uuid(uuids, uuid, &format!("{key}.nics[{j}].uuid"))?;
        }
    }
    let mut disk_names = HashSet::new();
    for (j, d) in inst.disks.iter().enumerate() {
        let dk = format!("{key}.disks[{j}]");
        check_uuid(uuids, &d.uuid, &format!("{dk}.uuid"))?;
        if let Some(name) = &d.name {
            check_name_len(&format!("{dk}.name"), "disk", name)?;
            if !disk_names.insert(name.as_str()) {
                return Err(invalid(format!("{dk}.name"), format!("duplicate disk name '{name}'")));
            }
        }
        if d.size == 0 {
            return Err(invalid(format!("{dk}.size"), "must be at least 1 (MiB)"));
        }
        if d.size > MAX_DISK_SIZE_MIB {
            return Err(invalid(
                format!("{dk}.size"),
                format!(
                    "{} MiB is absurd: the largest disk size accepted is {MAX_DISK_SIZE_MIB} MiB (8 PiB)",
                    d.size
                ),
            ));
        }
        check_snapshot_name_len(inst, d, &dk)?;
        if d.path.as_os_str().is_empty() {
            return Err(invalid(format!("{dk}.path"), "must not be empty"));
        }
        if d.mode != "rw" && d.mode != "ro" {
            return Err(invalid(
                format!("{dk}.mode"),
                format!("must be 'rw' or 'ro', not '{}'", d.mode),
            ));
        }
    }
    match &inst.driver {
        Some(Driver::Process { start }) => check_command(start, &format!("{key}.driver.start"))?,
        Some(Driver::Command { start, stop, status }) => {
            check_command(start, &format!("{key}.driver.start"))?;
            check_command(stop, &format!("{key}.driver.stop"))?;
            check_command(status, &format!("{key}.driver.status"))?;
        }
        None => {}
    }
    Ok(())
}

/// The snapshot of a disk is named `<disk file or LV>.ds-snap-<instance>-<pid>`: it must fit a
/// file name (255 bytes) or an LVM name (127 bytes), else the export would fail at the snapshot.
fn check_snapshot_name_len(inst: &Instance, d: &Disk, dk: &str) -> Result<(), Invalid> {
    let (limit, what) = match d.template {
        DiskTemplate::File => (255, "a file name (255 bytes)"),
        DiskTemplate::Plain => (127, "an LVM volume name (127 bytes)"),
        DiskTemplate::Blockdev => return Ok(()),
    };
    let base = d.path.file_name().map_or(0, |b| b.len());
    let snap = crate::snapshot::snapshot_name(&"x".repeat(base), &inst.name, u32::MAX).len();
    if snap > limit {
        return Err(invalid(
            format!("{dk}.path"),
            format!(
                "the disk's snapshot name (<disk>{}<instance>-<pid>) would be {snap} bytes, longer than \
                 {what}: shorten the disk's file name or the instance name",
                crate::snapshot::SNAP_MARKER
            ),
        ));
    }
    Ok(())
}

fn check_command(c: &CommandSpec, key: &str) -> Result<(), Invalid> {
    let empty = match c {
        CommandSpec::Shell(s) => s.trim().is_empty(),
        CommandSpec::Argv(v) => v.first().is_none_or(|p| p.is_empty()),
    };
    if empty {
        Err(invalid(key, "the command must not be empty"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_name_component_follows_ganeti() {
        let names = ["inst1.example.com", "inst10.example.com", "Other.example.com"];
        let m = |k| match_name_component(k, &names);
        assert_eq!(m("inst1.example.com"), Some("inst1.example.com"));
        assert_eq!(m("inst1"), Some("inst1.example.com"));
        assert_eq!(m("inst10"), Some("inst10.example.com"));
        assert_eq!(m("inst1.example"), Some("inst1.example.com"));
        assert_eq!(m("INST1"), Some("inst1.example.com"));
        assert_eq!(m("other"), Some("Other.example.com"));
        assert_eq!(m("inst"), None);
        assert_eq!(m("example.com"), None);
        assert_eq!(m(""), None);
        // Ambiguous prefixes match nothing.
        let names = ["a.x.com", "a.y.com"];
        assert_eq!(match_name_component("a", &names), None);
        assert_eq!(match_name_component("a.x", &names), Some("a.x.com"));
    }

    #[test]
    fn python_str_of_params() {
        assert_eq!(ParamValue::Bool(true).python_str(), "True");
        assert_eq!(ParamValue::Bool(false).python_str(), "False");
        assert_eq!(ParamValue::Int(-3).python_str(), "-3");
        assert_eq!(ParamValue::Float(0.5).python_str(), "0.5");
        assert_eq!(ParamValue::Float(2.0).python_str(), "2.0");
        assert_eq!(ParamValue::Str("x y".into()).python_str(), "x y");
    }

    #[test]
    fn disk_template_of_sets() {
        use DiskTemplate::*;
        assert_eq!(disk_template_of([]), "diskless");
        assert_eq!(disk_template_of([Plain, Plain]), "plain");
        assert_eq!(disk_template_of([File, Plain]), "mixed");
        assert_eq!(disk_template_of([Blockdev]), "blockdev");
    }
}
