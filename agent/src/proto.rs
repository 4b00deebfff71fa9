//! The agent's control protocol: one [`Call`] per [`NodeOps`] method, sent as the JSON body of
//! `POST /v1/<method>` over HTTP/2 on mutual TLS, answered by a [`Reply`]; and the first line
//! of a data connection ([`data_hello`]).
//!
//! Every call names the node it acts on (and the agent refuses any other), takes the cluster
//! config's own identifiers (instance names, disk indices, dump names), never a path.
//!
//! [`NodeOps`]: diskstream_orchestrator::node::NodeOps

use std::path::PathBuf;
use std::time::Duration;

use diskstream_engine::digest::Checksum;
use diskstream_engine::ops::{Format, Report};
use diskstream_engine::report::WireStats;
use diskstream_engine::ring::BackendKind;
use diskstream_orchestrator::export::cleanup::Keep;
use diskstream_orchestrator::export::export_id::ExportId;
use diskstream_orchestrator::hooks::env::Env;
use diskstream_orchestrator::hooks::Phase;
#[cfg(doc)]
use diskstream_orchestrator::node::NodeOps;
use diskstream_orchestrator::node::{NodeError, SendDisk, SnapshotRef, TransferError};
use serde::{Deserialize, Serialize};

/// The HTTP header of a call that carries the master's [`Cluster::digest`]: an agent whose
/// config says something else refuses the call (a master without it, older, is taken at its
/// word).
///
/// [`Cluster::digest`]: diskstream_orchestrator::cluster::Cluster::digest
pub const CONFIG_HEADER: &str = "x-diskstream-config";

/// Calls an agent answers whatever its config says: they only read the node's export
/// directory, which is the node's own.
pub const READ_ONLY_CALLS: &[&str] = &["list_exports", "export_listing"];

/// A node operation, as the master asks it of a node's agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Call {
    /// [`NodeOps::run_hooks`] on the node.
    RunHooks {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The hooks path (`<hpath>-<phase>.d`), a plain name.
        hpath: String,
        /// The hooks phase.
        phase: Phase,
        /// The hooks environment.
        env: Env,
    },
    /// [`NodeOps::instance_running`] on the node.
    InstanceRunning {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::stop_instance`] on the node.
    StopInstance {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// How long to wait for the instance to stop, in milliseconds.
        timeout_ms: u64,
    },
    /// [`NodeOps::start_instance`] on the node.
    StartInstance {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::forget_instance`] on the node.
    ForgetInstance {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::backing_size`] on the node.
    BackingSize {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// The disk index.
        disk: usize,
    },
    /// [`NodeOps::activate_disks`] on the node.
    ActivateDisks {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::remove_disks`] on the node.
    RemoveDisks {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::sweep_stale_snapshots`] on the node.
    SweepStaleSnapshots {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::snapshot_capability`] on the node.
    SnapshotCapability {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// The disk index.
        disk: usize,
    },
    /// [`NodeOps::create_snapshot`] on the node.
    CreateSnapshot {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// The disk index.
        disk: usize,
    },
    /// [`NodeOps::remove_snapshot`] on the node.
    RemoveSnapshot {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The snapshot, as `create_snapshot` returned it.
        snapshot: SnapshotRef,
    },
    /// [`NodeOps::begin_export`] on the node.
    BeginExport {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// Answer the bytes free in the export directory (else `null`, as agents before it
        /// answer, and as masters before it expect: neither side breaks the other).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        room: bool,
    },
    /// On the target: accept one disk stream for `req` from `req.source_node`.
    OpenReceive {
        /// The transfer, as the LU asked it of the nodes.
        req: SendDisk,
    },
    /// On the primary: send `req` to the target's data port `port` with `token`.
    Send {
        /// The transfer, as the LU asked it of the nodes.
        req: SendDisk,
        /// The target's data port.
        port: u16,
        /// The one-time token of the receive.
        token: String,
        /// The lanes the target opened ([`Opened::lanes`]).
        #[serde(default = "one_lane", skip_serializing_if = "is_one_lane")]
        lanes: usize,
    },
    /// On the target: how the receive opened with `token` ended (waits a few seconds for it):
    /// `null` when it committed, else its error. The master asks when a send failed, so the
    /// operator hears the target's reason (a corrupt frame) rather than the sender's (a reset).
    ReceiveResult {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The one-time token of the receive.
        token: String,
    },
    /// On the primary: how far the send with `token` is, `[done, total]` disk bytes while it
    /// runs, `"ended"` once it ended (kept 10 minutes), `null` for a token it was never asked
    /// to send.
    Progress {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The one-time token of the receive.
        token: String,
    },
    /// [`NodeOps::finalize_export`] on the node.
    FinalizeExport {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// The export's `config.ini`.
        config_ini: String,
        /// The export's id (written into it: what the cleanup of old exports keeps).
        id: ExportId,
    },
    /// [`NodeOps::abandon_export`] on the node.
    AbandonExport {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::sweep_export_leftovers`] on the node.
    SweepExportLeftovers {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::list_exports`] on the node.
    ListExports {
        /// The node the call acts on (the agent refuses any other).
        node: String,
    },
    /// [`NodeOps::export_listing`] on the node.
    ExportListing {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
    },
    /// [`NodeOps::remove_export`] on the node.
    RemoveExport {
        /// The node the call acts on (the agent refuses any other).
        node: String,
        /// The instance, by its name in the cluster config.
        instance: String,
        /// The export to keep (the one just written).
        keep: Keep,
    },
}

