//! What an operation reports: [`Report`] (a transfer: what really ran, counted by the source, the
//! transfer and the sink, assembled in one place, [`Report::assemble`]) and [`Info`] (an image
//! described from its structure). Both serialize to the JSON objects the CLI prints. Text for
//! people ([`escape_controls`]): names and messages printed with their control characters
//! escaped, so a name cannot forge a log line or send terminal escapes.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Serialize, Serializer};

use crate::digest::{hex, Checksum};
use crate::format::Format;
use crate::ring::BackendKind;
use crate::sink::SinkStats;
pub use crate::sink::WireStats;
use crate::source::{SourceInfo, SourceStats};

/// What an operation did. Serializes to the body of the CLI's JSON result (the CLI's
/// envelope adds `schema_version`, `ok` and `op`).
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct Report {
    /// The operation ("create", "verify", "restore", "scan"). Not serialized: the CLI's result
    /// envelope names the command in its own `op` ("image create", ...).
    #[serde(skip)]
    pub op: &'static str,
    /// Input path.
    #[serde(serialize_with = "lossy_path")]
    pub input: PathBuf,
    /// Output path, if any.
    #[serde(serialize_with = "lossy_path_opt")]
    pub output: Option<PathBuf>,
    /// Manifest written or read, if any.
    #[serde(serialize_with = "lossy_path_opt")]
    pub manifest: Option<PathBuf>,
    /// Image format involved.
    pub format: Option<Format>,
    /// Read backend that ran.
    pub backend: Option<BackendKind>,
    /// Write backend that ran.
    pub write_backend: Option<BackendKind>,
    /// What the read buffers are made of: "hugetlb", "thp" (transparent huge pages) or "4k".
    pub buffer_pages: Option<&'static str>,
    /// True if and only if the input was read with O_DIRECT (as the kernel reports it).
    pub input_direct: bool,
    /// True if and only if the output was written with O_DIRECT.
    pub output_direct: bool,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u64,
    /// Chunks that were all zeroes.
    pub zero_chunks: u64,
    /// Bytes read from the input device, file or stream.
    pub bytes_read: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
    /// Payload bytes stored (of the image read, where the input is an image; else of the
    /// output: compressed size for dsimg, data bytes for raw).
    pub bytes_stored: u64,
    /// Bytes in zero chunks (skipped).
    #[serde(rename = "zero_bytes_skipped")]
    pub zero_bytes: u64,
    /// Read requests issued.
    pub read_requests: u64,
    /// Write requests issued.
    pub write_requests: u64,
    /// The chunk digest algorithm of the image, manifest or run.
    pub checksum: Checksum,
    /// Whole-image digest (hex), with [`Self::checksum`].
    pub digest: String,
    /// Wall time.
    #[serde(rename = "elapsed_s", serialize_with = "secs")]
    #[schemars(with = "f64")]
    pub elapsed: Duration,
    /// Disk bytes per second ([`Self::throughput`], kept as the JSON field).
    pub throughput_bytes_per_s: f64,
    /// Things the operator should know (fallbacks).
    pub warnings: Vec<String>,
    /// What a stream to another node put on the wire; only for a disk sent over the network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireStats>,
    /// Seconds a restore spent checking every chunk of the image before it wrote a byte
    /// (`--verify-first`, the default for a block device; part of `elapsed_s`); absent where it
    /// checked as it wrote.
    #[serde(
        rename = "verified_first_s",
        serialize_with = "secs_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<f64>")]
    pub verified_first: Option<Duration>,
}

fn secs_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What an operation was asked to do and found before moving a byte: the part of a [`Report`]
/// that neither the source nor the sink knows.
#[derive(Clone, Debug)]
pub struct ReportHead {
    /// The operation.
    pub op: &'static str,
    /// Output path, if any.
    pub output: Option<PathBuf>,
    /// Manifest written or read, if any.
    pub manifest: Option<PathBuf>,
    /// Image format involved.
    pub format: Option<Format>,
    /// Warnings about the output (after the source's).
    pub warnings: Vec<String>,
    /// Time a check pass over the whole image took before the transfer ([`Report::verified_first`]).
    pub verified_first: Option<Duration>,
}

impl ReportHead {
    /// The head of operation `op`, with nothing else known yet.
    pub fn new(op: &'static str) -> Self {
        Self {
            op,
            output: None,
            manifest: None,
            format: None,
            warnings: Vec::new(),
            verified_first: None,
        }
    }
}

/// Chunks and bytes of zero chunks, counted by the transfer as they pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroCount {
    /// Zero chunks.
    pub chunks: u64,
    /// Bytes in them.
    pub bytes: u64,
}

