//! The operations an export asks of a node: the seam between the LUs and the machines.
//!
//! Ganeti's LUs never touch a disk themselves: they call RPCs on the nodes (`instance_shutdown`,
//! `blockdev_snapshot`, `export_start`/`import_start`, `finalize_export`, `export_list`, ...).
//! [`NodeOps`] is that set of calls. Every method names the node it acts on, takes and returns
//! plain data (names, indices, the cluster config's own identifiers; never a path the caller
//! made up), so the next step can serve it from an agent per node; disk data then goes
//! straight from the primary's agent to the target's ([`NodeOps::send_disk`] is one call).
//!
//! * [`local::LocalNodeOps`] runs every node's operation on this machine, from the cluster
//!   config's node roots (today's deployment, and the root end-to-end tests).
//! * [`fake::FakeNodes`] records the calls in order and answers from a script: Ganeti's Exec
//!   matrix runs against it as plain unit tests.

pub mod fake;
pub mod local;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use diskstream_engine::buf::Pages;
use diskstream_engine::digest::Checksum;
use diskstream_engine::ops::Report;
use serde::{Deserialize, Serialize};

use crate::driver::DriverError;
use crate::export::cleanup::{CleanupError, Keep, NodeListing};
use crate::export::export_id::ExportId;
use crate::export::store::{Finalized, StoreError};
use crate::hooks::env::Env;
use crate::hooks::{HookResult, Note, Phase};
use crate::snapshot::{Capability, SnapshotError, Stale};

/// A snapshot a node made of one of an instance's disks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The instance.
    pub instance: String,
    /// The disk index.
    pub disk: usize,
    /// The snapshot's name on its node (a file name or `vg/lv`), for messages.
    pub name: String,
}

/// What a disk transfer reads on the primary node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskSource {
    /// The disk itself (the instance is down, or cannot be snapshotted).
    Disk,
    /// A snapshot of the disk.
    Snapshot(SnapshotRef),
}

/// One disk transfer: from `source_node` into the staging export of `instance` on
/// `target_node`, as the dump file `dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendDisk {
    /// The node that reads (the instance's primary).
    pub source_node: String,
    /// The instance.
    pub instance: String,
    /// The disk index.
    pub disk: usize,
    /// The disk or its snapshot.
    pub source: DiskSource,
    /// The node that writes (the export's target), into its open staging export.
    pub target_node: String,
    /// The dump's file name in the export (a UUID, as Ganeti names them).
    pub dump: String,
    /// What the engine's buffers are made of.
    #[serde(with = "serde_pages")]
    pub pages: Pages,
    /// The chunk digest recorded in the dump's manifest.
    #[serde(with = "serde_checksum")]
    pub checksum: Checksum,
    /// Bytes of disk data per second this disk may move (`None`: unlimited).
    pub bwlimit: Option<u64>,
    /// Whether data chunks travel lz4-compressed (`--transport-compression` other than `none`);
    /// what lands on the target is the same raw dump either way.
    #[serde(default)]
    pub lz4: bool,
    /// With `lz4`: only while compressing makes the stream faster (`--transport-compression
    /// auto`; the sender measures both and keeps the faster).
    #[serde(default)]
    pub lz4_auto: bool,
}