impl Call {
    /// The method name (the URL's last component and the JSON `method`).
    pub fn method(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m.get("method").and_then(|v| v.as_str()).unwrap_or("").to_string(),
            _ => String::new(),
        }
    }

    /// The node the call acts on.
    pub fn node(&self) -> &str {
        use Call::*;
        match self {
            RunHooks { node, .. }
            | InstanceRunning { node, .. }
            | StopInstance { node, .. }
            | StartInstance { node, .. }
            | ForgetInstance { node, .. }
            | BackingSize { node, .. }
            | ActivateDisks { node, .. }
            | RemoveDisks { node, .. }
            | SweepStaleSnapshots { node, .. }
            | SnapshotCapability { node, .. }
            | CreateSnapshot { node, .. }
            | RemoveSnapshot { node, .. }
            | BeginExport { node, .. }
            | FinalizeExport { node, .. }
            | AbandonExport { node, .. }
            | SweepExportLeftovers { node, .. }
            | ListExports { node }
            | ExportListing { node, .. }
            | RemoveExport { node, .. }
            | ReceiveResult { node, .. }
            | Progress { node, .. } => node,
            OpenReceive { req } => &req.target_node,
            Send { req, .. } => &req.source_node,
        }
    }

    /// A stop timeout as the wire carries it.
    pub fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What went wrong on the agent, as the wire carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    /// `unknown` (a name the node does not know), `refused` (not allowed: a peer that is not the
    /// master), the engine's own kind for an engine error (`integrity`: damaged data,
    /// `mismatch`, `interrupted`, `error`: I/O, which includes a stalled stream, whose message
    /// starts `stalled:`), `failed` (anything else); the master's client makes `unreachable` for
    /// a call it could not deliver (never on the wire). The master maps `unknown` to an unknown
    /// name and everything else to a failure naming the node.
    pub kind: String,
    /// The message, naming what and where.
    pub msg: String,
    /// Set by an end of a disk stream whose failure is its own (its disk, its file system, a
    /// check of the data, a stop) rather than the connection to its peer breaking: of the two
    /// ends' errors, this one says why the transfer failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own: bool,
}

impl WireError {
    /// An error of `kind` saying `msg`.
    pub fn new(kind: &str, msg: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            msg: msg.into(),
            own: false,
        }
    }

    /// A node error as the wire carries it.
    pub fn node(e: &NodeError) -> Self {
        let kind = if matches!(e, NodeError::Unknown(_)) {
            "unknown"
        } else {
            "failed"
        };
        Self::new(kind, e.to_string())
    }

    /// A transfer error as the wire carries it (the engine's kind kept).
    pub fn transfer(e: &TransferError) -> Self {
        match e.engine_error() {
            Some(engine) => Self::new(engine.kind().as_str(), e.to_string()),
            None => Self::new("failed", e.to_string()),
        }
    }

    /// Back into a node error on the master, naming the node that answered.
    pub fn into_node(self, node: &str) -> NodeError {
        match self.kind.as_str() {
            "unknown" => NodeError::Unknown(self.msg),
            _ => NodeError::Failed(format!("node {node}: {}", self.msg)),
        }
    }
}

/// An agent's answer: `ok` with the method's result, or `err`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The result (JSON of the method's return type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    /// The failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<WireError>,
}

