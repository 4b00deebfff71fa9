//! Where things live: a node's directories under its root (laid out like Ganeti's virtual
//! cluster `GANETI_ROOTDIR`), disk paths and the lock directory, all resolved against the
//! config file's directory.

use std::path::{Path, PathBuf};

use super::{Cluster, Disk, Node};

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

impl Cluster {
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

    /// The cluster PKI directory: `[cluster] pki`, or `<config dir>/pki`.
    pub fn pki_dir(&self) -> PathBuf {
        match &self.config.cluster.pki {
            Some(d) => self.resolve(d),
            None => self.resolve(Path::new("pki")),
        }
    }

    /// Whether any node has an agent `address` (the export then goes through agents).
    pub fn has_agents(&self) -> bool {
        self.config.nodes.iter().any(|n| n.address.is_some())
    }

    /// The path of a disk's backing file or device.
    pub fn disk_path(&self, disk: &Disk) -> PathBuf {
        self.resolve(&disk.path)
    }
}
