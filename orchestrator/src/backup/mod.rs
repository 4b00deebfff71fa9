//! `LUBackupExport` and `LUBackupRemove` (Ganeti's `lib/cmdlib/backup.py`) plus export listing.
//!
//! [`ExportLu`] is the export as a [`crate::lu::LogicalUnit`]: Ganeti's checks and messages in
//! CheckArguments / ExpandNames / CheckPrereq ([`export_lu`]), the hooks environment, and an
//! Exec ([`exec`]) that follows Ganeti's matrix (reference §2.6): shut down, snapshot, restart
//! right after the snapshots, transfer ([`transfer`]: one dump and its manifest per disk, in up
//! to `max_parallel_disks` threads), remove each snapshot as soon as its disk is done, finalize
//! atomically, deactivate, remove the instance if asked, and remove the instance's old exports
//! on the other nodes. Its locks: the instance (exclusive), its primary node and the target
//! node (exclusive) — not every node (see `docs/ganeti-compat.md` #1) — and, for the cleanup
//! only, the nodes whose old exports are removed.
//!
//! Everything that touches a node goes through [`crate::node::NodeOps`], so the whole matrix
//! runs against [`crate::node::fake::FakeNodes`] in the unit tests of [`tests`].
//! [`RemoveLu`] is `gnt-backup remove` ([`remove_lu`]); [`list()`] and [`format_table`] are
//! `gnt-backup list` ([`list`]).

pub mod exec;
pub mod export_lu;
pub mod list;
pub mod remove_lu;
pub mod result;
pub mod transfer;

#[cfg(test)]
mod tests;

use std::time::Duration;

use diskstream_engine::buf::Pages;
use diskstream_engine::digest::Checksum;

pub use export_lu::{ExportLu, ExportPrereq};
pub use list::{format_table, list, list_on, NodeExports};
pub use remove_lu::{RemoveLu, RemovePrereq, RemoveResult};
pub use result::{DiskResult, ExportResult};
pub use transfer::DiskFailures;

pub use crate::lu::{run_on_cluster, run_on_cluster_with, RunOptions};

/// Ganeti's `defaultShutdownTimeout` (seconds).
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 120;

/// Ganeti's `EXPORT_MODES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMode {
    /// To a node of this cluster.
    Local,
    /// To another cluster (not supported).
    Remote,
}

/// `--transport-compression auto`: lz4 on the wire only while it makes the transfer faster (the
/// sender measures the rate with and without and keeps the faster; ours, not a Ganeti tool name,
/// so always allowed).
pub const AUTO_COMPRESSION: &str = "auto";

/// The fields of `OpBackupExport` (with Ganeti's defaults) plus diskstream's own knobs.
#[derive(Debug, Clone)]
pub struct ExportOp {
    /// The instance (short names are expanded).
    pub instance_name: String,
    /// If given, must be the instance's UUID.
    pub instance_uuid: Option<String>,
    /// The target node (short names are expanded).
    pub target_node: String,
    /// If given, must be the target's UUID.
    pub target_node_uuid: Option<String>,
    /// Shut the instance down for the export (`--noshutdown` clears it).
    pub shutdown: bool,
    /// Seconds to wait for a clean shutdown before killing.
    pub shutdown_timeout: u64,
    /// Remove the instance after a successful export.
    pub remove_instance: bool,
    /// Only warn if the instance's disks cannot be removed.
    pub ignore_remove_failures: bool,
    /// Allow the instance to stay down for the whole transfer when snapshots are impossible.
    pub long_sleep: bool,
    /// Transport compression: `none`, [`AUTO_COMPRESSION`], or one of the cluster's
    /// `compression_tools` (then lz4 on the wire; the dumps are raw whatever travels).
    pub compress: String,
    /// Local or remote.
    pub mode: ExportMode,
    /// `--zero-free-space` (refused).
    pub zero_free_space: bool,
    /// `--zeroing-timeout-fixed`.
    pub zeroing_timeout_fixed: Option<u64>,
    /// `--zeroing-timeout-per-mib`.
    pub zeroing_timeout_per_mib: Option<f64>,
    /// Disks transferred at the same time (at least 1).
    pub max_parallel_disks: usize,
    /// What the engine's buffers are made of (`--hugetlb`: reserved hugetlb pages when free).
    pub pages: Pages,
    /// The chunk digest recorded in each dump's manifest (`--checksum`; BLAKE3 by default).
    pub checksum: Checksum,
    /// How often a transfer reports progress.
    pub progress_interval: Duration,
    /// `--bwlimit`: bytes of disk data per second for the whole export, shared evenly by the
    /// disks transferred at the same time; `None` or `Some(0)` is no limit.
    pub bwlimit: Option<u64>,
}

impl ExportOp {
    /// An export of `instance` to `target` with Ganeti's defaults.
    pub fn new(instance: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            instance_name: instance.into(),
            instance_uuid: None,
            target_node: target.into(),
            target_node_uuid: None,
            shutdown: true,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            remove_instance: false,
            ignore_remove_failures: false,
            long_sleep: false,
            compress: "none".into(),
            mode: ExportMode::Local,
            zero_free_space: false,
            zeroing_timeout_fixed: None,
            zeroing_timeout_per_mib: None,
            max_parallel_disks: 1,
            pages: Pages::Thp,
            checksum: Checksum::default(),
            bwlimit: None,
            progress_interval: Duration::from_secs(5),
        }
    }
}