/// The answer to [`Call::OpenReceive`]: where and with what to connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {
    /// The data port on the target's address.
    pub port: u16,
    /// The one-time token the stream must start with.
    pub token: String,
    /// How many connections ("lanes") the stream is striped over (`data/stripe.rs`); 1, the
    /// default and what agents before striping answer, is one plain stream.
    #[serde(default = "one_lane", skip_serializing_if = "is_one_lane")]
    pub lanes: usize,
}

fn one_lane() -> usize {
    1
}

fn is_one_lane(n: &usize) -> bool {
    *n == 1
}

/// An engine [`Report`] as the wire carries it (owned strings), and back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireReport {
    /// As [`Report`]'s `op`.
    pub op: String,
    /// As [`Report`]'s `input`.
    pub input: PathBuf,
    /// As [`Report`]'s `output`.
    pub output: Option<PathBuf>,
    /// As [`Report`]'s `manifest`.
    pub manifest: Option<PathBuf>,
    /// As [`Report`]'s `backend`.
    pub backend: Option<String>,
    /// As [`Report`]'s `write_backend`.
    pub write_backend: Option<String>,
    /// As [`Report`]'s `buffer_pages`.
    pub buffer_pages: Option<String>,
    /// As [`Report`]'s `input_direct`.
    pub input_direct: bool,
    /// As [`Report`]'s `output_direct`.
    pub output_direct: bool,
    /// As [`Report`]'s `disk_size`.
    pub disk_size: u64,
    /// As [`Report`]'s `chunk_size`.
    pub chunk_size: u32,
    /// As [`Report`]'s `chunks`.
    pub chunks: u64,
    /// As [`Report`]'s `zero_chunks`.
    pub zero_chunks: u64,
    /// As [`Report`]'s `bytes_read`.
    pub bytes_read: u64,
    /// As [`Report`]'s `bytes_written`.
    pub bytes_written: u64,
    /// As [`Report`]'s `bytes_stored`.
    pub bytes_stored: u64,
    /// As [`Report`]'s `zero_bytes`.
    pub zero_bytes: u64,
    /// As [`Report`]'s `read_requests`.
    pub read_requests: u64,
    /// As [`Report`]'s `write_requests`.
    pub write_requests: u64,
    /// As [`Report`]'s `checksum`.
    pub checksum: String,
    /// As [`Report`]'s `digest`.
    pub digest: String,
    /// As [`Report`]'s `elapsed_s`.
    pub elapsed_s: f64,
    /// As [`Report`]'s `throughput_bytes_per_s`.
    pub throughput_bytes_per_s: f64,
    /// As [`Report`]'s `warnings`.
    pub warnings: Vec<String>,
    /// As [`Report`]'s `wire` (absent from agents before it).
    #[serde(default)]
    pub wire: Option<WireStats>,
}

fn backend_name(b: Option<BackendKind>) -> Option<String> {
    b.map(|b| b.to_string())
}

fn backend(s: Option<&str>) -> Option<BackendKind> {
    match s {
        Some("io_uring") => Some(BackendKind::Uring),
        Some("pread") => Some(BackendKind::Pread),
        _ => None,
    }
}

impl From<&Report> for WireReport {
    fn from(r: &Report) -> Self {
        Self {
            op: r.op.to_string(),
            input: r.input.clone(),
            output: r.output.clone(),
            manifest: r.manifest.clone(),
            backend: backend_name(r.backend),
            write_backend: backend_name(r.write_backend),
            buffer_pages: r.buffer_pages.map(str::to_string),
            input_direct: r.input_direct,
            output_direct: r.output_direct,
            disk_size: r.disk_size,
            chunk_size: r.chunk_size,
            chunks: r.chunks,
            zero_chunks: r.zero_chunks,
            bytes_read: r.bytes_read,
            bytes_written: r.bytes_written,
            bytes_stored: r.bytes_stored,
            zero_bytes: r.zero_bytes,
            read_requests: r.read_requests,
            write_requests: r.write_requests,
            checksum: r.checksum.name().to_string(),
            digest: r.digest.clone(),
            elapsed_s: r.elapsed.as_secs_f64(),
            throughput_bytes_per_s: r.throughput_bytes_per_s,
            warnings: r.warnings.clone(),
            wire: r.wire,
        }
    }
}

