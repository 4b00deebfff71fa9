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
//!
//! The module is split along jobs: [`schema`] is the file's shape (serde types), [`validate`]
//! checks a parsed file, [`layout`] is where things live under a node's root, `paths` checks
//! that no two disks share a backing file, [`edit`] changes the file in place under a lock.

mod edit;
mod layout;
mod paths;
pub mod schema;
pub mod validate;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Ecode, OpError};
use crate::fsutil;

pub use edit::{update_file, ConfigEdit};
pub use layout::{DATA_SUBDIR, EXPORT_SUBDIR, HOOKS_SUBDIR, LOG_SUBDIR, RUN_SUBDIR};
pub use schema::*;
pub use validate::{
    is_param_name, is_safe_name, match_name_component, reserved_disk_path, reserved_instance_name, Invalid,
    KNOWN_BEPARAMS, MAX_DISKS, MAX_DISK_SIZE_MIB, MAX_HOOKS_SECONDS, MAX_NAME_LEN, MAX_NICS, REQUIRED_BEPARAMS,
};

/// The default per-script hook timeout: Ganeti's `RPC_TMO_NORMAL` (15 minutes), which in Ganeti
/// bounds the whole hooks RPC of a node.
pub const DEFAULT_SCRIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How often a hook script that is still running is reported by default.
pub const DEFAULT_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

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
        let op = OpError::config(e.to_string());
        match e {
            // Read or refused unread: the error's source says so (`OpError::ganeti_report`).
            ConfigError::Io { source, .. } => op.with_source(source),
            _ => op,
        }
    }
}

/// A loaded and validated cluster configuration.
#[derive(Debug, Clone)]
pub struct Cluster {
    path: PathBuf,
    base_dir: PathBuf,
    config: ClusterConfig,
}

/// The largest config file read: tens of thousands of instances fit in a few MiB.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// How much of one line of the file a parse error quotes.
const QUOTE_CHARS: usize = 200;