/// How far a disk transfer is, updated by the node while it runs.
#[derive(Debug, Default)]
pub struct TransferProgress {
    /// Bytes of the disk processed so far (the engine's progress counter).
    pub done: Arc<AtomicU64>,
    /// The disk's size in bytes, once the node knows it (0 before).
    pub total: AtomicU64,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Starting, stopping or querying the instance failed.
    #[error("{0}")]
    Driver(#[from] DriverError),
    /// A snapshot could not be made or removed.
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    /// The export store could not be read or changed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// An old export could not be removed.
    #[error("{0}")]
    Cleanup(#[from] CleanupError),
    /// A disk's backing file or device is missing (the disks cannot be activated).
    #[error("{} does not exist", path.display())]
    DiskMissing {
        /// The backing file or device.
        path: PathBuf,
    },
    /// A disk's backing file or device could not be read or removed.
    #[error("{}: {source}", path.display())]
    Disk {
        /// The backing file or device.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A read or a tool (e.g. `lvremove`) failed at the system level.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// A tool the node runs failed.
    #[error("{command}: {status}")]
    ToolFailed {
        /// The tool and its argument.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The node, instance, snapshot or staging export named is not known there.
    #[error("{0}")]
    Unknown(String),
    /// Any other failure the node reported (a fake's scripted failure, later a transport error).
    #[error("{0}")]
    Failed(String),
}

/// Why a disk transfer failed. The engine's error is kept whole, so that damaged data can be
/// told from an unreachable node (`OpError::is_integrity`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The engine failed (including [`diskstream_engine::Error::Cancelled`] on SIGINT/SIGTERM).
    #[error("{0}")]
    Engine(#[source] diskstream_engine::Error),
    /// The staging export could not be opened on the target, so nothing was sent.
    #[error("{0}")]
    NotStaged(#[source] Arc<NodeError>),
    /// The transfer was never started (the export was stopped first).
    #[error("transfer did not run")]
    NotRun,
    /// A node could not take part (unknown snapshot or staging export, a failure it reported).
    #[error("{0}")]
    Node(#[source] Box<NodeError>),
}

impl TransferError {
    /// The engine's error, if the engine failed.
    pub fn engine_error(&self) -> Option<&diskstream_engine::Error> {
        match self {
            Self::Engine(e) => Some(e),
            _ => None,
        }
    }
}

/// Serialized as its message (how the CLI's JSON shows a failed disk).
impl Serialize for TransferError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<NodeError> for TransferError {
    fn from(e: NodeError) -> Self {
        Self::Node(Box::new(e))
    }
}

/// What one node does for the LUs. Every method names the node it acts on.
pub trait NodeOps: Sync {
    /// Runs the hook directory `<hpath>-<phase>.d` of `node` with `env`; `report` hears of
    /// scripts that run long.
    fn run_hooks(&self, node: &str, hpath: &str, phase: Phase, env: &Env, report: &dyn Fn(Note)) -> Vec<HookResult>;

    /// Whether `instance` runs on `node`.
    fn instance_running(&self, node: &str, instance: &str) -> Result<bool, NodeError>;
    /// Stops `instance` on `node`, forcibly after `timeout` (at once once the operation is
    /// stopped by SIGINT/SIGTERM).
    fn stop_instance(&self, node: &str, instance: &str, timeout: Duration) -> Result<(), NodeError>;
    /// Starts `instance` on `node`.
    fn start_instance(&self, node: &str, instance: &str) -> Result<(), NodeError>;
    /// Forgets the run-time state of a removed `instance` on `node` (its pid file).
    fn forget_instance(&self, node: &str, instance: &str);

    /// The size in bytes of disk `disk`'s backing file or device on `node`; `None` if missing.
    fn backing_size(&self, node: &str, instance: &str, disk: usize) -> Result<Option<u64>, NodeError>;
    /// Activates `instance`'s disks on `node` (checks that every backing file or device exists).
    fn activate_disks(&self, node: &str, instance: &str) -> Result<(), NodeError>;
    /// Removes `instance`'s disks on `node` (never an adopted block device); the failures, by
    /// disk index.
    fn remove_disks(&self, node: &str, instance: &str) -> Vec<(usize, NodeError)>;

    /// Removes the snapshots of `instance`'s disks that killed runs left on `node`.
    fn sweep_stale_snapshots(&self, node: &str, instance: &str) -> Vec<Stale>;
    /// Whether disk `disk` of `instance` can be snapshotted on `node`.
    fn snapshot_capability(&self, node: &str, instance: &str, disk: usize) -> Capability;
    /// Snapshots disk `disk` of `instance` on `node`.
    fn create_snapshot(&self, node: &str, instance: &str, disk: usize) -> Result<SnapshotRef, NodeError>;
    /// Removes a snapshot made by [`NodeOps::create_snapshot`] on `node`.
    fn remove_snapshot(&self, node: &str, snapshot: &SnapshotRef) -> Result<(), NodeError>;

    /// Opens a fresh staging export of `instance` on `node` (clearing a stale one); the bytes
    /// free for it on the file system of the export directory, where the node tells (an
    /// agent of an earlier release does not).
    fn begin_export(&self, node: &str, instance: &str) -> Result<Option<u64>, NodeError>;
    /// Sends one disk from `req.source_node` into the staging export on `req.target_node`,
    /// updating `progress` as it goes; the engine's report of the dump and its manifest.
    fn send_disk(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError>;
    /// Writes `config_ini` and the export's `id` into the staging export of `instance` on
    /// `node` and swaps it in atomically; the final export directory (and what went wrong
    /// once it was in place).
    fn finalize_export(
        &self,
        node: &str,
        instance: &str,
        config_ini: &str,
        id: &ExportId,
    ) -> Result<Finalized, NodeError>;
    /// Removes the staging export of `instance` on `node` (a failed or stopped export).
    fn abandon_export(&self, node: &str, instance: &str);
    /// Removes what killed runs left of `instance`'s exports on `node` (staging and
    /// half-removed directories).
    fn sweep_export_leftovers(&self, node: &str, instance: &str);

    /// The exports on `node`, sorted (Ganeti's `ListExports`).
    fn list_exports(&self, node: &str) -> Result<Vec<String>, NodeError>;
    /// `node`'s export directory as the cleanup plan needs it (identities, leftovers).
    fn export_listing(&self, node: &str, instance: &str) -> NodeListing;
    /// Removes `instance`'s export on `node` unless it is `keep` (the export just written, seen
    /// through a shared directory: by identity or by its id). `Ok(false)` if there was nothing
    /// to remove.
    fn remove_export(&self, node: &str, instance: &str, keep: &Keep) -> Result<bool, NodeError>;
}

mod serde_pages {
    use diskstream_engine::buf::Pages;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Pages, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match p {
            Pages::Hugetlb => "hugetlb",
            _ => "thp",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pages, D::Error> {
        match String::deserialize(d)?.as_str() {
            "thp" => Ok(Pages::Thp),
            "hugetlb" => Ok(Pages::Hugetlb),
            other => Err(serde::de::Error::custom(format!("unknown pages '{other}'"))),
        }
    }
}

mod serde_checksum {
    use diskstream_engine::digest::Checksum;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Checksum, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        let name = String::deserialize(d)?;
        Checksum::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown checksum '{name}'")))
    }
}