impl WireReport {
    /// The engine report of a disk sent through agents: the sender's reading side, the
    /// receiver's writing side (`recv`): what was read on the primary, written on the target.
    fn into_report(self, checksum: Checksum, recv: WireReport) -> Report {
        let pages = match self.buffer_pages.as_deref() {
            Some("hugetlb") => Some("hugetlb"),
            Some("thp") => Some("thp"),
            Some("4k") => Some("4k"),
            _ => None,
        };
        Report {
            op: "create",
            input: self.input,
            output: recv.output.or(self.output),
            manifest: recv.manifest,
            format: Some(Format::Raw),
            backend: backend(self.backend.as_deref()),
            write_backend: backend(recv.write_backend.as_deref()),
            buffer_pages: pages,
            input_direct: self.input_direct,
            output_direct: recv.output_direct,
            disk_size: self.disk_size,
            chunk_size: self.chunk_size,
            chunks: self.chunks,
            zero_chunks: self.zero_chunks,
            bytes_read: self.bytes_read,
            bytes_written: recv.bytes_written,
            bytes_stored: recv.bytes_stored,
            zero_bytes: self.zero_bytes,
            read_requests: self.read_requests,
            write_requests: recv.write_requests,
            checksum,
            digest: recv.digest,
            elapsed: Duration::from_secs_f64(self.elapsed_s.max(0.0)),
            throughput_bytes_per_s: self.throughput_bytes_per_s,
            warnings: self.warnings.into_iter().chain(recv.warnings).collect(),
            wire: self.wire,
            verified_first: None,
        }
    }
}

/// What the primary answers to [`Call::Send`]: its own report and the target's acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// The sender's report (read side, bytes on the wire).
    pub sent: WireReport,
    /// The receiver's report (write side), from its acknowledgement.
    pub received: WireReport,
}

impl Sent {
    /// The engine report of the disk, once both ends agree on what moved: the same chunk digest
    /// algorithm (one this build knows), disk size and whole-image digest. The target checked
    /// the stream's trailer against the frames it received; this checks that what it committed
    /// is what the primary says it read, so that a disagreement (a bug, mismatched versions)
    /// fails the disk before the export is finalized.
    pub fn into_report(self) -> Result<Report, String> {
        let (s, r) = (&self.sent, &self.received);
        let checksum = Checksum::from_name(&s.checksum)
            .ok_or_else(|| format!("the primary reports an unknown chunk digest {:?}", s.checksum))?;
        if (&r.checksum, r.disk_size, &r.digest) != (&s.checksum, s.disk_size, &s.digest) {
            return Err(format!(
                "the two ends disagree on the disk: the primary read {} bytes, {} image digest {}; \
                 the target committed {} bytes, {} image digest {}",
                s.disk_size, s.checksum, s.digest, r.disk_size, r.checksum, r.digest
            ));
        }
        Ok(self.sent.into_report(checksum, self.received))
    }
}

/// The first line of a data connection: `DSDATA1 <token>\n` (fixed length).
pub fn data_hello(token: &str) -> Vec<u8> {
    format!("DSDATA1 {token}\n").into_bytes()
}

/// The first line of lane `lane` of a stream striped over `lanes` connections (`lanes` > 1):
/// `DSDATA2 <token> <lane>/<lanes>\n`, both numbers two hex digits (fixed length).
pub fn lane_hello(token: &str, lane: usize, lanes: usize) -> Vec<u8> {
    format!("DSDATA2 {token} {lane:02x}/{lanes:02x}\n").into_bytes()
}