/// Refuses a config file that someone else could have written (`m` is the file's metadata): it
/// names the commands that start and stop instances and where hooks run from, which run as
/// this user (root on a node). It must belong to this user or root and be writable by no one
/// else, and so must the directory that holds it (whoever can write there can rename another
/// file over it), unless that directory is sticky (`/tmp`: others cannot replace our file).
fn check_trusted(path: &Path, m: &fs::Metadata) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| ConfigError::Io {
        file: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{why}; it says which commands run as this user (instance start and stop), so it must be \
                 this user's or root's and writable by no one else"
            ),
        ),
    };
    if let Some(why) = fsutil::untrusted(m) {
        return Err(refuse(why));
    }
    let dir = fsutil::parent_dir(path);
    let d = fs::metadata(dir).map_err(|source| ConfigError::Io {
        file: dir.to_path_buf(),
        source,
    })?;
    let sticky = d.mode() & 0o1000 != 0;
    match fsutil::untrusted(&d) {
        Some(why) if !(sticky && why.starts_with("mode")) => {
            Err(refuse(format!("its directory {} is {why}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// The text of the config file at `path`: a regular file (opened without blocking, so a FIFO
/// is refused, not waited on), trusted ([`check_trusted`]), at most [`MAX_CONFIG_BYTES`], UTF-8
/// without NUL bytes (each refusal names the line and byte).
fn read_config(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let at = |source: io::Error| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    };
    let bad = |msg: String| ConfigError::Parse {
        file: path.to_path_buf(),
        msg,
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(at)?;
    let m = f.metadata().map_err(at)?;
    if !m.is_file() {
        return Err(at(io::Error::other(format!(
            "not a regular file ({}); a cluster config is a TOML file",
            diskstream_engine::input::kind_name(&m.file_type())
        ))));
    }
    check_trusted(path, &m)?;
    if m.len() > MAX_CONFIG_BYTES {
        return Err(bad(format!(
            "{} bytes: larger than any cluster config ({MAX_CONFIG_BYTES} bytes at most)",
            m.len()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(at)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(bad(format!("grew past {MAX_CONFIG_BYTES} bytes while it was read")));
    }
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        return Err(bad(format!(
            "a NUL byte at line {}, byte offset {i}: not a TOML text file",
            line_of(&bytes, i)
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        let i = e.utf8_error().valid_up_to();
        bad(format!(
            "not UTF-8 at line {}, byte offset {i}: TOML files are UTF-8",
            line_of(e.as_bytes(), i)
        ))
    })
}

/// The line (from 1) of `bytes` that holds byte `offset`.
fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `msg` (a TOML parse error, which quotes the offending line) with every line cut to
/// [`QUOTE_CHARS`] characters.
fn quote_short(msg: &str) -> String {
    msg.trim_end()
        .lines()
        .map(|l| match l.char_indices().nth(QUOTE_CHARS) {
            Some((i, _)) => format!("{}… (line cut)", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Cluster {
    /// Loads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = read_config(&path)?;
        Self::from_str_at(&text, path)
    }

    /// Parses and validates `text` as if it were the content of `path`.
    pub fn from_str_at(text: &str, path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.clone(),
            msg: quote_short(&e.to_string()),
        })?;
        validate::validate(&config).map_err(|Invalid { key, msg }| ConfigError::Invalid {
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
        let cluster = Self { path, base_dir, config };
        cluster
            .check_disk_paths()
            .and_then(|()| cluster.check_export_dirs())
            .map_err(|Invalid { key, msg }| ConfigError::Invalid {
                file: cluster.path.clone(),
                key,
                msg,
            })?;
        Ok(cluster)
    }

    /// The config file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// A digest of what the config says about the cluster (not of how it is written: comments
    /// and layout do not count; nor what is each machine's own view: the nodes' `address`es,
    /// which a master on a primary's machine leaves out to run it in-process, the lock
    /// directory and the PKI path): the master sends it with every call, and an agent whose
    /// copy says something else refuses to act on it (`docs/data-plane.md`, "One config").
    pub fn digest(&self) -> String {
        let mut shared = self.config.clone();
        shared.cluster.lock_dir = None;
        shared.cluster.pki = None;
        for n in &mut shared.nodes {
            n.address = None;
        }
        // A config that was parsed serializes; were it ever not to, its Debug form (maps keep
        // the file's order) says the same on master and agent.
        let bytes = toml::to_string(&shared)
            .unwrap_or_else(|_| format!("{shared:?}"))
            .into_bytes();
        let hex = diskstream_engine::digest::hex(&diskstream_engine::digest::sha256(&bytes));
        hex[..32].to_string()
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
            .map_or(DEFAULT_SCRIPT_TIMEOUT, std::time::Duration::from_secs_f64)
    }

    /// How often a running hook script is reported (`[cluster] hooks_report_interval`, else
    /// every 60 s).
    pub fn hooks_report_interval(&self) -> std::time::Duration {
        self.config
            .cluster
            .hooks_report_interval
            .map_or(DEFAULT_REPORT_INTERVAL, std::time::Duration::from_secs_f64)
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
        check_expected_uuid("instance", &inst.uuid, &inst.name, expected_uuid)?;
        Ok(inst)
    }

    /// Ganeti's `ExpandNodeName`, with the same rules and messages as
    /// [`Cluster::expand_instance`] (`Node 'X' not known`).
    pub fn expand_node(&self, name: &str, expected_uuid: Option<&str>) -> Result<&Node, OpError> {
        let names: Vec<&str> = self.config.nodes.iter().map(|n| n.name.as_str()).collect();
        let full = match_name_component(name, &names).ok_or_else(|| OpError::not_known("Node", name))?;
        let node = self.node(full).expect("matched an existing name");
        check_expected_uuid("node", &node.uuid, &node.name, expected_uuid)?;
        Ok(node)
    }
}

/// The opcode's `instance_uuid` / `node_uuid` check: the expanded entity must have the UUID the
/// job was submitted for (`ECODE_NOTUNIQUE`, Ganeti's message).
fn check_expected_uuid(kind: &str, uuid: &str, name: &str, expected: Option<&str>) -> Result<(), OpError> {
    match expected {
        Some(want) if want != uuid => Err(OpError::prereq(
            Ecode::NotUnique,
            format!(
                "The {kind}s UUID '{uuid}' does not match the expected UUID '{want}' for {kind} '{name}'. \
                 Maybe the {kind} changed since you submitted this job."
            ),
        )),
        _ => Ok(()),
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

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn nodes(a: &str, b: &str) -> String {
        format!(
            "[cluster]\nname = \"c.test\"\nmaster = \"{a}\"\n\
             [[nodes]]\nname = \"{a}\"\nuuid = \"u1\"\nroot = \"n1\"\n\
             [[nodes]]\nname = \"{b}\"\nuuid = \"u2\"\nroot = \"n2\"\n"
        )
    }

    #[test]
    fn node_names_that_differ_only_in_case_or_a_final_dot_are_one_name() {
        // Certificates name nodes as DNS does, without case: `Node1` would pass a handshake as
        // `node1`, so a config holding both is refused where it is loaded.
        Cluster::from_str_at(&nodes("node1.test", "node2.test"), "/c.toml").expect("distinct names");
        for (a, b) in [
            ("node1.test", "NODE1.test"),
            ("node1.test", "node1.test."),
            ("n.test", "n.test"),
        ] {
            let e = Cluster::from_str_at(&nodes(a, b), "/c.toml").expect_err(b).to_string();
            assert!(
                e.contains("nodes[1].name") && e.contains("duplicate node name"),
                "{a} {b}: {e}"
            );
        }
    }
}
