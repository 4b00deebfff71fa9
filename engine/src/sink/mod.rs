//! Sinks: where processed chunks land. A [`Sink`] receives every chunk of a disk from a
//! [`crate::transfer::Transfer`] and, on [`Sink::finish`], commits its output.
//!
//! - [`target`]: opens an output (a new file under a temporary name, renamed into place only
//!   when complete, or a block device written in place) with O_DIRECT.
//! - [`raw`]: a sparse raw copy of the disk, chunk buffers written through io_uring exactly as
//!   they were read (no copy in user space), out of order, zero chunks left as holes.
//! - [`image`]: the `dsimg` sink: frames in disk order through the streaming encoder onto
//!   [`direct_write::DirectWriter`] (O_DIRECT staging writes).
//! - `identity`: what names the same data (hard and symbolic links, loop devices and the files
//!   behind them, by device and inode).
//! - [`partial`]: the temporary files outputs are written under, and the sweep of leftovers.
//! - [`manifest`]: the manifest written beside an image and the commit of the pair.
//! - [`verify`]: checks every chunk against a manifest and that none is missing, then hands it on
//!   (to [`null::NullSink`] for `verify`, to a raw sink for `restore`).
//! - [`stream`]: the `dsimg` frame stream onto any `Write` (a socket to another node);
//!   [`adapt`] turns its lz4 on and off by the rate it measures (`auto`).
//! - [`null`]: keeps nothing; counts what would be stored and the whole-image digest (`scan`).

pub mod adapt;
pub mod direct_write;
mod identity;
pub mod image;
pub mod manifest;
pub mod null;
pub mod partial;
pub mod raw;
mod replaced;
pub mod stream;
pub mod target;
pub mod verify;

use crate::digest::Hash;
use crate::error::Result;
use crate::pipeline::Processed;
use crate::ring::BackendKind;

/// The order in which a sink needs its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Any order (completion order: the fastest). Each chunk carries its offset.
    Any,
    /// Disk order, chunk 0 first; the transfer puts chunks back in order (bounded by the pools).
    Disk,
}

/// What a sink asks of the source and the transfer, declared before the first chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkNeeds {
    /// The order chunks must arrive in.
    pub order: Order,
    /// Chunks the sink may keep in flight after [`Sink::put`] returns (raw writes): the source
    /// sizes its buffer pools with them, so memory stays bounded and nothing deadlocks.
    pub in_flight: u32,
    /// Whether each chunk's zero map must be exact (a raw sink leaves zero blocks as holes).
    pub zero_maps: bool,
    /// Whether the sink stores lz4 payloads (chunks lz4 makes smaller arrive as
    /// [`crate::pipeline::Payload::Lz4`]); a sink that does not never receives one.
    pub lz4: bool,
    /// Whether the sink writes dsimg frames: the workers then work out each data chunk's payload
    /// CRC-32C ([`Processed::payload_crc`]) beside its digest, off the sink's one thread.
    pub payload_crc: bool,
}

impl SinkNeeds {
    /// Any order, nothing in flight, no zero maps, no lz4.
    pub const ANY: Self = Self {
        order: Order::Any,
        in_flight: 0,
        zero_maps: false,
        lz4: false,
        payload_crc: false,
    };
}

/// What a sink did, returned by [`Sink::finish`].
#[derive(Clone, Debug, Default)]
pub struct SinkStats {
    /// Write backend that ran, if the sink writes.
    pub write_backend: Option<BackendKind>,
    /// True if and only if the output was written with O_DIRECT.
    pub output_direct: bool,
    /// Bytes written to the output (padding included).
    pub bytes_written: u64,
    /// Write requests issued.
    pub write_requests: u64,
    /// Payload bytes stored (compressed size for dsimg, data bytes for raw).
    pub bytes_stored: u64,
    /// The whole-image digest of what the sink wrote or checked, if it computed or knows one.
    pub digest: Option<Hash>,
    /// What a stream to another node carried (the stream sink only).
    pub wire: Option<WireStats>,
}