/// The lane a [`lane_hello`] line names, if it is one for `token` and `lanes` lanes (the token
/// compared in constant time).
pub fn hello_lane(line: &[u8], token: &str, lanes: usize) -> Option<usize> {
    let want = lane_hello(token, 0, lanes);
    if line.len() != want.len() {
        return None;
    }
    let (head, tail) = line.split_at(want.len() - 6);
    if !constant_eq(head, &want[..want.len() - 6]) || tail[2] != b'/' || tail[5] != b'\n' {
        return None;
    }
    let num = |b: &[u8]| {
        b.iter().all(u8::is_ascii_hexdigit).then(|| {
            b.iter()
                .fold(0, |n, d| n * 16 + (*d as char).to_digit(16).unwrap_or(0) as usize)
        })
    };
    let (lane, n) = (num(&tail[..2])?, num(&tail[3..5])?);
    (n == lanes && lane < lanes).then_some(lane)
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Length of a token in hex digits.
pub const TOKEN_HEX: usize = 64;
/// Length of [`data_hello`]'s line.
pub const HELLO_LEN: usize = 8 + TOKEN_HEX + 1;
/// Length of [`lane_hello`]'s line.
pub const LANE_HELLO_LEN: usize = 8 + TOKEN_HEX + 7;

/// A fresh one-time token: 32 random bytes from the kernel, in hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; TOKEN_HEX / 2];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(checksum: Checksum, disk_size: u64, digest: &str) -> WireReport {
        WireReport::from(&Report {
            checksum,
            disk_size,
            digest: digest.into(),
            ..Report::default()
        })
    }

    #[test]
    fn begin_export_asks_for_the_room_in_a_field_older_agents_ignore() {
        // A master before it sends no `room`; this agent then answers `null`, as before.
        let old: Call = serde_json::from_str(r#"{"method":"begin_export","node":"n","instance":"i"}"#).unwrap();
        assert!(matches!(old, Call::BeginExport { room: false, .. }));
        let asked = Call::BeginExport {
            node: "n".into(),
            instance: "i".into(),
            room: true,
        };
        let v = serde_json::to_value(&asked).unwrap();
        assert_eq!(v["room"], true);
        let not = Call::BeginExport {
            node: "n".into(),
            instance: "i".into(),
            room: false,
        };
        assert!(serde_json::to_value(&not).unwrap().get("room").is_none());
    }

    #[test]
    fn a_send_is_reported_only_when_both_ends_agree() {
        let sent = |s: WireReport, r: WireReport| Sent { sent: s, received: r }.into_report();
        let ok = sent(end(Checksum::Sha256, 4096, "ab"), end(Checksum::Sha256, 4096, "ab")).unwrap();
        assert_eq!(
            (ok.checksum, ok.disk_size, ok.digest.as_str()),
            (Checksum::Sha256, 4096, "ab")
        );
        for (what, r) in [
            ("digest", end(Checksum::Sha256, 4096, "cd")),
            ("size", end(Checksum::Sha256, 8192, "ab")),
            ("algorithm", end(Checksum::Blake3, 4096, "ab")),
        ] {
            let e = sent(end(Checksum::Sha256, 4096, "ab"), r).unwrap_err();
            assert!(
                e.contains("the two ends disagree") && e.contains("primary read 4096 bytes, sha256 image digest ab"),
                "{what}: {e}"
            );
        }
        // A chunk digest this build does not know is named, not taken for the default.
        let mut s = end(Checksum::Blake3, 4096, "ab");
        s.checksum = "sha3".into();
        let mut r = end(Checksum::Blake3, 4096, "ab");
        r.checksum = "sha3".into();
        let e = sent(s, r).unwrap_err();
        assert!(e.contains("unknown chunk digest \"sha3\""), "{e}");
    }

    #[test]
    fn a_lane_hello_names_its_lane_only_with_the_right_token_and_lane_count() {
        let t = "ab".repeat(TOKEN_HEX / 2);
        let other = "cd".repeat(TOKEN_HEX / 2);
        for (lane, lanes) in [(0, 2), (1, 2), (15, 16), (3, 4)] {
            let h = lane_hello(&t, lane, lanes);
            assert_eq!(h.len(), LANE_HELLO_LEN);
            assert_eq!(hello_lane(&h, &t, lanes), Some(lane));
            assert_eq!(hello_lane(&h, &other, lanes), None, "another token");
            assert_eq!(hello_lane(&h, &t, lanes + 1), None, "another lane count");
        }
        let bad = |s: String| hello_lane(s.as_bytes(), &t, 4);
        assert_eq!(bad(format!("DSDATA2 {t} 04/04\n")), None, "lane past the count");
        assert_eq!(bad(format!("DSDATA2 {t} +1/04\n")), None, "a sign is not a digit");
        assert_eq!(bad(format!("DSDATA2 {t} 01/04\r")), None);
        assert_eq!(bad(format!("DSDATA2 {t} 01-04\n")), None);
        assert_eq!(bad(format!("DSDATA1 {t} 01/04\n")), None);
        assert_eq!(bad(format!("DSDATA2 {t}\n")), None, "the one-stream hello");
        assert_eq!(hello_lane(&data_hello(&t), &t, 1), None);
    }
}
