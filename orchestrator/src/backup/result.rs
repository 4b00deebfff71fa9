//! What an export returns: Ganeti's `(fin_resu, dresults)` plus where and what was written,
//! serialized with the field names of the CLI's `--json` result.

use std::path::PathBuf;

use diskstream_engine::ops::Report;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;

use crate::export::export_id::ExportId;
use crate::node::TransferError;

/// One disk's transfer.
#[derive(Debug)]
pub struct DiskResult {
    /// Disk index.
    pub index: usize,
    /// `disk/I` or `snapshot/I`.
    pub label: String,
    /// Whether a snapshot was transferred.
    pub snapshot: bool,
    /// The dump file name (a fresh UUID).
    pub dump: String,
    /// The dump's path in the final export directory.
    pub path: PathBuf,
    /// The engine's report, or why the disk was not exported (the engine's error kept whole).
    pub report: Result<Report, TransferError>,
}

/// A sent disk as the CLI's JSON shows it.
#[derive(Serialize, JsonSchema)]
struct SentJson<'a> {
    index: usize,
    label: &'a str,
    snapshot: bool,
    dump: &'a str,
    path: &'a PathBuf,
    manifest: PathBuf,
    disk_size: u64,
    bytes_stored: u64,
    zero_bytes_skipped: u64,
    checksum: &'static str,
    digest: &'a str,
    elapsed_s: f64,
    throughput_bytes_per_s: f64,
    buffer_pages: Option<&'static str>,
    warnings: &'a [String],
    /// What the stream carried, for a disk sent between two nodes' agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    wire: Option<diskstream_engine::report::WireStats>,
}

/// A failed disk as the CLI's JSON shows it.
#[derive(Serialize, JsonSchema)]
struct FailedJson<'a> {
    index: usize,
    label: &'a str,
    /// Why the disk was not exported (the error's message).
    #[schemars(with = "String")]
    error: &'a TransferError,
}

/// A disk in the CLI's JSON: sent, or failed (the schema of [`DiskResult`]'s `Serialize`).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DiskJson<'a> {
    /// The disk was exported.
    Sent(SentJson<'a>),
    /// It was not.
    Failed(FailedJson<'a>),
}

impl JsonSchema for DiskResult {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DiskResult".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        DiskJson::json_schema(generator)
    }
}

impl Serialize for DiskResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.report {
            Ok(rep) => SentJson {
                index: self.index,
                label: &self.label,
                snapshot: self.snapshot,
                dump: &self.dump,
                path: &self.path,
                manifest: self.path.with_file_name(format!("{}.manifest", self.dump)),
                disk_size: rep.disk_size,
                bytes_stored: rep.bytes_stored,
                zero_bytes_skipped: rep.zero_bytes,
                checksum: rep.checksum.name(),
                digest: &rep.digest,
                elapsed_s: rep.elapsed.as_secs_f64(),
                throughput_bytes_per_s: rep.throughput(),
                buffer_pages: rep.buffer_pages,
                warnings: &rep.warnings,
                wire: rep.wire,
            }
            .serialize(s),
            Err(error) => FailedJson {
                index: self.index,
                label: &self.label,
                error,
            }
            .serialize(s),
        }
    }
}

/// What an export did: Ganeti's `(fin_resu, dresults)` plus where and what was written.
#[derive(Debug)]
pub struct ExportResult {
    /// Whether finalization succeeded.
    pub fin_resu: bool,
    /// One success flag per disk.
    pub dresults: Vec<bool>,
    /// The instance name.
    pub instance: String,
    /// The target node name.
    pub target_node: String,
    /// The export directory (final).
    pub export_dir: PathBuf,
    /// The export's id (in its `diskstream-export-id` file).
    pub export_id: ExportId,
    /// Per disk.
    pub disks: Vec<DiskResult>,
    /// Whether the instance was removed.
    pub instance_removed: bool,
    /// Nodes whose old export was removed.
    pub removed_old: Vec<String>,
    /// Nodes whose export directory is the target's (shared), left alone.
    pub shared_nodes: Vec<String>,
    /// What went wrong without failing the export (also in the job's log as warnings).
    pub warnings: Vec<String>,
}

/// An export as the CLI's `--json` result shows it (the body of its envelope, which adds
/// `schema_version`, `ok` and `op`).
#[derive(Serialize, JsonSchema)]
struct ExportJson<'a> {
    /// Ganeti's `(fin_resu, dresults)`.
    result: (bool, &'a [bool]),
    instance: &'a str,
    target_node: &'a str,
    export_dir: &'a PathBuf,
    /// The export's id, a random UUID, also in its `diskstream-export-id` file: what tells
    /// this export apart from any other, on every node that sees it.
    export_id: &'a str,
    disks: &'a [DiskResult],
    instance_removed: bool,
    removed_old_exports: &'a [String],
    shared_export_dir_nodes: &'a [String],
    /// What went wrong without failing the export: the target's export directory not synced
    /// after the new export was swapped in, an old export on another node that could not be
    /// removed. Also in the job's log as warnings.
    warnings: &'a [String],
}

impl Serialize for ExportResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ExportJson {
            result: (self.fin_resu, &self.dresults),
            instance: &self.instance,
            target_node: &self.target_node,
            export_dir: &self.export_dir,
            export_id: self.export_id.as_str(),
            disks: &self.disks,
            instance_removed: self.instance_removed,
            removed_old_exports: &self.removed_old,
            shared_export_dir_nodes: &self.shared_nodes,
            warnings: &self.warnings,
        }
        .serialize(s)
    }
}

impl JsonSchema for ExportResult {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ExportResult".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        ExportJson::json_schema(generator)
    }
}