/// What the stream of a disk to another node carried (`--transport-compression`), as the
/// sending end counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct WireStats {
    /// Chunks sent with data (zero chunks travel as a header alone).
    pub data_chunks: u64,
    /// Of those, sent lz4-compressed (with `lz4` nearly all, less where lz4 did not make a
    /// chunk smaller; with `auto` those sent while lz4 was the faster).
    pub lz4_chunks: u64,
    /// `auto`: rounds in which the rates with and without lz4 were measured.
    pub auto_rounds: u32,
    /// `auto`: windows and keeps of lz4 that went on without a probe of no compression, lz4
    /// moving disk bytes faster than the link took wire bytes.
    pub auto_link_bound_keeps: u32,
    /// TLS connections the stream was striped over (`agent --data-lanes` of the target); set
    /// by the node agent that sent it, 0 where nothing did (agents before striping).
    #[serde(default)]
    pub lanes: u32,
}

/// Where the chunks of one disk go.
///
/// # Protocol
///
/// 1. The sink declares its [`SinkNeeds`] once, before the first chunk.
/// 2. [`Sink::put`] receives every chunk of the disk exactly once: in disk order if the sink asked
///    for [`Order::Disk`], else in any order. Payloads are [`crate::pipeline::Payload::Lz4`] only
///    if it asked for lz4. The sink may keep up to `in_flight` chunks (their buffers) after `put`
///    returns. An error from `put` stops the transfer.
/// 3. [`Sink::finish`], called once after the last chunk, completes every write, commits the
///    output (renamed into place, with its manifest where it has one) unless the operation was
///    asked to stop, and returns the sink's [`SinkStats`].
/// 4. A sink dropped without `finish` (an error, a stop, a panic) aborts: it waits for the writes
///    in flight and removes its partial output (files under a temporary name; a block device is
///    written in place and keeps what was written).
pub trait Sink {
    /// What the sink needs (see the protocol).
    fn needs(&self) -> SinkNeeds;

    /// Takes one chunk.
    fn put(&mut self, chunk: Processed) -> Result<()>;

    /// Completes and commits the output.
    fn finish(self: Box<Self>) -> Result<SinkStats>;

    /// With [`SinkNeeds::lz4`]: a flag the sink switches to say whether the next chunks are to
    /// be compressed ([`adapt`]); `None` (the default): every chunk is.
    fn lz4_gate(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        None
    }
}

/// What to do with zero chunks on a block device target (a file target always gets holes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroPolicy {
    /// Make the range read as zeroes (`FALLOC_FL_ZERO_RANGE`, which the device may offload;
    /// plain zero writes where unsupported). The default: the device's old content never
    /// survives where the disk has zeroes.
    #[default]
    Write,
    /// Discard the range with a zeroes-on-read guarantee (`FALLOC_FL_PUNCH_HOLE`); fails where
    /// the device cannot guarantee it.
    Discard,
    /// Leave the range untouched: only correct if the target is known to be zeroed already.
    Skip,
}

impl std::str::FromStr for ZeroPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "write" => Ok(Self::Write),
            "discard" => Ok(Self::Discard),
            "skip" => Ok(Self::Skip),
            _ => Err(format!("unknown zero policy {s:?} (expected write, discard or skip)")),
        }
    }
}

/// Writes chunk `p` as one `dsimg` frame (the image and stream sinks); returns the payload bytes
/// stored, or the stream position and the error.
pub(crate) fn push_frame<W: std::io::Write>(
    w: &mut crate::format::writer::ImageWriter<W>,
    p: &Processed,
) -> std::result::Result<u64, (u64, std::io::Error)> {
    use crate::format::FrameKind;
    use crate::pipeline::Payload;
    let kind = match p.payload {
        Payload::Zero => FrameKind::Zero,
        Payload::Raw(_) => FrameKind::Raw,
        Payload::Lz4 { .. } => FrameKind::Lz4,
    };
    let bytes = p.stored_bytes();
    let at = w.position();
    w.push_with_crc(p.index, kind, &p.digest, bytes, p.payload_crc)
        .map_err(|e| (at, e))?;
    Ok(bytes.len() as u64)
}