impl Report {
    /// Disk bytes per second.
    pub fn throughput(&self) -> f64 {
        self.disk_size as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report of a transfer: the head, what the source holds and did, the zero chunks
    /// counted on the way, and what the sink did. Stored bytes and the digest are the source's
    /// where it is an image, else the sink's.
    pub fn assemble(
        head: ReportHead,
        info: SourceInfo,
        source: SourceStats,
        zeros: ZeroCount,
        sink: SinkStats,
        elapsed: Duration,
    ) -> Self {
        let chunks = info.chunks();
        let digest = source.digest.or(sink.digest).map(|d| hex(&d)).unwrap_or_default();
        let mut r = Self {
            op: head.op,
            input: info.input,
            output: head.output,
            manifest: head.manifest,
            format: head.format,
            backend: source.backend,
            write_backend: sink.write_backend,
            buffer_pages: source.buffer_pages,
            input_direct: info.input_direct,
            output_direct: sink.output_direct,
            disk_size: info.disk_size,
            chunk_size: info.chunk_size,
            chunks,
            zero_chunks: zeros.chunks,
            bytes_read: source.bytes_read,
            bytes_written: sink.bytes_written,
            bytes_stored: source.stored.unwrap_or(sink.bytes_stored),
            zero_bytes: zeros.bytes,
            read_requests: source.read_requests,
            write_requests: sink.write_requests,
            checksum: info.checksum,
            digest,
            elapsed,
            throughput_bytes_per_s: 0.0,
            warnings: source.warnings.into_iter().chain(head.warnings).collect(),
            wire: sink.wire,
            verified_first: head.verified_first,
        };
        r.throughput_bytes_per_s = r.throughput();
        r
    }
}

/// What `info` tells about an image. Serializes to the body of the CLI's JSON result.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Info {
    /// Format of the image.
    pub format: Format,
    /// Size of the image file(s) on disk (apparent length).
    pub file_len: u64,
    /// Disk size.
    pub disk_size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunks in all.
    pub chunks: u64,
    /// Chunks stored raw / lz4 / zero (raw images: data and zero).
    pub data_chunks: u64,
    /// Chunks stored as lz4.
    pub lz4_chunks: u64,
    /// Zero chunks.
    pub zero_chunks: u64,
    /// Payload bytes stored.
    pub stored_bytes: u64,
    /// The chunk digest algorithm.
    pub checksum: Checksum,
    /// Whole-image digest as the image records it (a dsimg's trailer, a raw image's manifest):
    /// not checked against the chunks, which `info` does not read (`verify` does).
    pub digest: String,
    /// The manifest consulted: a raw image's, or the one a dsimg was checked against.
    #[serde(serialize_with = "lossy_path_opt")]
    pub manifest: Option<PathBuf>,
}

/// Serializes a path as a JSON string. JSON strings are Unicode, and a Linux path is bytes: each
/// sequence that is not UTF-8 becomes U+FFFD, so a result is printed whatever its paths hold
/// (serde's own impl fails, and the result would be lost).
pub fn lossy_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// [`lossy_path`] for an optional path.
pub fn lossy_path_opt<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&*p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// `s` with each control character (newline, carriage return, escape, the C1 controls, ...)
/// written as Rust writes it in a string literal (`\n`, `\u{1b}`); tabs are kept.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    escape_except(s, &['\t'])
}

/// [`escape_controls`] for a message whose line breaks are its own (Ganeti's multi-line failure
/// reports, whose text comes from the cluster config and hooks): newlines are kept, escapes
/// and carriage returns are not, and a line that would begin with `{` begins with a space, so
/// that no such text passes for one of the `--progress json` lines that share stderr (which
/// alone begin with `{`).
pub fn escape_keeping_lines(s: &str) -> Cow<'_, str> {
    let e = escape_except(s, &['\t', '\n']);
    if !e.starts_with('{') && !e.contains("\n{") {
        return e;
    }
    let lines: Vec<String> = e
        .split('\n')
        .map(|l| {
            if l.starts_with('{') {
                format!(" {l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    Cow::Owned(lines.join("\n"))
}

fn escape_except<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    let escaped = |c: char| c.is_control() && !keep.contains(&c);
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{escape_controls, escape_keeping_lines};

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("plain/path ä\tx"), "plain/path ä\tx");
        assert_eq!(
            escape_controls("a\n{\"event\"}\r\u{1b}]0;t\u{7}"),
            "a\\n{\"event\"}\\r\\u{1b}]0;t\\u{7}"
        );
        assert_eq!(escape_controls("c1\u{85}"), "c1\\u{85}");
        assert_eq!(escape_keeping_lines("a\nb\r\u{1b}[31m"), "a\nb\\r\\u{1b}[31m");
        // No line passes for a JSON progress line.
        assert_eq!(
            escape_keeping_lines("Failure:\n{\"event\":\"progress\"}\n x{"),
            "Failure:\n {\"event\":\"progress\"}\n x{"
        );
        assert_eq!(escape_keeping_lines("{a"), " {a");
    }
}
